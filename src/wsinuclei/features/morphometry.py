"""Morphometry of every labelled region at once: the values scikit-image's ``regionprops`` gives (which
HistomicsTK takes), from per-pixel sums over the whole label image instead of one Python object per region.

``regionprops`` costs about 2 ms a nucleus in Python overhead (a property object, a crop, a dozen small
``einsum`` calls); a tile holds hundreds of nuclei. Here moments, perimeter, axes and Hu moments come from
``np.bincount`` over all pixels together, and so do the convex hulls (``convex_areas``) and the box-counting
dimensions (``fractal_dimensions``), with no loop over regions. ``tests/test_features.py`` holds these to HistomicsTK's own values (rtol 1e-9) and
``tests/test_morphometry.py`` to ``regionprops`` on shapes chosen to hit the edge cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Regions:
    """The labelled regions of an image: labels present (sorted), their boxes and pixels."""

    labels: np.ndarray  # (n,) label values, ascending, as regionprops lists them
    slices: list  # (row slice, column slice) box of each region
    rows: np.ndarray  # (P,) row of every labelled pixel, raster order
    cols: np.ndarray  # (P,) column of every labelled pixel
    index: np.ndarray  # (P,) region index (0..n-1) of every labelled pixel
    index_of: np.ndarray  # label value -> region index (0 for values not present)

    @property
    def n(self) -> int:
        return len(self.labels)

    def box(self) -> np.ndarray:
        """(n, 4) min row, min col, max row + 1, max col + 1: regionprops' ``bbox``."""
        return np.array([(r.start, c.start, r.stop, c.stop) for r, c in self.slices], np.int64).reshape(-1, 4)

    def sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.index, weights=values, minlength=self.n)


def find_regions(labels: np.ndarray) -> Regions:
    from scipy.ndimage import find_objects

    labels = np.asarray(labels)
    rows, cols = np.nonzero(labels > 0)
    values = labels[rows, cols]
    present = np.unique(values)
    index_of = np.zeros(int(present[-1]) + 1 if len(present) else 1, np.int64)
    index_of[present] = np.arange(len(present))
    objects = find_objects(labels.astype(np.int64, copy=False))
    slices = [objects[v - 1] for v in present]
    return Regions(present, slices, rows, cols, index_of[values], index_of)


def _moments(reg: Regions, col_group, lr, lc, w, cr, cc, order: int = 3) -> np.ndarray:
    """Moments about (cr, cc) per region up to ``order`` (p + q), (n, 4, 4), summed as ``skimage.measure.moments_central`` sums them:
    over the rows of each column first, then over the columns. The order matters where a moment is zero by
    symmetry: summed this way it comes out exactly zero (as skimage's does), which decides the sign of
    ``Orientation.Orientation`` for symmetric shapes."""
    groups, inverse, g_region, g_col = col_group
    dr = lr - cr[reg.index]
    mu = np.zeros((reg.n, 4, 4))
    dc = g_col - cc[g_region]
    dr_p = np.ones_like(dr)
    for p in range(order + 1):
        col_sums = np.bincount(inverse, weights=w * dr_p, minlength=groups)
        dc_q = np.ones_like(dc)
        for q in range(order + 1 - p):
            mu[:, p, q] = np.bincount(g_region, weights=col_sums * dc_q, minlength=reg.n)
            dc_q = dc_q * dc
        dr_p = dr_p * dr
    return mu


