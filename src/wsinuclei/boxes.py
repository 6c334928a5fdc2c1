"""Greedy suppression among axis-aligned boxes, in numpy: non-maximum suppression (IoU) and nested boxes
(the share of a box inside a better one). Both visit boxes best first and drop a box when a better box that
is itself kept overlaps it enough; only pairs of boxes that can overlap are compared (a sweep along x within
bands of rows), and the greedy pass runs in rounds over those pairs instead of box by box.
"""

from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes non-maximum suppression keeps, best score first (ties: lower index first): what
    torchvision's ``nms`` keeps."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    if len(boxes) <= 1:
        return order
    b = boxes[order]  # rank r: the r-th best box
    i, j, inter = overlapping_pairs(b)
    area = _areas(b)
    iou = inter / np.maximum(area[i] + area[j] - inter, 1e-12)
    hit = iou > iou_threshold
    better, worse = np.minimum(i, j)[hit], np.maximum(i, j)[hit]
    return order[greedy_keep(len(b), better, worse)]


def nested_in_better(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the boxes with more than ``threshold`` of their area inside a better-scoring box that is
    itself kept (a chain of nested boxes keeps only the best)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    if len(boxes) <= 1:
        return order[:0]
    b = boxes[order]
    i, j, inter = overlapping_pairs(b)
    better, worse = np.minimum(i, j), np.maximum(i, j)
    inside = inter / np.maximum(_areas(b)[worse], 1e-6)  # share of the worse box inside the better one
    hit = inside > threshold
    return order[~greedy_keep(len(b), better[hit], worse[hit])]


def greedy_keep(n: int, better: np.ndarray, worse: np.ndarray) -> np.ndarray:
    """Which of ``n`` ranked boxes greedy suppression keeps, given the pairs (better rank, worse rank) where the
    better box, if kept, drops the worse one. In rounds: a box whose better partners are all dropped (or
    which has none) is kept, and drops its worse partners; every round settles at least the best open box."""
    state = np.zeros(n, np.int8)  # 0 open, 1 kept, -1 dropped
    while True:
        open_ = state == 0
        if not open_.any():
            return state == 1
        waiting = np.zeros(n, bool)
        waiting[worse[state[better] >= 0]] = True
        state[open_ & ~waiting] = 1
        state[worse[(state[better] == 1) & (state[worse] == 0)]] = -1


def overlapping_pairs(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i, j) of boxes (N, 4 of x0, y0, x1, y1) whose x ranges overlap and that start at most one
    band of rows apart, once, with their intersection areas (zero for pairs that only share x). Bands are as
    tall as the tallest box, so two boxes that overlap at all start at most one band apart; within those
    bands, each pair is found from the box that starts first along x (the lower index, at equal x)."""
    n = len(b)
    band_h = max(float((b[:, 3] - b[:, 1]).max()), 1e-6)
    band = np.floor((b[:, 1] - b[:, 1].min()) / band_h).astype(np.int64)
    span = float(b[:, 2].max() - b[:, 0].min()) + 1.0
    x0 = b[:, 0] - b[:, 0].min()
    key = band * span + x0  # sorted: band by band, each band's boxes by their left edge
    by_key = np.argsort(key, kind="stable")
    sorted_key = key[by_key]
    width = b[:, 2] - b[:, 0]
    firsts, seconds = [], []
    for off in (-1, 0, 1):
        lo = np.searchsorted(sorted_key, (band + off) * span + x0, side="left")
        hi = np.searchsorted(sorted_key, (band + off) * span + x0 + width, side="left")
        counts = np.maximum(hi - lo, 0)
        i = np.repeat(np.arange(n), counts)
        j = by_key[np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))]
        first = (x0[j] > x0[i]) | ((x0[j] == x0[i]) & (j > i))
        firsts.append(i[first])
        seconds.append(j[first])
    i, j = np.concatenate(firsts), np.concatenate(seconds)
    lt = np.maximum(b[i, :2], b[j, :2])
    rb = np.minimum(b[i, 2:], b[j, 2:])
    return i, j, np.prod(np.clip(rb - lt, 0, None), axis=1)


def _areas(b: np.ndarray) -> np.ndarray:
    return np.prod(b[:, 2:] - b[:, :2], axis=1)
