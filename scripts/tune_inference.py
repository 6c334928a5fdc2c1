#!/usr/bin/env python
"""Inference-time proposal settings vs speed and validation accuracy, on the held-out *training* images
(the validation split written by `wsinuclei prepare`; never the test set).

    .venv/bin/python scripts/tune_inference.py --model runs/fast/best.safetensors --data runs/prepared
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from wsinuclei.checkpoint import load_model
from wsinuclei.data import load_split
from wsinuclei.evaluate import evaluate_set

SETTINGS = [(6000, 3000), (4000, 3000), (3000, 2500), (2000, 2000), (1500, 1500)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = load_model(args.model)
    val = load_split(args.data, "val_full")
    # 1000x1000 images padded to 1024x1024 with white: the cost of one full tile
    tiles = [np.pad(im, ((0, 24), (0, 24), (0, 0)), constant_values=255) for _, im, _ in val]
    print("| pre-NMS per level | post-NMS | val F1@0.5 | val centroid F1 | val AP@0.5 | s per 1024² tile |")
    print("|---|---|---|---|---|---|")
    for pre, post in SETTINGS:
        m.model.rpn._pre_nms_top_n["testing"] = pre
        m.model.rpn._post_nms_top_n["testing"] = post
        preds, times = [], []
        with torch.inference_mode():
            m.model([torch.from_numpy(tiles[0]).permute(2, 0, 1).float() / 255])
            for t in tiles:
                t0 = time.perf_counter()
                o = m.model([torch.from_numpy(t).permute(2, 0, 1).float() / 255])[0]
                times.append(time.perf_counter() - t0)
                preds.append((o["boxes"].numpy().astype(float), m.calibrate(o["scores"].numpy())))
        res = evaluate_set([(n, p, s, b) for (n, _, b), (p, s) in zip(val, preds)])
        print(f"| {pre} | {post} | {res['pooled']['f1']:.3f} | {res['pooled_centroid']['f1']:.3f} | "
              f"{res['AP@0.5']:.3f} | {np.median(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
