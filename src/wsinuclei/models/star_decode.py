"""Decoding a star model's output maps into nuclei, in numpy: one implementation for training's validation
(``star.StarNet.decode``) and for the torch-free OpenVINO runtime (``openvino_star.py``).

Candidates are the cells whose centre probability is a local maximum (3x3) at or above a floor; each draws
the polygon its ray distances give; polygons whose boxes overlap a better one by more than an IoU are dropped
(greedy NMS, as torchvision's ``nms``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..boxes import nms
from ..morphology import max_filter3


def star_stride(head: dict) -> int:
    """The output stride of a star head: 4 (the FPN's finest level), or 2 with ``upsample_channels``."""
    return 2 if int(head.get("upsample_channels", 0)) else 4


def ray_directions(n_rays: int) -> np.ndarray:
    """(n_rays, 2) unit vectors (x, y), the first along +x, turning towards +y (image rows)."""
    a = np.arange(n_rays, dtype=np.float64) * (2 * math.pi / n_rays)
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


def decode_star(prob_logits: np.ndarray, dist: np.ndarray, size: tuple[int, int], *, stride: int,
                dist_scale: float, score_thresh: float, nms_thresh: float, max_detections: int,
                ray_dirs: np.ndarray | None = None, type_logits: np.ndarray | None = None,
                features: np.ndarray | None = None):
    """Nuclei of one image from its maps: ``prob_logits`` (h, w) and ``dist`` (rays, h, w) at ``stride``, over
    an input of ``size`` (H, W) pixels (the maps may extend past it: padding). Returns boxes (N, 4 of x0, y0,
    x1, y1), scores (N,), outlines (N, rays, 2 of x, y), in input pixels, best first; with ``type_logits``
    (types, h, w) each nucleus' type probabilities (N, types) (:func:`type_probabilities`), else None; with
    ``features`` (C, h, w), the head's features on the same grid, each nucleus' embedding (N, C)
    (:func:`pool_embeddings`), else None."""
    n_rays = dist.shape[0]
    dirs = ray_directions(n_rays) if ray_dirs is None else np.asarray(ray_dirs, np.float32)
    prob = 1.0 / (1.0 + np.exp(-np.asarray(prob_logits, np.float32)))
    # a local maximum over the whole map (padding included, as a max-pool over the padded batch sees it)
    peaks = (prob == max_filter3(prob, -np.inf)) & (prob >= score_thresh)
    h, w = int(size[0]), int(size[1])
    peaks = peaks[: -(-h // stride), : -(-w // stride)]
    gy, gx = np.nonzero(peaks)
    scores = prob[gy, gx]
    d = np.maximum(dist[:, gy, gx].T.astype(np.float32) * dist_scale, 0.5)  # (N, rays)
    # each cell's sample pixel, stride // 2 into it (star.star_targets), in continuous coordinates
    cx = (gx * stride + stride // 2).astype(np.float32) + 0.5
    cy = (gy * stride + stride // 2).astype(np.float32) + 0.5
    outlines = np.stack([np.clip(cx[:, None] + d * dirs[:, 0], 0, w), np.clip(cy[:, None] + d * dirs[:, 1], 0, h)], 2)
    n_types = 0 if type_logits is None else int(type_logits.shape[0])
    if len(outlines) == 0:
        return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, n_rays, 2), np.float32),
                None if type_logits is None else np.zeros((0, n_types), np.float32),
                None if features is None else np.zeros((0, features.shape[0]), np.float32))
    boxes = np.concatenate([outlines.min(1), outlines.max(1)], 1)
    keep = nms(boxes, scores, nms_thresh)[:max_detections]
    types = None if type_logits is None else type_probabilities(type_logits, gy[keep], gx[keep])
    embeddings = None if features is None else pool_embeddings(features, outlines[keep], gy[keep], gx[keep], stride)
    return boxes[keep], scores[keep], outlines[keep], types, embeddings


def type_probabilities(type_logits: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """(N, types) probabilities of the nuclei whose centre cells are (gy, gx): the mean of the softmax over the
    3x3 cells around each centre (inside the map), so one noisy cell does not decide a nucleus' type."""
    t = np.asarray(type_logits, np.float32)
    k, h, w = t.shape
    z = t - t.max(0, keepdims=True)
    p = np.exp(z)
    p /= p.sum(0, keepdims=True)
    acc = np.zeros((len(gy), k), np.float32)
    n = np.zeros(len(gy), np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            y, x = gy + dy, gx + dx
            ok = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            acc[ok] += p[:, y[ok], x[ok]].T
            n[ok] += 1
    return acc / np.maximum(n, 1)[:, None]


def pool_embeddings(features: np.ndarray, outlines: np.ndarray, gy: np.ndarray, gx: np.ndarray,
                    stride: int) -> np.ndarray:
    """(N, C) float32: each nucleus' mean of ``features`` (C, h, w; the cells of the stride grid) over the cells
    whose sample point (``stride // 2`` into the cell, as decoding places centres) lies inside its polygon
    (``outlines`` (N, rays, 2) in input pixels, best first). Where polygons overlap, the better nucleus (earlier)
    owns the cell; a nucleus that owns no cell (smaller than one, or covered) takes its centre cell (gy, gx).

    Why the polygon mean of the head's features: they are what the centre and distance outputs are read from, so
    they describe the nucleus as the detector saw it, with the context the trunk brought in; a mean over the
    polygon does not depend on which of its cells won the centre, and costs one painting of the tile's polygons
    at a sixteenth of its pixels (``raster.fill_polygons``, the pixels ``skimage.draw.polygon`` gives)."""
    from ..raster import fill_polygons

    c, h, w = features.shape
    n = len(outlines)
    out = np.zeros((n, c), np.float32)
    if n == 0:
        return out
    off = stride // 2 + 0.5  # a cell's sample point in continuous pixel coordinates (decode_star's cx, cy)
    order = np.arange(n)[::-1]  # painted worst first, so the better nucleus is painted last and owns the cell
    grid = np.asarray(outlines, np.float64)[order]
    labels = fill_polygons((grid[..., 1] - off) / stride, (grid[..., 0] - off) / stride, (h, w))
    flat = labels.ravel()
    cells = np.flatnonzero(flat)
    owner = order[flat[cells] - 1]
    srt = np.argsort(owner, kind="stable")
    cells, owner = cells[srt], owner[srt]
    counts = np.bincount(owner, minlength=n)
    if len(cells):
        values = np.take(features.reshape(c, -1), cells, axis=1)  # (C, cells), grouped by owner
        starts = np.cumsum(counts) - counts
        have = counts > 0
        out[have] = (np.add.reduceat(values, starts[have], axis=1) / counts[have]).T
    none = counts == 0
    out[none] = features[:, gy[none], gx[none]].T
    return out


@dataclass
class StarDecoding:
    """A star head's decoding settings, read from its preset's ``[star_head]`` once, for the torch model
    (``star.StarNet``) and the torch-free runtime (``openvino_star.py``) alike. Mutable: ``export`` stores a
    tuned NMS threshold or floor, and a detector scales ``max_detections`` to the tissue a tile holds."""

    stride: int = 4
    n_rays: int = 32
    dist_scale: float = 8.0  # the head predicts distances in these units (pixels / dist_scale)
    score_thresh: float = 0.3
    nms_thresh: float = 0.4
    max_detections: int = 5000
    ray_dirs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.ray_dirs = ray_directions(self.n_rays)

    @classmethod
    def from_head(cls, head: dict) -> "StarDecoding":
        return cls(stride=star_stride(head), n_rays=int(head.get("n_rays", 32)),
                   dist_scale=float(head.get("dist_scale", 8.0)), score_thresh=float(head.get("score_thresh", 0.3)),
                   nms_thresh=float(head.get("nms_thresh", 0.4)),
                   max_detections=int(head.get("detections_per_img", 5000)))

    def __call__(self, prob_logits: np.ndarray, dist: np.ndarray, size: tuple[int, int],
                 type_logits: np.ndarray | None = None, features: np.ndarray | None = None):
        """:func:`decode_star` with these settings."""
        return decode_star(prob_logits, dist, size, stride=self.stride, dist_scale=self.dist_scale,
                           score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
                           max_detections=self.max_detections, ray_dirs=self.ray_dirs, type_logits=type_logits,
                           features=features)