def _central_moments(reg: Regions, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central moments mu[p, q] (p: row power, q: column power) of each region, (n, 4, 4), and the (weighted)
    centroid in image coordinates, as regionprops computes them: in box-local coordinates."""
    w = np.ones(len(reg.rows)) if weights is None else weights
    box = reg.box()
    lr = (reg.rows - box[reg.index, 0]).astype(np.float64)
    lc = reg.cols - box[reg.index, 1]
    # (region, local column) groups
    key = reg.index * (int(lc.max(initial=0)) + 1) + lc
    uniq, inverse = np.unique(key, return_inverse=True)
    g_region = uniq // (int(lc.max(initial=0)) + 1)
    col_group = (len(uniq), inverse.ravel(), g_region, (uniq % (int(lc.max(initial=0)) + 1)).astype(np.float64))
    zero = np.zeros(reg.n)
    raw = _moments(reg, col_group, lr, lc, w, zero, zero, order=1)  # mass and first moments: the centroid
    cr, cc = raw[:, 1, 0] / raw[:, 0, 0], raw[:, 0, 1] / raw[:, 0, 0]
    if weights is None:  # regionprops' unweighted centroid is a mean of integer coordinates: exact
        cr = reg.sum(lr) / raw[:, 0, 0]
        cc = reg.sum(lc.astype(np.float64)) / raw[:, 0, 0]
    mu = _moments(reg, col_group, lr, lc, w, cr, cc)
    return mu, cr + box[:, 0], cc + box[:, 1]


def _normalized(mu: np.ndarray) -> np.ndarray:
    nu = np.full_like(mu, np.nan)
    m0 = mu[:, 0, 0]
    for p in range(4):
        for q in range(4):
            if 2 <= p + q:
                nu[:, p, q] = mu[:, p, q] / m0 ** ((p + q) / 2 + 1)
    return nu


def hu_moments(nu: np.ndarray) -> np.ndarray:
    """Hu's seven invariants of normalised central moments (n, 4, 4), as ``skimage.measure.moments_hu``."""
    t0 = nu[:, 3, 0] + nu[:, 1, 2]
    t1 = nu[:, 2, 1] + nu[:, 0, 3]
    q0 = t0 * t0
    q1 = t1 * t1
    n4 = 4 * nu[:, 1, 1]
    s = nu[:, 2, 0] + nu[:, 0, 2]
    d = nu[:, 2, 0] - nu[:, 0, 2]
    hu = np.zeros((len(nu), 7))
    hu[:, 0] = s
    hu[:, 1] = d * d + n4 * nu[:, 1, 1]
    hu[:, 3] = q0 + q1
    hu[:, 5] = d * (q0 - q1) + n4 * t0 * t1
    t0 = t0 * (q0 - 3 * q1)
    t1 = t1 * (3 * q0 - q1)
    q0 = nu[:, 3, 0] - 3 * nu[:, 1, 2]
    q1 = 3 * nu[:, 2, 1] - nu[:, 0, 3]
    hu[:, 2] = q0 * q0 + q1 * q1
    hu[:, 4] = q0 * t0 + q1 * t1
    hu[:, 6] = q1 * t0 - q0 * t1
    return hu


_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2


def perimeters(labels: np.ndarray, reg: Regions) -> np.ndarray:
    """``skimage.measure.perimeter(region, 4)`` of every region: its border pixels (a 4-neighbour outside the
    region) weighted by how their border neighbours lie (1 per straight step, √2 per diagonal)."""
    lab = np.pad(np.asarray(labels), 1)
    h, w = labels.shape
    centre = lab[1:h + 1, 1:w + 1]

    def shifted(dr, dc):
        return lab[1 + dr:h + 1 + dr, 1 + dc:w + 1 + dc]

    inner = centre > 0
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        inner &= shifted(dr, dc) == centre
    border = (centre > 0) & ~inner
    bpad = np.pad(border, 1)

    def border_same(dr, dc):  # the neighbour is a border pixel of the same region
        return bpad[1 + dr:h + 1 + dr, 1 + dc:w + 1 + dc] & (shifted(dr, dc) == centre)

    code = border.astype(np.int64)
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        code += 2 * border_same(dr, dc)
    for dr, dc in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
        code += 10 * border_same(dr, dc)
    br, bc = np.nonzero(border)
    return np.bincount(reg.index_of[labels[br, bc]], weights=_PERIMETER_WEIGHTS[code[br, bc]], minlength=reg.n)


def _row_ends(reg: Regions):
    """The first and last column of every (region, row), box-local, as dense (regions, rows of the tallest box)
    arrays; a row a region does not reach has first = the int64 maximum and last = -1."""
    box = reg.box()
    lr, lc = reg.rows - box[reg.index, 0], reg.cols - box[reg.index, 1]
    span = int(lr.max()) + 1
    key = reg.index * span + lr
    first = np.full(reg.n * span, np.iinfo(np.int64).max)
    last = np.full(reg.n * span, -1)
    np.minimum.at(first, key, lc)
    np.maximum.at(last, key, lc)
    return first.reshape(reg.n, span), last.reshape(reg.n, span)


def _envelope(group: np.ndarray, y: np.ndarray, x: np.ndarray, left: bool):
    """The convex envelope of one chain of points per group (sorted by group, then strictly by y): the left
    side of each group's convex hull (``left``) or its right side. A point on or inside the chord of its two
    neighbours is no vertex of its group's envelope (a vertex lies strictly outside every chord that spans it),
    so all such points go at once, again until none is left; what stays is the envelope's vertices."""
    sign = 1 if left else -1
    while True:
        inner = np.r_[False, (group[1:-1] == group[:-2]) & (group[1:-1] == group[2:]), False]
        i = np.flatnonzero(inner)
        dy = y[i + 1] - y[i - 1]
        chord = x[i - 1] * dy + (x[i + 1] - x[i - 1]) * (y[i] - y[i - 1])  # the chord's x at y[i], times dy
        drop = sign * (x[i] * dy - chord) >= 0
        if not drop.any():
            return group, y, x
        keep = np.ones(len(y), bool)
        keep[i[drop]] = False
        group, y, x = group[keep], y[keep], x[keep]


def _chain_columns(group, y, x, n: int, span: int, left: bool) -> np.ndarray:
    """(n, span): for every pixel row r (y = 2r in half pixels) the first (``left``) or last pixel column whose
    centre lies on the right side of (or on) the chain's segments, exactly, in integer arithmetic."""
    seg = np.flatnonzero(group[1:] == group[:-1])
    y1, y2, x1, x2, g = y[seg], y[seg + 1], x[seg], x[seg + 1], group[seg]
    r_lo, r_hi = -((-y1) // 2), y2 // 2  # pixel rows whose centre the segment spans (y1 < y2)
    count = np.maximum(r_hi - r_lo + 1, 0)
    e = np.repeat(np.arange(len(seg)), count)
    r = r_lo[e] + (np.arange(len(e)) - np.repeat(np.cumsum(count) - count, count))
    dy = (y2 - y1)[e]
    num = x1[e] * dy + (x2 - x1)[e] * (2 * r - y1[e])  # the segment's x at row r is num / dy (half pixels)
    out = np.full(n * span, np.iinfo(np.int64).max if left else np.iinfo(np.int64).min)
    if left:  # column c is at 2c: the first column at or right of x is ceil(x / 2)
        np.minimum.at(out, g[e] * span + r, -((-num) // (2 * dy)))
    else:
        np.maximum.at(out, g[e] * span + r, num // (2 * dy))
    return out.reshape(n, span)


def convex_areas(labels: np.ndarray, reg: Regions) -> np.ndarray:
    """Pixels of each region's convex hull image, as ``skimage.morphology.convex_hull_image`` (hull of the pixel
    edges' midpoints, then every pixel centre inside or on it), for all regions at once without a loop over
    them (one Qhull call and one point-in-polygon grid per region cost ~0.1 ms a nucleus).

    The hull's left side is the convex envelope of the leftmost midpoint at each half-pixel height (the left
    edge of each row's first pixel; between two rows the nearer of their first pixels' bottom and top edges),
    its right side likewise; ``_envelope`` finds both for every region together, and the centres between them
    are counted row by row in integer half-pixel arithmetic, so a centre exactly on the hull is counted as
    ``grid_points_in_poly`` counts it. ``tests/test_morphometry.py`` compares every region with skimage."""
    out = np.zeros(reg.n)
    if not reg.n:
        return out
    first, last = _row_ends(reg)
    n, span = first.shape
    big = np.iinfo(np.int64).max
    has = last >= 0
    # height index h = y + 1 for y = -1 .. 2 span - 1 (half pixels): row r's edges at y = 2r ± 1, its centre 2r
    f = np.full((n, 2 * span + 1), big)
    f[:, 1::2] = np.where(has, 2 * first - 1, big)
    top_bottom = np.where(has, 2 * first, big)
    f[:, 0:-1:2] = top_bottom
    f[:, 2::2] = np.minimum(f[:, 2::2], top_bottom)
    g = np.full((n, 2 * span + 1), -big)
    g[:, 1::2] = np.where(has, 2 * last + 1, -big)
    top_bottom = np.where(has, 2 * last, -big)
    g[:, 0:-1:2] = top_bottom
    g[:, 2::2] = np.maximum(g[:, 2::2], top_bottom)
    lo = _chain_columns(*_envelope(*_points(f != big, f), left=True), n, span, left=True)
    hi = _chain_columns(*_envelope(*_points(g != -big, g), left=False), n, span, left=False)
    inside = (lo != big) & (hi != np.iinfo(np.int64).min)
    width = np.where(inside, np.maximum(hi - lo + 1, 0), 0)
    return width.sum(axis=1).astype(np.float64)


def _points(where: np.ndarray, values: np.ndarray):
    """(group, y, x) of the set cells of a dense (groups, heights) array, sorted by group, then y."""
    group, h = np.nonzero(where)
    return group, h - 1, values[group, h]


def fractal_dimensions(reg: Regions) -> np.ndarray:
    """HistomicsTK's box-counting dimension of every region's mask (its box crop), as HistomicsTK computes it
    region by region (that form is ``fractal_dimension`` in ``tests/test_morphometry.py``): the blocks of side
    2^j (j from the largest power of two in the box's shorter side down to 2, anchored at the box's corner)
    that the region covers partly, counted for every region at once from its pixels; the slope of log(count)
    against log(side) in closed form. Where that fit is not a plain line fit (one size, or a size with no
    partly covered block: log 0), the region goes through HistomicsTK's own ``np.polyfit``
    (``_fractal_from_counts``), so those cases keep its exact value."""
    out = np.full(reg.n, -0.0)
    if not reg.n:
        return out
    box = reg.box()
    shorter = np.minimum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1])
    # the exponent as HistomicsTK computes it, in the same floating-point steps, once per distinct side
    top = {int(p): int(np.log(2 ** np.floor(np.log(p) / np.log(2))) / np.log(2)) for p in np.unique(shorter)}
    n_exp = np.array([top[int(p)] for p in shorter])
    lr, lc = reg.rows - box[reg.index, 0], reg.cols - box[reg.index, 1]
    height, width = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    top_j = int(n_exp.max())
    counts = np.zeros((reg.n, top_j + 1))  # column j: blocks of side 2^j partly covered
    ri, pixel_exp = reg.index, n_exp[reg.index]
    for j in range(2, top_j + 1):  # the pixels of the regions that use side 2^j (fewer as j grows)
        k = 1 << j
        use = np.flatnonzero(pixel_exp >= j)
        ri, lr, lc, pixel_exp = ri[use], lr[use], lc[use], pixel_exp[use]
        bh, bw = -(-height // k), -(-width // k)
        bh, bw = np.where(n_exp >= j, bh, 0), np.where(n_exp >= j, bw, 0)
        offset = np.r_[0, np.cumsum(bh * bw)[:-1]]
        block = offset[ri] + (lr >> j) * bw[ri] + (lc >> j)
        filled = np.bincount(block, minlength=int((bh * bw).sum()))
        partly = (filled > 0) & (filled < k * k)
        counts[:, j] = np.bincount(np.repeat(np.arange(reg.n), bh * bw), weights=partly, minlength=reg.n)
    for n in np.unique(n_exp[n_exp >= 2]):
        members = np.flatnonzero(n_exp == n)
        sizes = 2.0 ** np.arange(n, 1, -1)
        c = counts[members][:, n:1:-1]
        plain = (c > 0).all(axis=1) if n >= 3 else np.zeros(len(members), bool)
        for i in members[~plain]:  # one size, or log 0: np.polyfit's own answer
            out[i] = _fractal_from_counts(sizes, counts[i, n:1:-1])
        if plain.any():
            x = np.log(sizes)
            xm = x - x.mean()
            y = np.log(c[plain])
            out[members[plain]] = -((y - y.mean(axis=1, keepdims=True)) * xm).sum(axis=1) / (xm * xm).sum()
    return out


def _fractal_from_counts(sizes: np.ndarray, counts: np.ndarray) -> float:
    """HistomicsTK's fit of the box-counting dimension (``np.polyfit`` of log count on log size), on counts
    already made."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(-np.polyfit(np.log(sizes), np.log(counts), 1)[0])
        except (TypeError, ValueError, np.linalg.LinAlgError):
            return -0.0


def centroids(reg: Regions, intensity: np.ndarray) -> tuple:
    """Central moments and centroids, plain and intensity-weighted: (mu, cy, cx, mu_w, wy, wx)."""
    mu, cy, cx = _central_moments(reg, None)
    mu_w, wy, wx = _central_moments(reg, np.asarray(intensity, dtype=np.float64)[reg.rows, reg.cols])
    return mu, cy, cx, mu_w, wy, wx


def morphometry(labels: np.ndarray, reg: Regions, intensity: np.ndarray, shape: bool = True) -> dict[str, np.ndarray]:
    """HistomicsTK's morphometry columns for every region (``Orientation.Orientation``, ``Size.*``, ``Shape.*``
    but the Fourier descriptors), plus the centroids, one array per column in region order."""
    mu, cy, cx, mu_w, wy, wx = centroids(reg, intensity)
    if not shape:  # identifiers only: no hulls, perimeters or box counting for families that do not use them
        return {"Identifier.CentroidX": cx, "Identifier.CentroidY": cy,
                "Identifier.WeightedCentroidX": wx, "Identifier.WeightedCentroidY": wy}
    m0 = mu[:, 0, 0]
    area = m0
    # inertia tensor as skimage builds it: [[mu02, -mu11], [-mu11, mu20]] / mu00
    a, b, c = mu[:, 0, 2] / m0, -mu[:, 1, 1] / m0, mu[:, 2, 0] / m0
    tensor = np.stack([np.stack([a, b], -1), np.stack([b, c], -1)], -2)
    ev = np.clip(np.linalg.eigvalsh(tensor), 0, None)[:, ::-1]  # descending
    major, minor = 4 * np.sqrt(ev[:, 0]), 4 * np.sqrt(ev[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(ev[:, 0] == 0, 0.0, np.sqrt(1 - ev[:, 1] / ev[:, 0]))
        orient = np.where(a - c == 0, np.where(b < 0, math.pi / 4, -math.pi / 4), 0.5 * np.arctan2(-2 * b, c - a))
        perim = perimeters(labels, reg)
        hull = convex_areas(labels, reg)
        box = reg.box()
        box_area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        out = {
            "Identifier.CentroidX": cx, "Identifier.CentroidY": cy,
            "Identifier.WeightedCentroidX": wx, "Identifier.WeightedCentroidY": wy,
            "Orientation.Orientation": orient, "Size.Area": area, "Size.ConvexHullArea": hull,
            "Size.MajorAxisLength": major, "Size.MinorAxisLength": minor, "Size.Perimeter": perim,
            "Shape.Circularity": 4 * math.pi * area / np.where(perim > 0, perim ** 2, 1),
            "Shape.Eccentricity": ecc, "Shape.EquivalentDiameter": (4 * area / math.pi) ** 0.5,
            "Shape.Extent": area / box_area,
            "Shape.FractalDimension": fractal_dimensions(reg),
            "Shape.MinorMajorAxisRatio": np.where(major > 0, minor / major, 1.0), "Shape.Solidity": area / hull,
        }
    hu = hu_moments(_normalized(mu))
    hu_w = hu_moments(_normalized(mu_w))
    for k in range(7):
        out[f"Shape.HuMoments{k + 1}"] = hu[:, k]
    for k in range(7):
        out[f"Shape.WeightedHuMoments{k + 1}"] = hu_w[:, k]
    return out
