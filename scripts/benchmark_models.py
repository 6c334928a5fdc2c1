#!/usr/bin/env python
"""Per-model table for BENCHMARKS.md: accuracy on the MoNuSeg test set (from the metrics.json that
scripts/evaluate_monuseg_test.sh writes) and model inference seconds per 1024x1024 tile on this CPU.

    .venv/bin/python scripts/benchmark_models.py --model src/wsinuclei/weights/fast_default.safetensors \
        --metrics out/monuseg_test/report/metrics.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_slide import machine  # noqa: E402


def real_tile(size: int = 1024) -> np.ndarray:
    """A 1024x1024 H&E tile from real MoNuSeg images (two test images side by side, cropped), normalised
    as the pipeline does; falls back to a synthetic tile when ../shared is absent."""
    from wsinuclei import stain
    from wsinuclei.data import load_image

    test = ROOT.parent / "shared" / "data" / "monuseg" / "test"
    files = sorted(test.glob("*.tif"))[:2]
    if len(files) < 2:
        rng = np.random.default_rng(0)
        return rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    a, b = (load_image(f) for f in files)
    tile = np.concatenate([np.concatenate([a, b], 1), np.concatenate([b, a], 1)], 0)[:size, :size]
    mu, sd = stain.lab_mean_std(tile)
    return stain.reinhard(tile, stain.DEFAULT_TARGET_MU, stain.DEFAULT_TARGET_SIGMA, mu, sd)


def time_model(path: str, repeats: int, threads: int) -> dict:
    from wsinuclei.inference import NucleusDetector
    from wsinuclei.models import count_parameters

    torch.set_num_threads(threads)
    det = NucleusDetector.from_file(path)
    tile = real_tile()
    det.predict([tile])  # warm-up
    times, n = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        (boxes, scores), = det.predict([tile])
        times.append(time.perf_counter() - t0)
        n = int((scores >= 0.5).sum())
    return {"preset": det.loaded.config.name, "params": count_parameters(det.model),
            "s_per_tile_median": statistics.median(times), "s_per_tile_min": min(times), "nuclei": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--metrics", action="append", default=[], help="metrics.json per model, same order")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"Machine: {machine()}; torch {torch.__version__}, {args.threads} threads\n")
    print("| preset | AP@0.1 | AP@0.5 | mAP 0.1:0.9 | F1@0.5 | centroid F1 (3 µm) | s per 1024² tile (median) | parameters |")
    print("|---|---|---|---|---|---|---|---|")
    for i, model in enumerate(args.model):
        t = time_model(model, args.repeats, args.threads)
        m = json.loads(Path(args.metrics[i]).read_text()) if i < len(args.metrics) else None
        acc = (f"{m['AP@0.1']:.3f} | {m['AP@0.5']:.3f} | {m['mAP']:.3f} | {m['pooled']['f1']:.3f} | "
               f"{m['pooled_centroid']['f1']:.3f}") if m else "– | – | – | – | –"
        print(f"| {t['preset']} | {acc} | {t['s_per_tile_median']:.2f} (min {t['s_per_tile_min']:.2f}) | "
              f"{t['params'] / 1e6:.2f} M |")


if __name__ == "__main__":
    main()
