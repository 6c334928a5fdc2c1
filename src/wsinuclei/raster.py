"""Polygons painted into a label image, all at once: the pixels ``skimage.draw.polygon`` gives for each polygon,
without its per-polygon call.

A tile holds hundreds of nuclei; ``skimage.draw.polygon`` tests every pixel of each polygon's box in compiled
code, but the Python call, its array conversions and the fancy-index painting cost ~0.1 ms a nucleus. Here every polygon's edges are crossed with every
pixel row they span in one set of array operations, following scikit-image's ``point_in_polygon`` (O'Rourke's
ray crossing): a pixel is painted when it is a vertex (within 1e-12), or when its count of crossings to the
right (edges with one end above the row and the other at or below it, crossing right of the pixel) or to the
left (one end below, the other at or above, crossing left of it) is odd; the latter two differ on an edge,
which also counts. Crossings are found in closed form; where one falls within 1e-9 of a pixel centre, the pixel
is decided by scikit-image's own float64 expression, ``(x0 * y1 - x1 * y0) / (y1 - y0)``, so each pixel comes
out as there. ``tests/test_raster.py`` compares the two on random, degenerate and integer-vertex polygons.
"""

from __future__ import annotations

import numpy as np


def _crossings(yv, xv, j, poly, h, above: bool):
    """Per (polygon, row) the integer bounds of the pixels each crossing edge puts on its side, for the edges that
    straddle the row with one end above it (``above``: the other end at or below, the right-crossing rule) or
    below it (the other at or above, the left-crossing rule). Returns polygon, row and bound arrays: for
    ``above`` the largest x the crossing lies right of, else the smallest x it lies left of."""
    yi, yj, xi, xj = yv, yv[j], xv, xv[j]
    ok = np.isfinite(yi) & np.isfinite(yj) & np.isfinite(xi) & np.isfinite(xj)
    lo_y, hi_y = np.minimum(yi, yj), np.maximum(yi, yj)
    if above:  # (yi > y) != (yj > y): min <= y < max
        lo, hi = np.ceil(lo_y), np.ceil(hi_y) - 1
    else:  # (yi < y) != (yj < y): min < y <= max
        lo, hi = np.floor(lo_y) + 1, np.floor(hi_y)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, h - 1)
    count = np.where(ok, np.maximum(hi - lo + 1, 0), 0).astype(np.int64)
    e = np.repeat(np.arange(len(yv)), count)
    y = lo[e] + (np.arange(len(e)) - np.repeat(np.cumsum(count) - count, count))
    yi, yj, xi, xj = yi[e], yj[e], xi[e], xj[e]
    x = xi + (xj - xi) * (y - yi) / (yj - yi)  # the edge's x on the row (closed form)
    near = np.rint(x)
    close = np.abs(x - near) < 1e-9
    # scikit-image's sign at the pixel nearest the crossing, where the closed form cannot tell
    x0, y0, x1, y1 = xi - near, yi - y, xj - near, yj - y
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (x0 * y1 - x1 * y0) / (y1 - y0)
    if above:  # pixel x counts when the crossing is right of it (value > 0): x <= bound
        bound = np.where(close, np.where(value > 0, near, near - 1), np.ceil(x) - 1)
    else:  # pixel x counts when the crossing is left of it (value < 0): x >= bound
        bound = np.where(close, np.where(value < 0, near, near + 1), np.floor(x) + 1)
    return poly[e], y.astype(np.int64), bound.astype(np.int64)


def _runs(p, y, bound, h: int, above: bool):
    """Pixel runs (polygon, row, first column, last column) where an odd number of crossings count."""
    key = p * h + y
    lo = bound.min() if len(bound) else 0
    order = np.argsort(key * (bound.max() - lo + 1 if len(bound) else 1) + (bound - lo))  # by key, then bound
    key, bound = key[order], bound[order]
    start = np.r_[True, key[1:] != key[:-1]]
    rank = np.arange(len(key)) - np.maximum.accumulate(np.where(start, np.arange(len(key)), 0))
    a = np.flatnonzero(rank % 2 == 0)
    a = a[(a + 1 < len(key))]
    a = a[key[a + 1] == key[a]]  # pairs within one (polygon, row); a ring crosses a row an even number of times
    if above:  # count of bounds >= x is odd: bound[a] < x <= bound[a + 1]
        c0, c1 = bound[a] + 1, bound[a + 1]
    else:  # count of bounds <= x is odd: bound[a] <= x < bound[a + 1]
        c0, c1 = bound[a], bound[a + 1] - 1
    return key[a] // h, key[a] % h, c0, c1


def fill_polygons(rows, cols, shape: tuple[int, int], values=None) -> np.ndarray:
    """A label image (int32) of ``shape`` with polygon k (vertex arrays ``rows[k]``, ``cols[k]``, in pixel
    units as ``skimage.draw.polygon`` takes them) painted with ``values[k]`` (default k + 1), the later polygon
    winning where two overlap; 0 elsewhere. ``rows``/``cols`` are sequences of 1-D arrays or (N, K) arrays."""
    h, w = int(shape[0]), int(shape[1])
    labels = np.zeros((h, w), np.int32)
    n = len(rows)
    if n == 0 or h == 0 or w == 0:
        return labels
    values = np.arange(1, n + 1) if values is None else np.asarray(values)
    lengths = np.array([len(r) for r in rows])
    yv = np.concatenate([np.asarray(r, np.float64).ravel() for r in rows])
    xv = np.concatenate([np.asarray(c, np.float64).ravel() for c in cols])
    poly = np.repeat(np.arange(n), lengths)
    # edge (i, j): vertex i and the one before it, the first vertex's edge closing the ring (j = last vertex)
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    i = np.arange(len(yv))
    j = i - 1
    j[starts[lengths > 0]] = (starts + lengths - 1)[lengths > 0]
    runs = [_runs(*_crossings(yv, xv, j, poly, h, above), h, above) for above in (True, False)]
    # vertices on a pixel centre (within 1e-12) are painted too
    vy, vx = np.rint(yv), np.rint(xv)
    on = (np.abs(yv - vy) < 1e-12) & (np.abs(xv - vx) < 1e-12) & (vy >= 0) & (vy < h) & (vx >= 0) & (vx < w)
    vert = (poly[on], vy[on].astype(np.int64), vx[on].astype(np.int64), vx[on].astype(np.int64))
    p, r, c0, c1 = (np.concatenate(parts) for parts in zip(*runs, vert))
    c0, c1 = np.maximum(c0, 0), np.minimum(c1, w - 1)
    run = np.maximum(c1 - c0 + 1, 0)
    pix_run = np.repeat(np.arange(len(p)), run)
    col = c0[pix_run] + (np.arange(len(pix_run)) - np.repeat(np.cumsum(run) - run, run))
    flat = r[pix_run] * w + col
    # the later polygon wins: paint the rank of each polygon by maximum, then map ranks to values
    painted = np.zeros(h * w, np.int64)
    np.maximum.at(painted, flat, p[pix_run] + 1)
    nonzero = painted > 0
    labels.ravel()[nonzero] = values[painted[nonzero] - 1]
    return labels
