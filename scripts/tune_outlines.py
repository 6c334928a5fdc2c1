"""Choose where a contour model's outline is drawn (the mask probability level) on the validation images of a
prepared folder, every set with instance labels together; never on test images.

    .venv/bin/python scripts/tune_outlines.py --model src/wsinuclei/weights/contours_default.safetensors \\
        --data runs/prepared_contours [--levels 0.3 0.4 0.5 0.6] [--json out/tune_outlines.json]

The model runs once per image; each level then redraws every outline (``contours.polar_outlines``) and scores
them at the model's operating point (calibrated score >= 0.5, after its detection filter): AJI and PQ per set
(pooled over the set's images) and their mean over sets, which chooses. Box F1@0.5 is reported for the model's
boxes and for the outlines' extents (a box drawn around the outline), to show whether the outline is the better
box. The pipeline draws outlines at 0.5 (``contours.polar_outlines``); this measures whether another level pays.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from wsinuclei.contours import polar_outlines
from wsinuclei.data import load_tiles
from wsinuclei.evaluate import Counts, count
from wsinuclei.inference import NucleusDetector
from wsinuclei.segmentation_metrics import SegmentationCounts, rasterise, segmentation_counts
from wsinuclei.stain import model_input

CUT = 0.5


def raw_predictions(det: NucleusDetector, image: np.ndarray):
    """(boxes, scores, masks) of one image at the operating point, after the model's filter."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    with torch.inference_mode():
        o = det.model([x])[0]
    boxes = o["boxes"].float().numpy().astype(np.float64)
    scores = det.loaded.calibrate(o["scores"].float().numpy())
    masks = o["masks"].float().numpy()
    if det.filter.active:
        keep = det.filter.keep(boxes, scores, det.loaded.mpp)
        boxes, scores, masks = boxes[keep], scores[keep], masks[keep]
    at_cut = scores >= CUT
    return boxes[at_cut], scores[at_cut], masks[at_cut]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a prepared folder (wsinuclei prepare)")
    ap.add_argument("--levels", type=float, nargs="*", default=[0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    det = NucleusDetector.from_file(args.model, backend="torch")
    if not det.draws_contours or det.loaded.config.is_star:
        raise SystemExit(f"{args.model}: needs a mask-head model (box models draw no outlines; star models draw theirs without masks)")
    tiles = [t for t in load_tiles(args.data, "val_full") if t.labels is not None]
    sets = sorted({t.set for t in tiles})
    preds = []
    for i, t in enumerate(tiles):
        preds.append(raw_predictions(det, model_input(t.image, det.loaded.input_channels)))
        if (i + 1) % 20 == 0 or i + 1 == len(tiles):
            print(f"inference {i + 1}/{len(tiles)}", flush=True)
    results = {"model": args.model, "data": args.data, "sets": sets, "levels": {}}
    for level in args.levels:
        seg = {s: SegmentationCounts() for s in sets}
        box = {s: [Counts(), Counts()] for s in sets}
        for t, (boxes, scores, masks) in zip(tiles, preds):
            outlines = polar_outlines(masks, boxes, level=level)
            seg[t.set] = seg[t.set] + segmentation_counts(t.labels, rasterise(outlines, t.labels.shape, scores))
            truth = t.boxes
            extents = np.concatenate([outlines.min(axis=1), outlines.max(axis=1)], axis=1) if len(outlines) \
                else np.zeros((0, 4))
            b, e = box[t.set]
            box[t.set] = [b + count(boxes, scores, truth, score_threshold=CUT),
                          e + count(extents, scores, truth, score_threshold=CUT)]
        row = {}
        for s in sets:
            f = seg[s].figures()
            row[s] = {"aji": round(f["aji"], 4), "pq": round(f["pq"], 4),
                      "box_f1": round(box[s][0].f1, 4), "extent_box_f1": round(box[s][1].f1, 4)}
        row["mean"] = {k: round(float(np.mean([row[s][k] for s in sets])), 4)
                       for k in ("aji", "pq", "box_f1", "extent_box_f1")}
        results["levels"][str(level)] = row
        print(f"level {level:.2f}: mean AJI {row['mean']['aji']:.4f} PQ {row['mean']['pq']:.4f} "
              f"box F1 {row['mean']['box_f1']:.4f} extent F1 {row['mean']['extent_box_f1']:.4f} | "
              + ", ".join(f"{s} AJI {row[s]['aji']:.3f} PQ {row[s]['pq']:.3f}" for s in sets), flush=True)
    best = max(args.levels, key=lambda lv: (results["levels"][str(lv)]["mean"]["aji"], -abs(lv - 0.5)))
    results["chosen_level"] = best
    print(f"chosen (mean AJI over sets): {best}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
