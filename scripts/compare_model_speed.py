"""Seconds per 1024x1024 tile of two (or more) model files in one process, interleaved tile by tile: each round
runs every model once (``predict_full``, as a run calls it: types and all) on the same real tiles of the demo
slide, so a machine whose speed drifts (a shared host) slows every model alike, and the per-round ratio to the
first model is what is reported (median and quartiles over the rounds). Each model runs as ``wsinuclei detect``
would run it (``load_detector``, backend auto: the INT8 network on OpenVINO where the file carries one). Run on a
quiet machine.

    .venv/bin/python scripts/compare_model_speed.py src/wsinuclei/weights/star_default.safetensors \
        src/wsinuclei/weights/star_types.safetensors --rounds 40 [--json out/compare_model_speed.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_slide import demo_tiles, machine, print_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model files; ratios are to the first")
    ap.add_argument("--slide", default=os.path.expanduser("~/.cache/wsinuclei/CMU-1-Small-Region.svs"))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from wsinuclei.checkpoint import read_model_file
    from wsinuclei.inference import load_detector

    dets, tiles = [], []
    for m in a.models:
        det = load_detector(m)
        loaded, _ = read_model_file(m)
        t = demo_tiles(a.slide, loaded)
        det.predict_full(t[:1])  # warm-up: compilation and first-call costs
        dets.append(det)
        tiles.append(t)
    secs = [[] for _ in dets]
    for _ in range(a.rounds):
        for k, det in enumerate(dets):
            t0 = time.perf_counter()
            for tile in tiles[k]:
                det.predict_full([tile])
            secs[k].append((time.perf_counter() - t0) / len(tiles[k]))
    out = {"machine": machine(), "rounds": a.rounds, "tiles": len(tiles[0]), "models": []}
    for k, m in enumerate(a.models):
        ratio = np.array(secs[k]) / np.array(secs[0])
        out["models"].append({"model": m, "backend": getattr(dets[k], "backend", ""),
                              "s_per_tile_median": round(statistics.median(secs[k]), 4),
                              "s_per_tile_min": round(min(secs[k]), 4),
                              "ratio_median": round(float(np.median(ratio)), 3),
                              "ratio_quartiles": [round(float(q), 3) for q in np.percentile(ratio, [25, 75])]})
    print_json(out, a.json)


if __name__ == "__main__":
    main()
