"""Seconds per 1024x1024 tile with the trunk on torch and on OpenVINO, side by side in one run (alternating,
best of ``--repeats``), on real tiles of the demo slide; and the trunk alone. Run on a quiet machine.

    python scripts/benchmark_backends.py [--model MODEL] [--repeats 5] [--json out/backends.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_slide import alternating, demo_tiles, print_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--slide", default=os.path.expanduser("~/.cache/wsinuclei/CMU-1-Small-Region.svs"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from wsinuclei.inference import NucleusDetector

    dets = {b: NucleusDetector.from_file(a.model, backend=b) for b in ("torch", "openvino")}
    assert dets["openvino"].backend == "openvino", "OpenVINO did not take the trunk"
    tiles = demo_tiles(a.slide, dets["torch"].loaded)
    x = torch.from_numpy(tiles[0]).permute(2, 0, 1).float().div(255)[None]

    def trunk(det):
        def run(_k):
            with torch.inference_mode():
                det.model.backbone(norm[id(det)])
        return run

    with torch.inference_mode():
        norm = {id(det): det.model.transform.normalize(x[0])[None] for det in dets.values()}
    runs = {}
    for label, det in dets.items():
        for i, t in enumerate(tiles):
            runs[(label, "tile_s", i)] = lambda _k, det=det, t=t: det.predict_instances([t])
        runs[(label, "trunk_s")] = trunk(det)
    times = alternating(runs, a.repeats)
    res = {"model": a.model or "shipped", "threads": a.threads, "tiles": len(tiles)}
    for label in ("torch", "openvino"):
        res[label] = {kind: [v for key, vs in times.items() if key[:2] == (label, kind) for v in vs]
                      for kind in ("tile_s", "trunk_s")}
    out = {"model": res["model"], "threads": a.threads}
    for label in ("torch", "openvino"):
        out[label] = {k: round(float(np.min(v)), 3) for k, v in res[label].items()}
        out[label].update({f"{k}_median": round(float(np.median(v)), 3) for k, v in res[label].items()})
    out["tile_ratio_openvino_over_torch"] = round(out["openvino"]["tile_s_median"] / out["torch"]["tile_s_median"], 3)
    print_json(out, a.json)


if __name__ == "__main__":
    main()
