#!/usr/bin/env python
"""Experiment: a star model's network in INT8 (OpenVINO + NNCF post-training quantisation), against fp32, on
speed and on the validation sets. Nothing here is shipped; it measures whether INT8 is worth shipping.

    pip install nncf                     # NNCF is not a wsinuclei dependency; this script alone needs it
    .venv/bin/python scripts/quantize_star.py [--model M] [--data runs/prepared_contours] [--out out/int8]

Calibration: 512x512 crops of the prepared folder's *training* images (seeded); the scores are on its
validation images, as training's validation computes them (the mean over sets). Writes OUT/star_int8.xml/.bin
and OUT/quantize_star.json. Run on a quiet machine.
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


def calibration_inputs(prepared: str, n: int, seed: int) -> list[np.ndarray]:
    """Network inputs (1, 3, 512, 512), normalised as the runtime normalises tiles, from training images."""
    from wsinuclei.data import load_tiles
    from wsinuclei.models.openvino_star import network_input

    rng = np.random.default_rng(seed)
    tiles = [t for t in load_tiles(prepared, "train") if min(t.image.shape[:2]) >= 512]
    out = []
    for k in rng.choice(len(tiles), min(n, len(tiles)), replace=False):
        im = tiles[k].image
        y, x = rng.integers(0, im.shape[0] - 511), rng.integers(0, im.shape[1] - 511)
        out.append(network_input(im[y : y + 512, x : x + 512]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a star model file (default: the shipped model)")
    ap.add_argument("--data", default="runs/prepared_contours")
    ap.add_argument("--calibration", type=int, default=96, help="calibration crops (default 96)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="out/int8")
    a = ap.parse_args()
    try:
        import nncf
    except ImportError:
        sys.exit("this experiment needs NNCF: pip install nncf")
    import openvino as ov

    from wsinuclei.checkpoint import read_model_file
    from wsinuclei.data import load_tiles
    from wsinuclei.inference import OpenVinoStarDetector, load_detector
    from wsinuclei.models.openvino_star import OpenVinoStarNet
    from wsinuclei.train import score_predictions

    loaded, _ = read_model_file(a.model)
    if not loaded.config.is_star:
        sys.exit(f"{loaded.path}: not a star model")
    det = load_detector(a.model)  # converts and checks the fp32 network once, if this machine has not yet
    det = det if isinstance(det, OpenVinoStarDetector) else load_detector(a.model)
    if not isinstance(det, OpenVinoStarDetector):
        sys.exit("OpenVINO did not take the model (is it installed?)")
    fp32_xml = det.net.xml
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    core = ov.Core()
    calib = calibration_inputs(a.data, a.calibration, seed=0)
    q = nncf.quantize(core.read_model(str(fp32_xml)), nncf.Dataset(calib), subset_size=len(calib),
                      preset=nncf.QuantizationPreset.PERFORMANCE)
    int8_xml = out / "star_int8.xml"
    ov.save_model(q, str(int8_xml))

    x = np.random.default_rng(0).normal(size=(1, 3, 1024, 1024)).astype(np.float32)
    val = load_tiles(a.data, "val_full")
    res = {"machine": machine(), "model": str(loaded.path), "calibration_crops": len(calib), "variants": {}}
    for name, xml in (("fp32", fp32_xml), ("int8", int8_xml)):
        net = OpenVinoStarNet(xml, loaded.config.star_head, threads=2)
        net.compiled(x)
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            net.compiled(x)
            times.append(time.perf_counter() - t0)
        preds = [(b.astype(np.float64), s.astype(np.float64)) for b, s, _ in (net([t.image])[0] for t in val)]
        v = score_predictions(val, preds)
        res["variants"][name] = {"network_s_per_1024_tile": round(statistics.median(times), 4),
                                 "val_score": round(v["val_f1"], 4), "val_threshold": v["val_threshold"],
                                 **{k: round(val_, 4) for k, val_ in v.items() if k.endswith("_f1") and k != "val_f1"}}
    print_json(res, str(out / "quantize_star.json"))


if __name__ == "__main__":
    main()
