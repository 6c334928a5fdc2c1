"""Moore-neighbour boundary tracing, as HistomicsTK 1.4.0's ``trace_object_boundaries`` (8-connectivity,
no spur removal) does it: the Fourier shape descriptors depend on the exact boundary sequence (its start
pixel, its direction, where it stops), so this follows the same steps.

The tracer looks at the 3x3 neighbourhood of the current pixel turned so that the walking direction points
"up", takes the first foreground pixel in the order back-left, left, front-left, front, front-right, right,
back-right, back, and turns the step and the direction back into image coordinates. It stops when the last two
pixels repeat the first two.
"""

from __future__ import annotations

import math

import numpy as np

# positions in the turned 3x3 window, in search order, with the step (oX, oY) and new direction (dX, dY)
# each choice gives in the turned frame
_ROW = (2, 1, 0, 0, 0, 1, 2, 2)
_COL = (0, 0, 0, 1, 2, 2, 2, 1)
_DX = (-1, 0, 0, 1, 1, 0, 0, -1)
_DY = (0, -1, -1, 0, 0, 1, 1, 0)
_OX = (-1, -1, -1, 0, 1, 1, 1, 0)
_OY = (1, 0, -1, -1, -1, 0, 1, 1)


def _rot_cw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(a, -1))


def trace_boundary(mask: np.ndarray, max_length: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
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
            if h[_ROW[k], _COL[k]] == 1:
                move = k
                break
        cx, cy = _OX[move], _OY[move]
        s, c = math.sin(angle), math.cos(angle)
        bx.append(bx[-1] + int(round(c * cx - s * cy)))
        by.append(by[-1] + int(round(s * cx + c * cy)))
        ndx, ndy = _DX[move], _DY[move]
        dx, dy = int(round(c * ndx - s * ndy)), int(round(s * ndx + c * ndy))
        n = len(bx)
        if n > 3 and (n > max_length or (bx[-1] == bx[1] and bx[-2] == bx[0] and by[-1] == by[1] and by[-2] == by[0])):
            bx.pop()
            by.pop()
            break
    return np.asarray(by), np.asarray(bx)
