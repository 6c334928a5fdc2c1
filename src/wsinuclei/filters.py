"""What is kept of a tile's detections beyond the detector's own NMS: nested duplicates and specks.

A detector's NMS removes boxes that overlap a better one by IoU, but a fragment of a large nucleus (a small
box inside a big one) has a low IoU with it and survives; so does a second, low-scoring box around part of a
nucleus. Tried on tissue the model had not seen, these were a large share of the false positives. Two rules,
both set per model (``[postprocess]`` in a preset, stored in the model file):

- ``nested``: drop a box when more than this share of its area lies inside a higher-scoring box
  (intersection over the smaller area); 0 turns the rule off.
- ``min_area_um2``: drop boxes smaller than this many µm² (debris, specks), 0 off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import nested_in_better


@dataclass
class DetectionFilter:
    nested: float = 0.0
    min_area_um2: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "DetectionFilter":
        d = dict(d or {})
        return cls(nested=float(d.get("nested", 0.0)), min_area_um2=float(d.get("min_area_um2", 0.0)))

    @property
    def active(self) -> bool:
        return self.nested > 0 or self.min_area_um2 > 0

    def keep(self, boxes: np.ndarray, scores: np.ndarray, mpp: float) -> np.ndarray:
        """Boolean mask of the detections to keep; ``mpp`` is the µm/px of the boxes' pixels."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        keep = np.ones(len(boxes), bool)
        if self.min_area_um2 > 0:
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * mpp * mpp
            keep &= area >= self.min_area_um2
        if self.nested > 0 and keep.sum() > 1:
            idx = np.flatnonzero(keep)
            keep[idx[nested_in_better(boxes[idx], np.asarray(scores)[idx], self.nested)]] = False
        return keep
