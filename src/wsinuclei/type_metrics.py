"""Scores of nucleus types, as HoVer-Net's ``compute_stats.py`` computes them.

Predicted and true centres are paired one to one by a minimum-total-distance assignment (scipy's
``linear_sum_assignment`` on the full distance matrix, as HoVer-Net's ``pair_coordinates``), keeping the pairs
within ``radius`` pixels (3 µm). Detection: ``F_d = 2 TP / (2 TP + FP + FN)``. Per type ``c``, over the pairs
whose truth or prediction is ``c``::

    F_t(c) = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d(c) + FN_d(c))

with ``TP_c`` pairs both ``c``, ``FP_c`` pairs predicted ``c`` but truly another type, ``FN_c`` the reverse,
``FP_d(c)`` unpaired predictions of type ``c`` and ``FN_d(c)`` unpaired true nuclei of type ``c``. There is no
true-negative term, so a constant guess scores 0 on every type it never says. True nuclei whose type is not
known (-1: a set that types only some centres) pair and count for detection, but take no part in type scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .nucleus_types import UNTYPED


def pair_centres(pred_xy: np.ndarray, truth_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(pred index, truth index) of the pairs: a minimum-total-distance one-to-one assignment over all centres,
    then only the pairs at most ``radius`` apart (HoVer-Net's ``pair_coordinates``)."""
    pred_xy = np.asarray(pred_xy, np.float64).reshape(-1, 2)
    truth_xy = np.asarray(truth_xy, np.float64).reshape(-1, 2)
    if len(pred_xy) == 0 or len(truth_xy) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    d = cdist(pred_xy, truth_xy)
    r, c = linear_sum_assignment(d)
    ok = d[r, c] <= radius
    return r[ok], c[ok]


@dataclass
class TypeCounts:
    """Pooled pairs and misses over images; :meth:`add` one image at a time."""

    n_types: int
    paired_truth: list = field(default_factory=list)
    paired_pred: list = field(default_factory=list)
    unpaired_truth: list = field(default_factory=list)
    unpaired_pred: list = field(default_factory=list)

    def add(self, pred_xy, pred_types, truth_xy, truth_types, radius: float) -> "TypeCounts":
        pred_types = np.asarray(pred_types, np.int64).reshape(-1)
        truth_types = np.asarray(truth_types, np.int64).reshape(-1)
        pi, ti = pair_centres(pred_xy, truth_xy, radius)
        self.paired_truth.append(truth_types[ti])
        self.paired_pred.append(pred_types[pi])
        self.unpaired_truth.append(np.delete(truth_types, ti))
        self.unpaired_pred.append(np.delete(pred_types, pi))
        return self

    def _cat(self, name: str) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    @property
    def detection(self) -> dict:
        tp = len(self._cat("paired_truth"))
        fp, fn = len(self._cat("unpaired_pred")), len(self._cat("unpaired_truth"))
        d = 2 * tp + fp + fn
        return {"tp": tp, "fp": fp, "fn": fn, "f_d": 2 * tp / d if d else 1.0,
                "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0}

    def f_type(self, c: int) -> float:
        pt, pp = self._cat("paired_truth"), self._cat("paired_pred")
        typed = pt != UNTYPED
        pt, pp = pt[typed], pp[typed]
        tp = int(((pt == c) & (pp == c)).sum())
        fp = int(((pt != c) & (pp == c)).sum())
        fn = int(((pt == c) & (pp != c)).sum())
        fp_d = int((self._cat("unpaired_pred") == c).sum())
        fn_d = int((self._cat("unpaired_truth") == c).sum())
        d = 2 * tp + 2 * fp + 2 * fn + fp_d + fn_d
        return 2 * tp / d if d else float("nan")  # a type neither said nor present: undefined

    def per_type_f1(self, c: int) -> float:
        """Plain F1 of type ``c`` among the paired, typed nuclei (a pair is a hit when both say ``c``)."""
        pt, pp = self._cat("paired_truth"), self._cat("paired_pred")
        typed = pt != UNTYPED
        pt, pp = pt[typed], pp[typed]
        tp = int(((pt == c) & (pp == c)).sum())
        d = 2 * tp + int(((pt != c) & (pp == c)).sum()) + int(((pt == c) & (pp != c)).sum())
        return 2 * tp / d if d else float("nan")

    @property
    def accuracy(self) -> float:
        """The share of paired, typed nuclei whose predicted type is the true one."""
        pt, pp = self._cat("paired_truth"), self._cat("paired_pred")
        typed = pt != UNTYPED
        return float((pt[typed] == pp[typed]).mean()) if typed.any() else float("nan")

    @property
    def confusion(self) -> np.ndarray:
        """(n_types, n_types) counts of paired, typed nuclei: row the true type, column the predicted one."""
        pt, pp = self._cat("paired_truth"), self._cat("paired_pred")
        typed = (pt != UNTYPED) & (pp != UNTYPED)
        m = np.zeros((self.n_types, self.n_types), np.int64)
        np.add.at(m, (pt[typed], pp[typed]), 1)
        return m

    def summary(self, names) -> dict:
        out = dict(self.detection)
        for c, n in enumerate(names):
            out[f"f_t_{n}"] = self.f_type(c)
            out[f"f1_{n}"] = self.per_type_f1(c)
        out["type_accuracy"] = self.accuracy
        out["confusion"] = self.confusion.tolist()
        return out
