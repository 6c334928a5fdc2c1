#!/usr/bin/env python
"""A star model's INT8 network (``wsinuclei export --int8``) against its float32 network on OpenVINO: seconds
per 1024x1024 network input (median of repeats) and the validation score of each, as training computes it (the
mean over sets, each at its best threshold).

    .venv/bin/python scripts/compare_int8.py [--model M] [--data runs/prepared_contours] [--out out/int8]

The model must carry an INT8 network (the shipped one does). Writes OUT/compare_int8.json. Time it on a quiet
machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_slide import machine, print_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a star model file carrying an INT8 network (default: the shipped model)")
    ap.add_argument("--data", default="runs/prepared_contours", help="prepared folder whose validation images score")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="out/int8")
    a = ap.parse_args()

    from wsinuclei.checkpoint import read_model_file
    from wsinuclei.data import load_tiles
    from wsinuclei.inference import OpenVinoStarDetector, load_detector
    from wsinuclei.models.openvino_star import OpenVinoStarNet
    from wsinuclei.train import score_predictions

    loaded, _ = read_model_file(a.model)
    if loaded.int8 is None:
        sys.exit(f"{loaded.path}: carries no INT8 network (wsinuclei export --int8)")
    det = load_detector(a.model, backend="openvino")  # converts and checks the float32 network, once per machine
    det = det if isinstance(det, OpenVinoStarDetector) else load_detector(a.model, backend="openvino")
    x = np.random.default_rng(0).uniform(0, 255, size=(1, 1024, 1024, 3)).astype(np.float32)  # as tile_input gives
    val = load_tiles(a.data, "val_full")
    res = {"machine": machine(), "model": str(loaded.path), "int8_record": loaded.extra.get("int8"), "variants": {}}
    for name, network in (("fp32", det.net.xml), ("int8", loaded.int8)):
        net = OpenVinoStarNet(network, loaded.config.star_head, threads=a.threads)
        net.compiled(x)
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            net.compiled(x)
            times.append(time.perf_counter() - t0)
        preds = [(b.astype(np.float64), s.astype(np.float64)) for b, s, *_ in (net([t.image])[0] for t in val)]
        v = score_predictions(val, preds)
        res["variants"][name] = {"network_s_per_1024_tile": round(statistics.median(times), 4),
                                 "val_score": round(v["val_f1"], 4), "val_threshold": v["val_threshold"],
                                 **{k: round(val_, 4) for k, val_ in v.items() if k.endswith("_f1") and k != "val_f1"}}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    print_json(res, str(Path(a.out) / "compare_int8.json"))


if __name__ == "__main__":
    main()
