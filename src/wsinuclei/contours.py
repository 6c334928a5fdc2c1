"""Nuclear contours from the mask head's small per-box masks.

The mask head gives each detection an M x M probability grid over its own box (M = 14 for the shipped
model). Instead of pasting every grid into a full-tile image (torchvision's way: gigabytes for a dense tile),
each grid is traced where it is: marching squares at probability 0.5 on the padded grid (sub-pixel, so the
outline is smooth although the grid is coarse), mapped into the box, and simplified.
"""

from __future__ import annotations

import numpy as np


def polygon_area(poly: np.ndarray) -> float:
    """Area of a simple polygon (N, 2) by the shoelace formula, in its own units squared."""
    p = np.asarray(poly, dtype=np.float64)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def box_polygon(box) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def mask_to_polygon(prob: np.ndarray, box, level: float = 0.5, tolerance: float = 0.4) -> np.ndarray:
    """The outline (N, 2 of x, y) of one nucleus from its M x M probability grid over ``box``
    (x0, y0, x1, y1). The largest closed contour is kept; a grid that never reaches ``level`` gives the box
    itself. ``tolerance`` (px) is the Douglas-Peucker simplification: a 40-px nucleus keeps ~15-30 vertices."""
    from skimage.measure import approximate_polygon, find_contours

    prob = np.asarray(prob, dtype=np.float64)
    m_h, m_w = prob.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    if prob.max() < level or x1 <= x0 or y1 <= y0:
        return box_polygon(box)
    contours = find_contours(np.pad(prob, 1), level)  # padded: every contour closes
    best = max(contours, key=lambda c: polygon_area(c))
    rows, cols = best[:, 0] - 1, best[:, 1] - 1  # grid coordinates; cell i covers [i, i+1) of M over the box
    sx, sy = (x1 - x0) / m_w, (y1 - y0) / m_h
    poly = np.stack([x0 + (cols + 0.5) * sx, y0 + (rows + 0.5) * sy], axis=1)
    simple = approximate_polygon(poly, tolerance)
    if len(simple) >= 4:  # closed: the first vertex is repeated at the end
        poly = simple
    if np.allclose(poly[0], poly[-1]):
        poly = poly[:-1]
    return poly if len(poly) >= 3 else box_polygon(box)


def masks_to_polygons(masks: np.ndarray, boxes: np.ndarray, **kwargs) -> list[np.ndarray]:
    """:func:`mask_to_polygon` for (N, 1, M, M) or (N, M, M) grids and (N, 4) boxes."""
    masks = np.asarray(masks)
    if masks.ndim == 4:
        masks = masks[:, 0]
    return [mask_to_polygon(m, b, **kwargs) for m, b in zip(masks, np.asarray(boxes).reshape(-1, 4))]
