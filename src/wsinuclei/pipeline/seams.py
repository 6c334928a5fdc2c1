"""Merging tiles: every detection is owned by the tile whose core holds its centre; a last NMS between
neighbouring tiles removes what is left on a seam."""

from __future__ import annotations

import numpy as np

from ..tiles import TileGrid
from .options import TileResult


def merge_seams(grid: TileGrid, results: dict[str, TileResult], iou_threshold: float = 0.5, with_tiles: bool = False):
    """Concatenate kept detections (boxes, scores and, for contour models, outlines) and remove duplicates
    across seams (with ``with_tiles``, also each survivor's tile key and its row in that tile's result, which
    is where its features are): NMS between each pair of
    neighbouring tiles only (right, below, below-left, below-right), over boxes within reach of the seam.

    Every kept box has its centre in its own tile's core, so a box of tile A can overlap a box of tile B only
    if it reaches into B's core grown by half of B's largest box: only those candidates are compared (a dense
    tile pair costs a few hundred boxes each side instead of a full 2,000 x 2,000 IoU matrix)."""
    from ..evaluate import box_iou

    by_tile = {k: r for k, r in results.items() if r.failed is None and len(r.boxes)}
    suppressed = {k: np.zeros(len(r.boxes), bool) for k, r in by_tile.items()}
    cores, reach = {}, {}
    for key, r in by_tile.items():
        row, col = (int(v) for v in key.split("_"))
        cores[key] = np.array(grid.tile_at(col, row).core, float)
        reach[key] = float(np.max(np.maximum(r.boxes[:, 2] - r.boxes[:, 0], r.boxes[:, 3] - r.boxes[:, 1]))) / 2

    def near(boxes, core, margin):
        x0, y0, x1, y1 = core[0] - margin, core[1] - margin, core[2] + margin, core[3] + margin
        return np.flatnonzero((boxes[:, 2] > x0) & (boxes[:, 0] < x1) & (boxes[:, 3] > y0) & (boxes[:, 1] < y1))

    for key, a in by_tile.items():
        row, col = (int(v) for v in key.split("_"))
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            nkey = f"{row + dr:05d}_{col + dc:05d}"
            if nkey not in by_tile:
                continue
            b = by_tile[nkey]
            ia = near(a.boxes, cores[nkey], reach[nkey])
            ib = near(b.boxes, cores[key], reach[key])
            if not len(ia) or not len(ib):
                continue
            iou = box_iou(a.boxes[ia], b.boxes[ib])
            for i, j in zip(*np.nonzero(iou > iou_threshold)):
                i, j = ia[i], ib[j]
                if suppressed[key][i] or suppressed[nkey][j]:
                    continue
                if a.scores[i] >= b.scores[j]:
                    suppressed[nkey][j] = True
                else:
                    suppressed[key][i] = True
    keys = sorted(by_tile)
    if not keys:
        empty = (np.zeros((0, 4)), np.zeros(0), None)
        return empty + (np.zeros(0, dtype=object), np.zeros(0, int)) if with_tiles else empty
    boxes = np.concatenate([by_tile[k].boxes[~suppressed[k]] for k in keys])
    scores = np.concatenate([by_tile[k].scores[~suppressed[k]] for k in keys])
    outlines = None
    if all(by_tile[k].outlines is not None for k in keys):
        outlines = np.concatenate([by_tile[k].outlines[~suppressed[k]] for k in keys])
    # a stable, executor-independent order: by row of centre, then column
    order = np.lexsort(((boxes[:, 0] + boxes[:, 2]), (boxes[:, 1] + boxes[:, 3])))
    merged = boxes[order], scores[order], (None if outlines is None else outlines[order])
    if not with_tiles:
        return merged
    tile_of = np.concatenate([np.full((~suppressed[k]).sum(), k, dtype=object) for k in keys])
    row_of = np.concatenate([np.flatnonzero(~suppressed[k]) for k in keys])
    return merged + (tile_of[order], row_of[order])
