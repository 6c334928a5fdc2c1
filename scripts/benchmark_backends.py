"""Seconds per 1024x1024 tile with the trunk on torch and on OpenVINO, side by side in one run (alternating,
best of ``--repeats``), on real tiles of the demo slide; and the trunk alone. Run on a quiet machine.

    python scripts/benchmark_backends.py [--model MODEL] [--repeats 5] [--json out/backends.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--slide", default=os.path.expanduser("~/.cache/wsinuclei/CMU-1-Small-Region.svs"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from wsinuclei import stain
    from wsinuclei.inference import NucleusDetector
    from wsinuclei.slide import Slide

    dets = {b: NucleusDetector.from_file(a.model, backend=b) for b in ("torch", "openvino")}
    assert dets["openvino"].backend == "openvino", "OpenVINO did not take the trunk"
    lm = dets["torch"].loaded
    with Slide(a.slide) as s:
        tiles = [stain.model_input(stain.reinhard(s.read_region(x, y, 1024, 1024, lm.mpp), lm.target_mu, lm.target_sigma),
                                   lm.input_channels) for x, y in ((700, 900), (1000, 1800))]
    res = {"model": a.model or "shipped", "threads": a.threads, "tiles": len(tiles)}
    for label in ("torch", "openvino"):
        res[label] = {"tile_s": [], "trunk_s": []}
    x = torch.from_numpy(tiles[0]).permute(2, 0, 1).float().div(255)[None]
    for _ in range(a.repeats):
        for label, det in dets.items():
            for t in tiles:
                t0 = time.perf_counter()
                det.predict_instances([t])
                res[label]["tile_s"].append(time.perf_counter() - t0)
            with torch.inference_mode():
                norm = det.model.transform.normalize(x[0])[None]
                t0 = time.perf_counter()
                det.model.backbone(norm)
                res[label]["trunk_s"].append(time.perf_counter() - t0)
    out = {"model": res["model"], "threads": a.threads}
    for label in ("torch", "openvino"):
        out[label] = {k: round(float(np.min(v)), 3) for k, v in res[label].items()}
        out[label].update({f"{k}_median": round(float(np.median(v)), 3) for k, v in res[label].items()})
    out["tile_ratio_openvino_over_torch"] = round(out["openvino"]["tile_s_median"] / out["torch"]["tile_s_median"], 3)
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
