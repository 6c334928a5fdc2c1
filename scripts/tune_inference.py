#!/usr/bin/env python
"""Inference-time proposal budgets against speed and validation accuracy, on the validation images of a prepared
folder (`wsinuclei prepare`; never a test set), every set with boxes together.

    .venv/bin/python scripts/tune_inference.py --model src/wsinuclei/weights/contours_default.safetensors \\
        --data runs/prepared_contours [--settings 6000:3000 6000:2000 ...] [--json out/tune_inference.json]

For each (pre-NMS per level : post-NMS) setting: F1@0.5 and centroid F1 per set at the model's operating point
(score >= 0.5, after its filter), their mean over sets, and seconds per 1024x1024 tile (median, the MoNuSeg
validation images padded to 1024 px with white, the model's trunk backend). Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from wsinuclei.data import load_tiles
from wsinuclei.evaluate import Counts, count
from wsinuclei.inference import NucleusDetector
from wsinuclei.stain import model_input

SETTINGS = ["6000:3000", "4000:3000", "3000:2500", "2000:2000", "1500:1500"]
CUT = 0.5


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--settings", nargs="*", default=SETTINGS,
                    help="PRE:POST proposal budgets, PRE:POST:FLOOR with the RPN's objectness floor (default 0), "
                         "PRE:POST:FLOOR:NMS with its NMS IoU too (default: the model's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    det = NucleusDetector.from_file(args.model)
    tiles = [t for t in load_tiles(args.data, "val_full") if t.points is None]
    for t in tiles:
        t.image = model_input(t.image, det.loaded.input_channels)
    sets = sorted({t.set for t in tiles})
    # 1000x1000 images padded to 1024x1024 with white: the cost of one full tile
    timing = [np.pad(t.image, ((0, 1024 - t.image.shape[0]), (0, 1024 - t.image.shape[1]), (0, 0)),
                     constant_values=255) for t in tiles if t.set == "monuseg" and max(t.image.shape[:2]) <= 1024]
    if det.loaded.config.is_star:
        ap.error("proposal budgets apply to R-CNN models; a star model has none (its NMS: tune_postprocess.py --nms)")
    rpn = det.model.rpn
    model_nms = rpn.nms_thresh
    results = {"model": args.model, "data": args.data, "backend": det.backend, "sets": sets, "settings": []}
    print(f"| pre-NMS per level | post-NMS | RPN score floor | RPN NMS IoU | proposals per image | mean F1@0.5 | mean centroid F1 | {' | '.join(f'{s} F1' for s in sets)} "
          "| s per 1024² tile |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(sets) + "---|")
    for setting in args.settings:
        pre, post, *rest = setting.split(":")
        pre, post = int(pre), int(post)
        floor = float(rest[0]) if rest else 0.0
        nms = float(rest[1]) if len(rest) > 1 else model_nms
        rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], rpn.score_thresh = pre, post, floor
        rpn.nms_thresh = nms
        proposals = []
        filter_proposals = rpn.filter_proposals

        def counted(*a, **k):
            boxes, scores = filter_proposals(*a, **k)
            proposals.extend(len(b) for b in boxes)
            return boxes, scores

        rpn.filter_proposals = counted
        det.predict([timing[0]])  # warm-up
        times = []
        for t in timing:
            t0 = time.perf_counter()
            det.predict([t])
            times.append(time.perf_counter() - t0)
        box = {s: Counts() for s in sets}
        centroid = {s: Counts() for s in sets}
        for t in tiles:
            (b, sc), = det.predict([t.image])
            box[t.set] = box[t.set] + count(b, sc, t.boxes, score_threshold=CUT)
            centroid[t.set] = centroid[t.set] + count(b, sc, t.boxes, score_threshold=CUT, radius=3.0 / det.loaded.mpp)
        del rpn.filter_proposals  # the class's own again
        row = {"pre_nms": pre, "post_nms": post, "rpn_score_floor": floor, "rpn_nms": nms, "s_per_tile": round(float(np.median(times)), 3),
               "proposals_per_image": round(float(np.mean(proposals)), 1),
               "f1": {s: round(box[s].f1, 4) for s in sets}, "centroid_f1": {s: round(centroid[s].f1, 4) for s in sets}}
        row["mean_f1"] = round(float(np.mean(list(row["f1"].values()))), 4)
        row["mean_centroid_f1"] = round(float(np.mean(list(row["centroid_f1"].values()))), 4)
        results["settings"].append(row)
        print(f"| {pre} | {post} | {floor:g} | {nms:g} | {row['proposals_per_image']:.0f} | {row['mean_f1']:.3f} | {row['mean_centroid_f1']:.3f} | "
              + " | ".join(f"{row['f1'][s]:.3f}" for s in sets) + f" | {row['s_per_tile']:.2f} |", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
