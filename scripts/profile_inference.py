"""Where a model's inference time goes, stage by stage, on real 1024x1024 tiles of the demo slide: the trunk,
the RPN's head, anchors and proposal filtering (top-k, decoding, NMS), the RoI box head and its
post-processing, the mask head, and the detector's own filter and outline tracing; for a star model, the
network (trunk, FPN and dense head in one) and the decoding. Run on a quiet machine.

    .venv/bin/python scripts/profile_inference.py [--model M] [--backend auto] [--repeats 5] [--json out/profile.json]

Each stage is timed by wrapping the torchvision part that does it; seconds are the median over repeats of the
summed stage time per tile (nested stages are inside their parents: ``rpn`` includes ``rpn.head`` etc.).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_slide import DEMO_TILES, demo_tiles, print_json  # noqa: E402


def wrap(obj, attr: str, name: str, sink: dict) -> None:
    """Replace ``obj.attr`` (a method or a module's forward) by a timed call that adds to ``sink[name]``."""
    if isinstance(getattr(obj, attr), torch.nn.Module):  # a child module: time its forward
        obj, attr = getattr(obj, attr), "forward"
    fn = getattr(obj, attr)

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            sink[name] += time.perf_counter() - t0

    setattr(obj, attr, timed)


def wrap_rcnn(m, sink: dict) -> None:
    """Time the stages of a Faster/Mask R-CNN."""
    rpn, heads = m.rpn, m.roi_heads
    wrap(m, "transform", "transform", sink)
    wrap(m, "backbone", "trunk", sink)
    wrap(m, "rpn", "rpn", sink)
    wrap(rpn, "head", "rpn.head", sink)
    wrap(rpn, "anchor_generator", "rpn.anchors", sink)
    wrap(rpn, "filter_proposals", "rpn.filter_proposals", sink)
    wrap(m, "roi_heads", "roi_heads", sink)
    wrap(heads, "box_roi_pool", "roi_heads.box_roi_align", sink)
    wrap(heads, "box_head", "roi_heads.box_head", sink)
    wrap(heads, "box_predictor", "roi_heads.box_predictor", sink)
    wrap(heads, "postprocess_detections", "roi_heads.postprocess_detections", sink)
    if heads.has_mask():
        wrap(heads, "mask_roi_pool", "roi_heads.mask_roi_align", sink)
        wrap(heads, "mask_head", "roi_heads.mask_head", sink)
        wrap(heads, "mask_predictor", "roi_heads.mask_predictor", sink)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "openvino", "openvino-int8"),
                    help="auto: as wsinuclei detect chooses (the shipped star model: its INT8 network)")
    ap.add_argument("--slide", default=os.path.expanduser("~/.cache/wsinuclei/CMU-1-Small-Region.svs"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rpn-score-floor", type=float, default=None,
                    help="the RPN's objectness floor before NMS (default: the model file's)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from wsinuclei import contours
    from wsinuclei.inference import OpenVinoStarDetector, load_detector

    det = load_detector(a.model, backend=a.backend)
    if a.backend == "openvino" and not isinstance(det, OpenVinoStarDetector) and det.loaded.config.is_star:
        det = load_detector(a.model, backend=a.backend)  # the conversion is checked now: the torch-free runtime
    lm = det.loaded
    if a.rpn_score_floor is not None:
        det.model.rpn.score_thresh = a.rpn_score_floor
    tiles = demo_tiles(a.slide, lm, DEMO_TILES)
    sink: dict[str, float] = defaultdict(float)
    if isinstance(det, OpenVinoStarDetector):  # OpenVINO alone: its network (normalisation inside) and decoding
        wrap(det.net, "compiled", "network", sink)
        wrap(det.net, "decoding", "decode", sink)
    elif lm.config.is_star:
        wrap(det.model, "batch", "transform", sink)
        wrap(det.model, "backbone", "network", sink)
        wrap(det.model, "decode", "decode", sink)
    else:
        wrap_rcnn(det.model, sink)
    wrap(det.filter, "keep", "detector.filter", sink)
    wrap(contours, "polar_outlines", "detector.outlines", sink)
    det.predict_instances([tiles[0]])  # warm-up
    per_stage: dict[str, list[float]] = defaultdict(list)
    totals, counts = [], []
    for _ in range(a.repeats):
        for t in tiles:
            sink.clear()
            t0 = time.perf_counter()
            (boxes, _, _), = det.predict_instances([t])
            totals.append(time.perf_counter() - t0)
            counts.append(len(boxes))
            for k, v in sink.items():
                per_stage[k].append(v)
    out = {"model": a.model or "shipped", "backend": det.backend, "threads": a.threads, "tiles": len(tiles),
           "rpn_score_floor": None if lm.config.is_star else det.model.rpn.score_thresh,
           "detections_per_tile": counts[: len(tiles)], "total_s": round(statistics.median(totals), 4),
           "stages_s": {k: round(statistics.median(v), 4) for k, v in per_stage.items()}}
    print_json(out, a.json)


if __name__ == "__main__":
    main()
