"""Haralick texture features, HistomicsTK 1.4.0's ``compute_haralick_features``: for each nucleus, grey-level
co-occurrence matrices (32 levels over 0-255, symmetric, normalised) of its bounding box grown by one row and
column, for the offsets (0, 1), (1, 0), (1, 1), (1, -1); 13 statistics per matrix, reported as their mean and
range over the four offsets. The box is not masked: as in HistomicsTK, it includes the pixels around the
nucleus. Opt-in (``--feature-families ...,haralick``): the most expensive family.
"""

from __future__ import annotations

import numpy as np

STATS = ("ASM", "Contrast", "Correlation", "SumOfSquares", "IDM", "SumAverage", "SumVariance", "SumEntropy",
         "Entropy", "DifferenceVariance", "DifferenceEntropy", "IMC1", "IMC2")
COLUMNS = tuple(f"Haralick.{s}.{agg}" for s in STATS for agg in ("Mean", "Range"))
OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
LEVELS = 32
_E = 0.00001  # HistomicsTK's guard against log(0)


def glcm(sub: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """(levels, levels, 4) symmetric normalised co-occurrence matrices of a uint8 image."""
    q = np.round(sub.astype(float) / 255.0 * (levels - 1)).astype(np.int64)
    rows, cols = q.shape
    out = np.zeros((levels, levels, len(OFFSETS)))
    for k, (dr, dc) in enumerate(OFFSETS):
        r0, r1 = 0, rows - dr
        c0, c1 = max(0, -dc), cols - max(0, dc)
        a = q[r0:r1, c0:c1]
        b = q[r0 + dr:r1 + dr, c0 + dc:c1 + dc]
        m = np.bincount((a * levels + b).ravel(), minlength=levels * levels).reshape(levels, levels).astype(float)
        m += m.T
        total = m.sum()
        if total:
            m /= total
        out[:, :, k] = m
    return out


def _marginals(p: np.ndarray):
    n = p.shape[0]
    i, j = np.indices(p.shape)
    px, py = p.sum(axis=1), p.sum(axis=0)
    plus = np.bincount((i + j).ravel(), p.ravel(), minlength=2 * n - 1)
    minus = np.bincount(np.abs(i - j).ravel(), p.ravel(), minlength=n)
    return px, py, plus, minus


def haralick_stats(p: np.ndarray) -> list[float]:
    n = p.shape[0]
    levels, plus_levels = np.arange(n), np.arange(2 * n - 1)
    x, y = np.mgrid[0:n, 0:n]
    px, py, plus, minus = _marginals(p)
    pr = p.ravel()
    asm = np.sum(np.square(p))
    contrast = np.dot(np.square(levels), minus)
    meanx = np.dot(levels, px)
    variance = np.dot(px, np.square(levels)) - np.square(meanx)
    correlation = (np.dot((x * y).ravel(), pr) - np.square(meanx)) / variance if variance else 0.0
    idm = np.dot((1.0 / (1 + np.square(x - y))).ravel(), pr)
    sum_average = np.dot(plus_levels, plus)
    sum_variance = np.dot(np.square(plus_levels), plus) - np.square(sum_average)
    sum_entropy = -np.dot(plus, np.log2(plus + _E))
    entropy = -np.dot(pr, np.log2(pr + _E))
    difference_variance = np.var(minus)
    difference_entropy = -np.dot(minus, np.log2(minus + _E))
    hx, hy = -np.dot(px, np.log2(px + _E)), -np.dot(py, np.log2(py + _E))
    pxy = np.outer(px, py).ravel()
    hxy1 = -np.dot(pr, np.log2(pxy + _E))
    hxy2 = -np.dot(pxy, np.log2(pxy + _E))
    imc1 = (entropy - hxy1) / max(hx, hy)
    imc2 = np.sqrt(np.maximum(0, 1 - np.exp(-2.0 * (hxy2 - entropy))))
    return [asm, contrast, correlation, variance, idm, sum_average, sum_variance, sum_entropy, entropy,
            difference_variance, difference_entropy, imc1, imc2]


def haralick_features(image: np.ndarray, bboxes) -> dict[str, np.ndarray]:
    """Haralick columns for regions with these (min_row, min_col, max_row, max_col) boxes; ``None`` for a
    region that has none gives zeros, as HistomicsTK leaves it."""
    image = np.asarray(image)
    out = np.zeros((len(bboxes), len(COLUMNS)))
    for i, bb in enumerate(bboxes):
        if bb is None:
            continue
        r0, c0, r1, c1 = bb
        sub = image[r0:r1 + 1, c0:c1 + 1].astype(np.uint8)
        g = glcm(sub)
        per = np.array([haralick_stats(g[:, :, k]) for k in range(g.shape[2])])
        out[i, 0::2] = per.mean(axis=0)
        out[i, 1::2] = np.ptp(per, axis=0)
    return {c: out[:, k] for k, c in enumerate(COLUMNS)}
