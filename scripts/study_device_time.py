#!/usr/bin/env python
"""Seconds per 1024x1024 tile of each model on one device (CPU or a CUDA GPU), for the study's CPU-vs-GPU
comparison (experiments 1, 2 and 5 of the study issue): the model as ``wsinuclei detect`` runs it (the
NucleusDetector, its own detection cap, masks where the model draws them), one tile at a time, median of
``--repeats`` after two warm-ups; on a GPU the result is read back to the host each time, so the GPU work is
finished. ResNet-101 models can also be timed cut to fewer block-3 units (``--units``).

    .venv/bin/python scripts/study_device_time.py --device cpu --tile out/tile1024.webp \
        --model resnet101=runs/resnet101/best.safetensors --units 6,12,15,18,20,23 --out out/cpu_time.json

The tile is written once from real MoNuSeg images with ``--write-tile FILE`` (``benchmark_models.real_tile``;
lossless WebP), so a machine without ../shared can time the same pixels.
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
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmark_slide import machine

    return f"{machine()}, {torch.get_num_threads()} threads"


def time_detector(det, tile: np.ndarray, repeats: int) -> dict:
    cuda = det.device.type == "cuda"
    for _ in range(2):
        det.predict_instances([tile])
    if cuda:
        torch.cuda.synchronize(det.device)
        torch.cuda.reset_peak_memory_stats(det.device)
    times, n = [], 0  # n: detections the model returns (its own cap and score floor)
    for _ in range(repeats):
        t0 = time.perf_counter()
        (boxes, scores, _masks), = det.predict_instances([tile])
        times.append(time.perf_counter() - t0)
        n = len(scores)
    out = {"s_per_tile_median": statistics.median(times), "s_per_tile_min": min(times), "detections": n}
    if cuda:
        out["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated(det.device) / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--tile", help="the 1024x1024 tile (lossless WebP or PNG)")
    ap.add_argument("--write-tile", metavar="FILE", help="write the real-MoNuSeg tile and exit")
    ap.add_argument("--units", default="", help="also time ResNet models cut to these block-3 units, e.g. 6,12,18")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", required=False)
    args = ap.parse_args()
    if args.write_tile:
        sys.path.insert(0, str(ROOT / "scripts"))
        from benchmark_models import real_tile

        Image.fromarray(real_tile()).save(args.write_tile, lossless=True, quality=100)
        print(f"wrote {args.write_tile}")
        return
    if not args.tile or not args.model or not args.out:
        ap.error("--tile, --model and --out are needed")
    from wsinuclei.inference import NucleusDetector
    from wsinuclei.models import count_parameters, set_num_units

    if args.threads:
        torch.set_num_threads(args.threads)
    tile = np.array(Image.open(args.tile).convert("RGB"))
    units = [int(u) for u in args.units.split(",") if u]
    rows = []
    for spec in args.model:
        name, path = spec.split("=", 1)
        det = NucleusDetector.from_file(path, device=args.device, backend="torch")
        full = det.model
        resnet = det.loaded.config.name.startswith("resnet")
        n_units = len(full.backbone.body.layer3) if resnet else None
        settings = [None] + ([u for u in units if u < n_units] if resnet else [])
        for u in settings:
            if u is not None:
                det.model = set_num_units(full, u).to(det.device).eval()
            row = {"model": name, "file": path, "preset": det.loaded.config.name,
                   "units": u if u is not None else n_units,
                   "params": count_parameters(det.model), **time_detector(det, tile, args.repeats)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        det.model = full
    result = {"device": args.device, "device_name": device_name(args.device), "torch": torch.__version__,
              "tile": [int(s) for s in tile.shape], "repeats": args.repeats, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
