"""Detection metrics with one-to-one pairing.

Nuclei scenes hold hundreds of boxes per image, so predictions are paired with annotations one-to-one by the
Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) before anything is counted: on IoU (a pair is a
true positive when IoU >= threshold) or on centre distance (within a radius). Greedy pairing in crowded
scenes pairs a prediction with the wrong neighbour and undercounts.

AP is the all-point interpolated area under the precision-recall curve, with predictions ranked by score over
the whole set and every annotation in the recall denominator (a missed nucleus is never a zero-score entry).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

IOU_THRESHOLDS = tuple(np.round(np.arange(0.1, 0.9001, 0.05), 2))
SCORE_CUTS = tuple(np.round(np.arange(0.1, 0.9001, 0.05), 2))  # 0.1: the lowest score `detect` writes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of x0, y0, x1, y1 boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def centres(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def match(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5, *, radius: float | None = None):
    """One-to-one pairing. Returns (pred_index, truth_index, quality) of the accepted pairs.

    With ``radius`` None, pairs by IoU and accepts IoU >= ``iou_threshold``; otherwise by centre distance,
    accepting distance <= ``radius``. Among all one-to-one pairings of admissible pairs it takes one with the
    most pairs (so the number of true positives is the largest possible), and among those the largest total
    IoU (or smallest total distance).
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
    if len(pred) == 0 or len(truth) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    if radius is None:
        return match_iou(box_iou(pred, truth), iou_threshold)
    return match_distance(centre_distances(pred, truth), radius)


