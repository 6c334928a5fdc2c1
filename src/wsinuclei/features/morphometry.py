"""Morphometry of every labelled region at once: the values scikit-image's ``regionprops`` gives (which
HistomicsTK takes), from per-pixel sums over the whole label image instead of one Python object per region.

``regionprops`` costs about 2 ms a nucleus in Python overhead (a property object, a crop, a dozen small
``einsum`` calls); a tile holds hundreds of nuclei. Here moments, perimeter, axes and Hu moments come from
``np.bincount`` over all pixels together; only the convex hull and the box-counting dimension loop over regions,
on small crops. ``tests/test_features.py`` holds these to HistomicsTK's own values (rtol 1e-9) and
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


def convex_areas(labels: np.ndarray, reg: Regions) -> np.ndarray:
    """Pixels of each region's convex hull image, as ``skimage.morphology.convex_hull_image`` (hull of the pixel
    edges' midpoints, then every pixel centre inside or on it). The hull's vertices are extreme pixels, so the
    first and last pixel of each row of a region are all it needs."""
    from scipy.spatial import ConvexHull, QhullError
    from skimage.measure import grid_points_in_poly

    out = np.zeros(reg.n)
    if not reg.n:
        return out
    # first and last pixel of every (region, row), in box-local coordinates
    box = reg.box()
    lr, lc = reg.rows - box[reg.index, 0], reg.cols - box[reg.index, 1]
    span = int(max(lr.max(), lc.max())) + 2
    key = reg.index * span + lr
    order = np.lexsort((lc, key))
    key, lr, lc, idx = key[order], lr[order], lc[order], reg.index[order]
    first = np.r_[True, key[1:] != key[:-1]]
    last = np.r_[key[1:] != key[:-1], True]
    ends = first | last
    idx, lr, lc = idx[ends], lr[ends], lc[ends]
    # the midpoints of their four edges, in half-pixel units (integers), each point once
    pr = (2 * lr[:, None] + np.array([-1, 1, 0, 0])).ravel()
    pc = (2 * lc[:, None] + np.array([0, 0, -1, 1])).ravel()
    pi = np.repeat(idx, 4)
    side = 2 * span + 2
    uniq = np.unique((pi * side + pr + 1) * side + pc + 1)
    pi, rem = np.divmod(uniq, side * side)
    pr, pc = rem // side - 1, rem % side - 1
    bounds = np.r_[0, np.flatnonzero(pi[1:] != pi[:-1]) + 1, len(pi)]
    for k in range(len(bounds) - 1):
        s = slice(bounds[k], bounds[k + 1])
        i = pi[bounds[k]]
        try:
            hull = ConvexHull(np.stack([pr[s], pc[s]], 1) / 2.0)
        except QhullError:
            continue  # as skimage: no hull, an empty hull image
        rs, cs = reg.slices[i]
        grid = grid_points_in_poly((rs.stop - rs.start, cs.stop - cs.start), hull.points[hull.vertices],
                                   binarize=False)
        out[i] = np.count_nonzero(grid >= 1)
    return out


def fractal_dimension(image: np.ndarray) -> float:
    """HistomicsTK's box-counting dimension of a region's mask (its box crop)."""
    import warnings

    z = image > 0
    p = min(z.shape)
    n = int(np.log(2 ** np.floor(np.log(p) / np.log(2))) / np.log(2))
    sizes = 2 ** np.arange(n, 1, -1)
    counts = []
    for k in sizes:
        s = np.add.reduceat(np.add.reduceat(z, np.arange(0, z.shape[0], k), axis=0), np.arange(0, z.shape[1], k), axis=1)
        counts.append(len(np.where((s > 0) & (s < k * k))[0]))
    if not len(counts):
        return -0.0
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
            "Shape.FractalDimension": np.array([fractal_dimension(labels[s] == v) for s, v in zip(reg.slices, reg.labels)]),
            "Shape.MinorMajorAxisRatio": np.where(major > 0, minor / major, 1.0), "Shape.Solidity": area / hull,
        }
    hu = hu_moments(_normalized(mu))
    hu_w = hu_moments(_normalized(mu_w))
    for k in range(7):
        out[f"Shape.HuMoments{k + 1}"] = hu[:, k]
    for k in range(7):
        out[f"Shape.WeightedHuMoments{k + 1}"] = hu_w[:, k]
    return out
