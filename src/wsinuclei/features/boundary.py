"""Moore-neighbour boundary tracing, as HistomicsTK 1.4.0's ``trace_object_boundaries`` (8-connectivity,
no spur removal) does it: the Fourier shape descriptors depend on the exact boundary sequence (its start
pixel, its direction, where it stops), so this follows the same steps.

The tracer looks at the 3x3 neighbourhood of the current pixel turned so that the walking direction points
"up", takes the first foreground pixel in the order back-left, left, front-left, front, front-right, right,
back-right, back, and turns the step and the direction back into image coordinates. It stops when the last two
pixels repeat the first two. The turned windows are worked out once (``_TABLE``: for each walking direction, the
eight neighbours in image coordinates), so the walk is a plain loop over a flat list, about 4x faster than
turning the window at every step; ``tests/test_morphometry.py`` holds it to a step-by-step port.
"""

from __future__ import annotations

import math

import numpy as np

# in the turned frame, in search order: the step (oX, oY) to each neighbour (the pixel the window checks is the
# one the step lands on: window row oY + 1, column oX + 1) and the new direction (dX, dY) it gives
_DX = (-1, 0, 0, 1, 1, 0, 0, -1)
_DY = (0, -1, -1, 0, 0, 1, 1, 0)
_OX = (-1, -1, -1, 0, 1, 1, 1, 0)
_OY = (1, 0, -1, -1, -1, 0, 1, 1)


# the turned frame's angle for each walking direction (dx, dy), as HistomicsTK turns its window
_ANGLE = {(1, 0): math.pi / 2, (0, -1): 0.0, (-1, 0): 3 * math.pi / 2, (0, 1): math.pi}


def _turned(angle: float, x: int, y: int) -> tuple[int, int]:
    s, c = math.sin(angle), math.cos(angle)
    return int(round(c * x - s * y)), int(round(s * x + c * y))


def _search_table() -> dict:
    """For each walking direction, the eight candidates in search order, in image coordinates: the step to the
    neighbour (the pixel the turned window checks is the one the step lands on) and the direction after it."""
    table = {}
    for d, angle in _ANGLE.items():
        table[d] = [(_turned(angle, _OX[k], _OY[k]), _turned(angle, _DX[k], _DY[k])) for k in range(8)]
    return table


_TABLE = _search_table()


def trace_boundary(mask: np.ndarray, max_length: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Boundary of the one object in ``mask`` (non-zero pixels; the caller pads it so the object does not
    touch the edge): (rows, columns) of the traced pixels, first pixel repeated at the end as HistomicsTK
    returns it. Empty arrays when no start pixel is found."""
    m = np.asarray(mask) > 0
    nrows, ncols = m.shape
    # the first pixel in raster order (rows 1.., columns 1..ncols-2) with a neighbour on its right or below
    inner = m[1:nrows - 1, 1:ncols - 1]
    joined = (m[1:nrows - 1, 2:] | m[2:, 1:ncols - 1] | m[2:, 2:] | m[:nrows - 2, 2:])
    open_px = np.flatnonzero(inner & joined) if nrows > 2 and ncols > 2 else np.zeros(0, np.int64)
    if not len(open_px):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    y_start, x_start = divmod(int(open_px[0]), ncols - 2)
    y_start, x_start = y_start + 1, x_start + 1
    bx, by = [x_start], [y_start]
    if m.sum() <= 1:
        return np.asarray(by), np.asarray(bx)
    flat = m.ravel().tolist()  # Python list indexing: the walk below is a plain loop, one lookup per candidate
    steps = {d: [(sy * ncols + sx, sx, sy, nd) for (sx, sy), nd in cands] for d, cands in _TABLE.items()}
    d = (1, 0)
    x, y = x_start, y_start
    while True:
        pos = y * ncols + x
        cands = steps[d]
        move = cands[0]  # nothing found: HistomicsTK takes the first candidate
        for cand in cands:
            if flat[pos + cand[0]]:
                move = cand
                break
        x += move[1]
        y += move[2]
        d = move[3]
        bx.append(x)
        by.append(y)
        n = len(bx)
        if n > 3 and (n > max_length or (x == bx[1] and bx[-2] == bx[0] and y == by[1] and by[-2] == by[0])):
            bx.pop()
            by.pop()
            break
    return np.asarray(by), np.asarray(bx)
