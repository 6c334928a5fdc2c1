#!/usr/bin/env python
"""Where the feature pass spends its time: ``wsinuclei detect SLIDE --features`` in-process with cProfile on
every call of ``features.tiles.tile_features`` (in whichever thread runs it), then the steps that take the
most of it, each as a share of the pass. Prints a table; the whole profile goes to ``--out`` (pstats format).

    .venv/bin/python scripts/profile_features.py [SLIDE] [--out out/profile_features.prof]

Default slide: the demo slide (CMU-1-Small-Region). Run on a quiet machine; shares only (cProfile slows the
Python parts more than the compiled ones).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import threading
from pathlib import Path

#: the steps reported: a label and the functions (file suffix, function name) whose cumulative time it is
STEPS = [
    ("Canny edges (both stain images)", ("features/edges.py", "canny_window")),
    ("colour deconvolution of the tile", ("stain.py", "stain_images")),
    ("label painting (contours)", ("features/tiles.py", "label_image")),
    ("cytoplasm ring (distance transform)", ("features/nuclei.py", "dilate_xor")),
    ("image gradients", ("_function_base_impl.py", "gradient")),
    ("morphometry (moments, perimeter, hulls, box counting)", ("features/morphometry.py", "morphometry")),
    ("boundaries for the Fourier descriptors", ("features/nuclei.py", "_boundary")),
    ("intensity and gradient statistics", ("features/segments.py", "__init__")),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slide", nargs="?", default=None, help="default: the demo slide")
    ap.add_argument("--out", default="out/profile_features.prof")
    args = ap.parse_args()
    import wsinuclei.features.tiles as tiles
    from wsinuclei.cli import main as cli
    from wsinuclei.datasets import cmu_small_region

    slide = args.slide or str(cmu_small_region())
    profiles, lock = [], threading.Lock()
    original = tiles.tile_features

    def profiled(*a, **k):  # one profiler per call: cProfile follows only the thread that enables it
        prof = cProfile.Profile()
        prof.enable()
        try:
            return original(*a, **k)
        finally:
            prof.disable()
            with lock:
                profiles.append(prof)

    tiles.tile_features = profiled
    out_dir = Path(tempfile.mkdtemp())
    try:
        cli(["detect", slide, "--out", str(out_dir), "--features", "--quiet"])
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    stats = pstats.Stats(profiles[0])
    for p in profiles[1:]:
        stats.add(p)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    stats.dump_stats(args.out)
    cum = {}
    for (file, _, func), (_, _, _, ct, _) in stats.stats.items():
        cum[(file, func)] = cum.get((file, func), 0.0) + ct
    total = sum(ct for (file, func), ct in cum.items() if func == "tile_features" and file.endswith("features/tiles.py"))
    print(f"{len(profiles)} tiles, feature pass {total:.2f} s under the profiler\n")
    print("| step | s | share |\n|---|---|---|")
    for label, (suffix, func) in STEPS:
        s = sum(ct for (file, f), ct in cum.items() if f == func and file.endswith(suffix))
        print(f"| {label} | {s:.2f} | {100 * s / total:.0f} % |")


if __name__ == "__main__":
    main()
