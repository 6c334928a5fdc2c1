"""Seam merging: duplicates across neighbouring tiles are removed, comparing only boxes within reach of the
seam, with the same result as comparing every box of both tiles."""

import numpy as np

from wsinuclei.evaluate import box_iou
from wsinuclei.pipeline import TileResult, merge_seams
from wsinuclei.tiles import TileGrid


def _tile_results(grid, rng, per_tile=300, dup_share=0.3):
    """Boxes owned by each tile's core, plus near-copies of some boxes close to a seam, owned by the neighbour
    (what two tiles both seeing one nucleus on their seam can give when the centre shifts across the seam)."""
    results = {}
    tiles = list(grid)
    for t in tiles:
        x0, y0, x1, y1 = grid.clipped_core(t)
        c = rng.uniform([x0, y0], [x1, y1], (per_tile, 2))
        half = rng.uniform(4, 20, (per_tile, 2))
        boxes = np.hstack([c - half, c + half])
        results[t.key] = TileResult(t.key, boxes, rng.uniform(0.1, 1, per_tile), {})
    for t in tiles:  # duplicates: a box near the right/bottom seam copied, shifted into the next core
        r = results[t.key]
        cx = (r.boxes[:, 0] + r.boxes[:, 2]) / 2
        x1 = grid.clipped_core(t)[2]
        right = grid.tile_at(t.col + 1, t.row) if t.col + 1 < grid.cols else None
        if right is None:
            continue
        pick = np.flatnonzero((x1 - cx < 6) & (rng.random(len(cx)) < dup_share * 3))
        shift = (x1 - cx[pick] + rng.uniform(0.1, 2, len(pick)))[:, None] * [1, 0, 1, 0]
        nb = results[right.key]
        results[right.key] = TileResult(right.key, np.vstack([nb.boxes, r.boxes[pick] + shift]),
                                        np.concatenate([nb.scores, rng.uniform(0.1, 1, len(pick))]), {})
    return results


def _brute_force(grid, results, thr=0.5):
    by = {k: r for k, r in results.items() if len(r.boxes)}
    sup = {k: np.zeros(len(r.boxes), bool) for k, r in by.items()}
    for key, a in by.items():
        row, col = (int(v) for v in key.split("_"))
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            nkey = f"{row + dr:05d}_{col + dc:05d}"
            if nkey not in by:
                continue
            b = by[nkey]
            iou = box_iou(a.boxes, b.boxes)
            for i, j in zip(*np.nonzero(iou > thr)):
                if sup[key][i] or sup[nkey][j]:
                    continue
                if a.scores[i] >= b.scores[j]:
                    sup[nkey][j] = True
                else:
                    sup[key][i] = True
    keys = sorted(by)
    boxes = np.concatenate([by[k].boxes[~sup[k]] for k in keys])
    scores = np.concatenate([by[k].scores[~sup[k]] for k in keys])
    order = np.lexsort(((boxes[:, 0] + boxes[:, 2]), (boxes[:, 1] + boxes[:, 3])))
    return boxes[order], scores[order]


def test_merge_within_reach_equals_all_pairs():
    rng = np.random.default_rng(0)
    grid = TileGrid(3000, 2500, 1.0, tile=1024, overlap=64)
    results = _tile_results(grid, rng)
    boxes, scores, outlines = merge_seams(grid, results)
    assert outlines is None  # box-only results
    ref_boxes, ref_scores = _brute_force(grid, results)
    total = sum(len(r.boxes) for r in results.values())
    assert len(ref_boxes) < total - 20  # duplicates were there and were removed
    np.testing.assert_array_equal(boxes, ref_boxes)
    np.testing.assert_array_equal(scores, ref_scores)
