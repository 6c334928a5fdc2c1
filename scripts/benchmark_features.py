"""What per-nucleus features cost (BENCHMARKS.md): nuclei measured per second on one core for the default
families, with Haralick and for each family by itself, and the share of whole-slide time ``--features`` adds.

    python scripts/benchmark_features.py --model MODEL.safetensors [--slide SLIDE] [--tiles 6] [--json OUT]
                                         [--baseline-src /tmp/old/src]

Part 1 reads ``--tiles`` tissue tiles of the slide (1024 px at the model's µm/px), detects with the model and
times ``tile_features`` on each (single thread; best of 3 per tile). Part 2 runs ``wsinuclei detect`` on the
slide with and without ``--features`` (in-process, best of 3 each, alternating) and reports the ratio.
Contour models only give the shape families. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_slide import alternating, print_json  # noqa: E402


def per_tile(model: str, slide_path: str, n_tiles: int) -> dict:
    import torch

    from wsinuclei import stain
    from wsinuclei.features import DEFAULT_FAMILIES, FAMILIES
    from wsinuclei.features.tiles import tile_features
    from wsinuclei.inference import NucleusDetector
    from wsinuclei.pipeline import RunOptions, plan_slide

    det = NucleusDetector.from_file(model)
    lm = det.loaded
    plan = plan_slide(slide_path, RunOptions(progress=False).validate(), lm.mpp, lm.input_channels, lm.target_mu, lm.target_sigma,
                      model)
    tiles = sorted(plan.tiles, key=lambda t: -plan.tissue[t.key][0])[:n_tiles]
    rows = []
    for t in tiles:
        rgb = plan.slide.read_region(t.x, t.y, t.width, t.height, lm.mpp)
        x = stain.reinhard(rgb, lm.target_mu, lm.target_sigma, src_mu=plan.ctx.src_mu, src_sigma=plan.ctx.src_sigma)
        torch.set_num_threads(2)
        t0 = time.perf_counter()
        (b, s, o), = det.predict_instances([stain.model_input(x, lm.input_channels)])
        infer = time.perf_counter() - t0
        owned = np.flatnonzero(s >= 0.5)
        torch.set_num_threads(1)
        row = {"tile": t.key, "nuclei": int(len(owned)), "inference_s_2threads": round(infer, 3)}
        alone = tuple((f"only_{f}", (f,)) for f in FAMILIES)  # each family by itself, with the pass's fixed work
        for label, fams in (("default", DEFAULT_FAMILIES), ("with_haralick", FAMILIES), *alone):
            best = min(_timed(lambda: tile_features(x, b, s, o, owned, 0.5, lm.mpp, lambda a, c: (a, c), fams))
                       for _ in range(3))
            row[f"features_s_{label}"] = round(best, 3)
        rows.append(row)
        print(row, flush=True)
    n = sum(r["nuclei"] for r in rows)
    out = {"tiles": rows, "contours": o is not None}  # outlines from the model: the shape families are measured
    for label in ("default", "with_haralick", *(f"only_{f}" for f in FAMILIES)):
        secs = sum(r[f"features_s_{label}"] for r in rows)
        out[f"nuclei_per_s_per_core_{label}"] = round(n / secs, 1)
    out["features_vs_inference_default"] = round(sum(r["features_s_default"] for r in rows)
                                                 / sum(r["inference_s_2threads"] for r in rows), 3)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def whole_slide(model: str, slide_path: str, repeats: int, baseline_src: str | None = None) -> dict:
    """``wsinuclei detect`` with and without ``--features``, best of ``repeats``, alternating; with
    ``baseline_src`` (another checkout's ``src``, e.g. ``git worktree add /tmp/old COMMIT``) that code's pair
    runs in the same rounds, so the two shares are measured side by side."""
    codes = {"this": None} if baseline_src is None else {"baseline": baseline_src, "this": None}
    with tempfile.TemporaryDirectory() as tmp:
        def detect(code, src, label, extra):
            env = dict(os.environ)
            if src is not None:
                env["PYTHONPATH"] = os.path.abspath(src)
            return lambda k: subprocess.run(
                [sys.executable, "-c", "import sys; from wsinuclei.cli import main; sys.exit(main())", "detect",
                 slide_path, "--out", str(Path(tmp) / f"{code}-{label}{k}"), "--model", model, "--quiet", *extra],
                check=True, capture_output=True, env=env)

        times = alternating({(code, label): detect(code, src, label, extra) for code, src in codes.items()
                             for label, extra in (("without", []), ("with", ["--features"]))}, repeats)
    res = {}
    for code in codes:
        best = {label: min(times[(code, label)]) for label in ("without", "with")}
        res[code] = {"detect_s_best": {k: round(v, 2) for k, v in best.items()},
                     "extra_share": round(best["with"] / best["without"] - 1, 3)}
    if baseline_src is not None:
        res["baseline"]["src"] = baseline_src
    return res if baseline_src is not None else res["this"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--slide", default=os.path.expanduser("~/.cache/wsinuclei/CMU-1-Small-Region.svs"))
    ap.add_argument("--tiles", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--baseline-src", default=None,
                    help="another checkout's src folder: its whole-slide pair is timed in the same rounds")
    a = ap.parse_args()
    res = {"slide": a.slide, "model": a.model, "per_tile": per_tile(a.model, a.slide, a.tiles),
           "whole_slide": whole_slide(a.model, a.slide, a.repeats, a.baseline_src)}
    print_json(res, a.json)


if __name__ == "__main__":
    main()
