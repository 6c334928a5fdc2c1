"""The tile grid at the model's µm/px, with overlapping tiles and non-overlapping cores.

Tiles are laid out in model pixels: along each axis, tile ``i`` starts at ``i * stride`` (stride = tile -
overlap) and is ``tile`` long (a tile may be wider than tall). Its *core*, the part it owns, is
``[i * stride + overlap / 2, (i + 1) * stride + overlap / 2)``,
with the first core reaching back to -inf and the last to +inf. Consecutive cores share their edges, so the
cores partition the plane: every point lies in exactly one. A detection belongs to the tile whose core holds
its centre, and since a core keeps ``overlap / 2`` from its tile's edges, any nucleus no wider than the
overlap is seen whole by the tile that keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    col: int
    row: int
    x: float  # top-left in base pixels
    y: float
    width: int  # in model pixels
    height: int
    core: tuple[float, float, float, float]  # x0, y0, x1, y1 in base pixels (may be +-inf at the slide edges)

    @property
    def key(self) -> str:
        return f"{self.row:05d}_{self.col:05d}"


class TileGrid:
    def __init__(self, width: int, height: int, scale: float, tile: int | tuple[int, int] = 1024, overlap: int = 64,
                 origin: tuple[float, float] = (0.0, 0.0)):
        """``width``/``height``: the area to cover in base pixels; ``scale``: base pixels per model pixel;
        ``tile``: the tile's side in model pixels, or its (width, height); ``origin``: base-pixel position of the
        area's top-left (an ROI)."""
        tile_w, tile_h = (tile, tile) if isinstance(tile, (int, np.integer)) else tile
        if min(tile_w, tile_h) <= 0 or overlap < 0 or overlap >= min(tile_w, tile_h):
            raise ValueError(f"need 0 <= overlap < tile (got tile {tile}, overlap {overlap})")
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.width, self.height, self.scale = width, height, scale
        self.tile_w, self.tile_h, self.overlap = int(tile_w), int(tile_h), overlap
        self.stride_x, self.stride_y = self.tile_w - overlap, self.tile_h - overlap
        self.origin = origin
        wm, hm = width / scale, height / scale  # extent in model pixels
        self.cols = max(1, math.ceil((wm - overlap) / self.stride_x))
        self.rows = max(1, math.ceil((hm - overlap) / self.stride_y))

    def __len__(self) -> int:
        return self.cols * self.rows

    def _core_edges(self, i: int, n: int, stride: int) -> tuple[float, float]:
        lo = -math.inf if i == 0 else i * stride + self.overlap / 2
        hi = math.inf if i == n - 1 else (i + 1) * stride + self.overlap / 2
        return lo, hi

    def tile_at(self, col: int, row: int) -> Tile:
        s, (ox, oy) = self.scale, self.origin
        cx0, cx1 = self._core_edges(col, self.cols, self.stride_x)
        cy0, cy1 = self._core_edges(row, self.rows, self.stride_y)
        return Tile(col, row, ox + col * self.stride_x * s, oy + row * self.stride_y * s, self.tile_w, self.tile_h,
                    (ox + cx0 * s, oy + cy0 * s, ox + cx1 * s, oy + cy1 * s))

    def __iter__(self):
        for row in range(self.rows):
            for col in range(self.cols):
                yield self.tile_at(col, row)

    def owner(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(col, row) of the core holding each base-pixel point, vectorised; the same rule as the cores."""
        xm = (np.asarray(x, dtype=np.float64) - self.origin[0]) / self.scale
        ym = (np.asarray(y, dtype=np.float64) - self.origin[1]) / self.scale
        col = np.floor((xm - self.overlap / 2) / self.stride_x).astype(np.int64).clip(0, self.cols - 1)
        row = np.floor((ym - self.overlap / 2) / self.stride_y).astype(np.int64).clip(0, self.rows - 1)
        return col, row

    def clipped_core(self, t: Tile) -> tuple[float, float, float, float]:
        """The tile's core cut to the covered area (finite), in base pixels."""
        ox, oy = self.origin
        x0, y0, x1, y1 = t.core
        return max(x0, ox), max(y0, oy), min(x1, ox + self.width), min(y1, oy + self.height)
