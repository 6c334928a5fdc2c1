#!/usr/bin/env python
"""What ``--norm-statistics slide`` costs: the network per 1024² tile with each tile's GroupNorm statistics and with
a slide's (the GroupNorm ops replaced by a multiply-add), on each runtime, and the one-off measurement per
slide (eight 1024² windows, read and normalised, then measured).

    .venv/bin/python scripts/benchmark_norm_statistics.py [--repeats 15] [--slide out/tiling_slide.tiff]

Run on a quiet machine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_models import real_tile  # noqa: E402
from benchmark_slide import machine  # noqa: E402


def per_tile(det, tile, repeats: int) -> float:
    det.predict([tile])  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        det.predict([tile])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--slide", default=None, help="also time the per-slide measurement on this slide")
    a = ap.parse_args()
    import openvino
    import torch

    from wsinuclei import __version__
    from wsinuclei.inference import load_detector, measure_norm_statistics

    torch.set_num_threads(2)
    tile = real_tile()
    print(f"Machine: {machine()}; wsinuclei {__version__}, OpenVINO {openvino.__version__}, torch {torch.__version__}\n")
    print("| runtime | tile statistics: s per 1024² tile | slide statistics | ratio |")
    print("|---|---|---|---|")
    for backend in ("auto", "torch"):
        stats, runtime = measure_norm_statistics(a.model, [tile], backend=backend)
        t0 = per_tile(load_detector(a.model, backend=backend), tile, a.repeats)
        t1 = per_tile(load_detector(a.model, backend=backend, norm_stats=stats), tile, a.repeats)
        print(f"| {runtime} | {t0:.3f} | {t1:.3f} | {t1 / t0:.2f} |")
    if a.slide:
        from wsinuclei.pipeline import RunOptions
        from wsinuclei.pipeline.plan import plan_slide, slide_norm_statistics
        from wsinuclei.checkpoint import read_model_file

        loaded, _ = read_model_file(a.model)
        opts = RunOptions(progress=False)
        plan = plan_slide(a.slide, opts, loaded.mpp, loaded.input_channels, loaded.target_mu, loaded.target_sigma,
                          a.model)
        try:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                slide_norm_statistics(plan.slide, plan.mask, plan.thumb_downsample, plan.ctx.model_mpp,
                                      loaded.input_channels, loaded.target_mu, loaded.target_sigma,
                                      plan.ctx.src_mu, plan.ctx.src_sigma, a.model, opts)
                times.append(time.perf_counter() - t0)
        finally:
            plan.slide.close()
        print(f"\nper-slide measurement on {a.slide} (8 windows, INT8): {statistics.median(times):.2f} s (median of 3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
