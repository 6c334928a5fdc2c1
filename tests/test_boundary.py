"""The boundary tracer (features/boundary.py, a table-driven walk) against a step-by-step port of HistomicsTK
1.4.0's ``trace_object_boundaries`` that turns the 3x3 window at every step, as HistomicsTK does: the same
pixels in the same order on thousands of shapes, ragged ones included. (The Fourier descriptors built on the
trace are checked against HistomicsTK's own values in test_features.py.)"""

import math

import numpy as np

from wsinuclei.features.boundary import trace_boundary

ROW = (2, 1, 0, 0, 0, 1, 2, 2)
COL = (0, 0, 0, 1, 2, 2, 2, 1)
DX = (-1, 0, 0, 1, 1, 0, 0, -1)
DY = (0, -1, -1, 0, 0, 1, 1, 0)
OX = (-1, -1, -1, 0, 1, 1, 1, 0)
OY = (1, 0, -1, -1, -1, 0, 1, 1)


def _rot_cw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(a, -1))


def _reference_trace(mask: np.ndarray, max_length: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Boundary of the one object in ``mask`` (non-zero pixels; the caller pads it so the object does not
    touch the edge): (rows, columns) of the traced pixels, first pixel repeated at the end as HistomicsTK
    returns it. Empty arrays when no start pixel is found."""
    m = (np.asarray(mask) > 0).astype(np.int64)
    nrows, ncols = m.shape
    x_start = y_start = -1
    for i in range(1, nrows - 1):  # the first pixel in raster order that is not surrounded on its right/below
        row = m[i]
        for j in np.flatnonzero(row[1:ncols - 1]) + 1:
            if not (m[i, j + 1] == 0 and m[i + 1, j] == 0 and m[i + 1, j + 1] == 0 and m[i - 1, j + 1] == 0):
                x_start, y_start = int(j), i
                break
        if x_start >= 0:
            break
    if x_start < 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    m270 = _rot_cw(m)
    m180 = _rot_cw(m270)
    m90 = _rot_cw(m180)
    bx, by = [x_start], [y_start]
    if m.sum() <= 1:
        return np.asarray(by), np.asarray(bx)
    dx, dy = 1, 0
    while True:
        x, y = bx[-1], by[-1]
        if dx == 1 and dy == 0:
            h = m90[ncols - x - 2:ncols - x + 1, y - 1:y + 2]
            angle = math.pi / 2
        elif dx == 0 and dy == -1:
            h = m[y - 1:y + 2, x - 1:x + 2]
            angle = 0.0
        elif dx == -1 and dy == 0:
            h = m270[x - 1:x + 2, nrows - y - 2:nrows - y + 1]
            angle = 3 * math.pi / 2
        else:
            h = m180[nrows - y - 2:nrows - y + 1, ncols - x - 2:ncols - x + 1]
            angle = math.pi
        move = 0
        for k in range(8):
            if h[ROW[k], COL[k]] == 1:
                move = k
                break
        cx, cy = OX[move], OY[move]
        s, c = math.sin(angle), math.cos(angle)
        bx.append(bx[-1] + int(round(c * cx - s * cy)))
        by.append(by[-1] + int(round(s * cx + c * cy)))
        ndx, ndy = DX[move], DY[move]
        dx, dy = int(round(c * ndx - s * ndy)), int(round(s * ndx + c * ndy))
        n = len(bx)
        if n > 3 and (n > max_length or (bx[-1] == bx[1] and bx[-2] == bx[0] and by[-1] == by[1] and by[-2] == by[0])):
            bx.pop()
            by.pop()
            break
    return np.asarray(by), np.asarray(bx)


def test_table_walk_is_the_step_by_step_trace():
    from skimage.draw import ellipse

    rng = np.random.default_rng(0)
    points = 0
    for t in range(600):
        m = np.zeros((40, 40), np.int64)
        if t % 2:
            m[5:35, 5:35] = rng.uniform(size=(30, 30)) > rng.uniform(0.2, 0.7)
        else:
            m[ellipse(20, 20, rng.uniform(1, 15), rng.uniform(1, 15), rotation=rng.uniform(0, 3))] = 1
        expected = _reference_trace(m)
        got = trace_boundary(m)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected)), t
        points += len(expected[0])
    assert points > 40000


def test_degenerate_masks():
    assert [len(a) for a in trace_boundary(np.zeros((5, 5)))] == [0, 0]
    one = np.zeros((5, 5))
    one[2, 2] = 1
    assert [len(a) for a in trace_boundary(one)] == [0, 0]  # no neighbour: no start pixel, as HistomicsTK
    pair = np.zeros((5, 5))
    pair[2, 2:4] = 1
    rows, cols = trace_boundary(pair)
    assert rows.tolist() == [2, 2, 2] and cols.tolist() == [2, 3, 2]
