#!/usr/bin/env python
"""Time ``compute_nuclei_features`` (default families) on one real MoNuSeg image with its label image: the
per-nucleus code alone, without detection. Give ``--src`` another checkout's ``src`` folder to time that code
instead (e.g. an older commit: ``git worktree add /tmp/old COMMIT``), and run both alternately for a fair pair.

    .venv/bin/python scripts/benchmark_feature_code.py [--src /tmp/old/src] [--repeats 5]

Prints the best of ``--repeats`` seconds and the number of nuclei. Run on a quiet machine.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=None, help="the src folder of the code to time (default: this checkout's)")
    ap.add_argument("--image", default=str(ROOT.parent / "shared" / "data" / "monuseg" / "train" / "TCGA-18-5592-01Z-00-DX1"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, args.src or str(ROOT / "src"))
    from skimage.io import imread

    import wsinuclei
    from wsinuclei import stain
    from wsinuclei.features import DEFAULT_FAMILIES
    from wsinuclei.features.nuclei import compute_nuclei_features

    rgb = imread(args.image + ".png")[..., :3]
    labels = imread(args.image + "_labels.png").astype(np.int32)
    st = stain.color_deconvolution(rgb, stain.STAIN_MATRIX_HE).Stains
    h, e = st[..., 0].astype(float), st[..., 1].astype(float)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        compute_nuclei_features(labels, h, e, DEFAULT_FAMILIES)
        times.append(time.perf_counter() - t0)
    print(f"{Path(wsinuclei.__file__).parent}: {len(np.unique(labels)) - 1} nuclei, best of {args.repeats}: "
          f"{min(times):.3f} s")


if __name__ == "__main__":
    main()