def centre_distances(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Distance matrix (len(pred), len(truth)) between box centres."""
    pc, tc = centres(pred), centres(truth)
    return np.hypot(pc[:, None, 0] - tc[None, :, 0], pc[:, None, 1] - tc[None, :, 1])


def match_iou(iou: np.ndarray, threshold: float):
    """:func:`match` on a precomputed IoU matrix (AP reuses one matrix for every IoU threshold)."""
    admissible = iou >= threshold - 1e-12
    return _assign(iou, admissible, iou)


def match_distance(dist: np.ndarray, radius: float):
    """:func:`match` by centre distance on a precomputed distance matrix."""
    return _assign(dist, dist <= radius + 1e-12, 1.0 - dist / max(radius, 1e-12))


def _assign(quality: np.ndarray, admissible: np.ndarray, tie_break: np.ndarray):
    """Maximum-cardinality assignment over admissible pairs, ``tie_break`` (each in [0, 1]) maximised among
    those. Every admissible pair is worth ``K + tie_break`` with K larger than any possible sum of
    tie-breaks, so one more pair always outweighs any gain in overlap."""
    # Only rows/columns with an admissible pair take part: this keeps the problem small in sparse scenes.
    rows = np.flatnonzero(admissible.any(axis=1))
    cols = np.flatnonzero(admissible.any(axis=0))
    if len(rows) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    big = float(min(len(rows), len(cols)) + 1)
    sub_adm = admissible[np.ix_(rows, cols)]
    sub = np.where(sub_adm, big + np.clip(tie_break[np.ix_(rows, cols)], 0.0, 1.0), 0.0)
    from scipy.optimize import linear_sum_assignment  # here: a whole-slide run imports this module for box_iou only

    r, c = linear_sum_assignment(sub, maximize=True)
    ok = sub_adm[r, c]
    pi, ti = rows[r[ok]], cols[c[ok]]
    return pi, ti, quality[pi, ti]


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0  # nothing to find and nothing found: perfect

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def as_dict(self) -> dict:
        return {**asdict(self), "precision": self.precision, "recall": self.recall, "f1": self.f1}


def count(pred, scores, truth, *, score_threshold=0.5, iou_threshold=0.5, radius=None) -> Counts:
    """TP/FP/FN for the predictions with score >= ``score_threshold``."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    if scores is not None:
        pred = pred[np.asarray(scores) >= score_threshold]
    pi, _, _ = match(pred, truth, iou_threshold, radius=radius)
    tp = len(pi)
    return Counts(tp, len(pred) - tp, len(np.asarray(truth).reshape(-1, 4)) - tp)


def average_precision(tp_flags: np.ndarray, scores: np.ndarray, n_truth: int) -> tuple[float, np.ndarray, np.ndarray]:
    """All-point interpolated AP from per-prediction TP flags and scores pooled over a set.

    The curve has one point per distinct score (a threshold), so predictions tied in score count together and
    the result does not depend on their order. Returns (ap, precision, recall) in descending score order.
    """
    if n_truth == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    tp = np.asarray(tp_flags, dtype=np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    s = scores[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
    ctp, cfp = ctp[last_of_tie], cfp[last_of_tie]
    recall = ctp / n_truth
    precision = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
    # precision envelope (monotone non-increasing from the right), then area over recall steps
    mrec = np.concatenate([[0.0], recall])
    mpre = np.concatenate([[1.0], precision])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    ap = float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))
    return ap, precision, recall


def pr_auc(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the raw (not interpolated) precision-recall curve by the trapezoid rule, starting at
    recall 0 with the first point's precision."""
    if len(recall) == 0:
        return float("nan")
    r = np.concatenate([[0.0], recall])
    p = np.concatenate([[precision[0]], precision])
    return float(np.sum((r[1:] - r[:-1]) * (p[1:] + p[:-1]) / 2))


def score_cuts(items, cuts=SCORE_CUTS, *, iou_threshold: float = 0.5, radius_px: float = 12.0) -> list[dict]:
    """Pooled counts at each score cut, by IoU and by centroid pairing: the table an operating point is
    chosen from. Each cut pairs its own predictions afresh, as the figures at the operating point do (the AP
    curve instead pairs every prediction once, whatever its score). ``items``: (name, pred, scores, truth)."""
    tally = {float(c): [Counts(), Counts()] for c in cuts}
    for _, pred, scores, truth in items:
        pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
        truth = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
        scores = np.ones(len(pred)) if scores is None else np.asarray(scores, dtype=np.float64)
        # best first, so each cut keeps a prefix: one IoU and one distance matrix serve every cut
        order = np.argsort(-scores, kind="mergesort")
        pred, scores = pred[order], scores[order]
        iou, dist = box_iou(pred, truth), centre_distances(pred, truth)
        # prefix length -> true positives (IoU, centroid): cuts that keep the same predictions pair them once
        paired = {0: (0, 0)}
        for cut, (boxes, centroid) in tally.items():
            k = int(np.count_nonzero(scores >= cut))
            if k not in paired:
                paired[k] = ((len(match_iou(iou[:k], iou_threshold)[0]), len(match_distance(dist[:k], radius_px)[0]))
                             if len(truth) else (0, 0))
            tp_iou, tp_c = paired[k]
            tally[cut] = [boxes + Counts(tp_iou, k - tp_iou, len(truth) - tp_iou),
                          centroid + Counts(tp_c, k - tp_c, len(truth) - tp_c)]
    return [{"score": cut, "boxes": b.as_dict(), "centroid": c.as_dict()} for cut, (b, c) in tally.items()]


def best_cut(rows: list[dict], pairing: str, *, min_precision: float | None = None) -> dict | None:
    """The :func:`score_cuts` row with the highest F1 by ``pairing`` ("boxes" or "centroid"), or with
    ``min_precision`` the highest recall among the cuts whose precision reaches it (None when none does).
    Ties go to the higher precision, then to the lower cut."""
    pool = rows if min_precision is None else [r for r in rows if r[pairing]["precision"] >= min_precision - 1e-12]
    first = "f1" if min_precision is None else "recall"
    return max(pool, key=lambda r: (r[pairing][first], r[pairing]["precision"], -r["score"])) if pool else None


def border_keep(boxes, shape_hw, margin) -> np.ndarray:
    """True for the boxes whose centre lies at least ``margin`` px inside the image border."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if margin <= 0 or shape_hw is None:
        return np.ones(len(boxes), bool)
    c = centres(boxes)
    h, w = shape_hw
    return (c[:, 0] >= margin) & (c[:, 1] >= margin) & (c[:, 0] < w - margin) & (c[:, 1] < h - margin)


def apply_border_margin(boxes, scores, shape_hw, margin):
    """Drop boxes whose centre lies within ``margin`` px of the image border."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = border_keep(boxes, shape_hw, margin)
    return boxes[keep], (None if scores is None else np.asarray(scores)[keep])


def evaluate_set(
    items,
    *,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    radius_px: float = 12.0,
    iou_thresholds=IOU_THRESHOLDS,
) -> dict:
    """Pooled metrics over ``items``: iterable of (name, pred_boxes, scores, truth_boxes).

    Returns a dict with per-image counts, pooled counts at the score threshold (IoU and centroid pairing),
    AP per IoU threshold, mAP, AP@0.1 and AP@0.5, PR-AUC and the PR curves at IoU 0.1 and 0.5.
    """
    per_image, pooled, pooled_c = [], Counts(), Counts()
    n_truth = 0
    flags = {t: [] for t in iou_thresholds}
    all_scores = []
    for name, pred, scores, truth in items:
        pred = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
        truth = np.asarray(truth, dtype=np.float64).reshape(-1, 4)
        scores = np.ones(len(pred)) if scores is None else np.asarray(scores, dtype=np.float64)
        c = count(pred, scores, truth, score_threshold=score_threshold, iou_threshold=iou_threshold)
        cc = count(pred, scores, truth, score_threshold=score_threshold, radius=radius_px)
        per_image.append({"image": name, **c.as_dict(), "centroid_f1": cc.f1, "n_truth": len(truth)})
        pooled, pooled_c = pooled + c, pooled_c + cc
        n_truth += len(truth)
        all_scores.append(scores)
        # AP: every prediction (no score threshold) matched once per IoU threshold
        iou = box_iou(pred, truth) if len(pred) and len(truth) else None
        for t in iou_thresholds:
            tpf = np.zeros(len(pred))
            if iou is not None:
                pi, _, _ = match_iou(iou, t)
                tpf[pi] = 1
            flags[t].append(tpf)
    scores_all = np.concatenate(all_scores) if all_scores else np.zeros(0)
    ap, curves = {}, {}
    for t in iou_thresholds:
        value, prec, rec = average_precision(np.concatenate(flags[t]) if flags[t] else np.zeros(0), scores_all, n_truth)
        ap[f"{t:.2f}"] = value
        if abs(t - 0.1) < 1e-9 or abs(t - 0.5) < 1e-9:
            curves[f"{t:.2f}"] = {"precision": prec, "recall": rec}
    ap_values = [v for v in ap.values() if not np.isnan(v)]
    return {
        "pooled": pooled.as_dict(),
        "pooled_centroid": pooled_c.as_dict(),
        "ap": ap,
        "mAP": float(np.mean(ap_values)) if ap_values else float("nan"),
        "AP@0.1": ap.get("0.10", float("nan")),
        "AP@0.5": ap.get("0.50", float("nan")),
        "PR-AUC": pr_auc(curves["0.50"]["precision"], curves["0.50"]["recall"]) if "0.50" in curves else float("nan"),
        "per_image": per_image,
        "n_truth": n_truth,
        "n_pred": int(len(scores_all)),
        "curves": curves,
    }
