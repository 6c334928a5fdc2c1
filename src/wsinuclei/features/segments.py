"""Statistics of many pixel sets at once ("segments": the pixels of each nucleus, or of each cytoplasm ring),
with the same definitions, and the same floating-point steps where it matters, as the per-nucleus NumPy/SciPy
calls HistomicsTK makes (``np.median``, ``np.std``, ``scipy.stats.skew``/``kurtosis``/``iqr``/``entropy``,
``np.histogram`` with 10 bins). One sort of all pixels replaces a Python loop of SciPy calls per nucleus, which
cost about 1 ms each.
"""

from __future__ import annotations

import numpy as np

HIST_BINS = 10


class Segments:
    """Pixel values grouped by segment id (0..n-1), sorted by value within each segment."""

    def __init__(self, values: np.ndarray, seg: np.ndarray, n: int):
        # np.lexsort((values, seg)) in two passes: by value, then a stable sort by segment, which NumPy does as a
        # radix sort for 16-bit integers (4x faster on a tile's pixels)
        order = np.argsort(values)
        seg_dtype = np.int16 if n < 2 ** 15 else np.int64
        order = order[np.argsort(np.asarray(seg)[order].astype(seg_dtype), kind="stable")]
        self.v = np.asarray(values, np.float64)[order]
        self.s = np.asarray(seg)[order]
        self.n = n
        self.count = np.bincount(self.s, minlength=n)
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]]).astype(np.int64)
        self.present = self.count > 0

    def _at(self, offset: np.ndarray) -> np.ndarray:
        out = np.full(self.n, np.nan)
        ok = self.present
        out[ok] = self.v[(self.start + offset)[ok]]
        return out

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.bincount(self.s, self.v, minlength=self.n) / self.count

    def minimum(self) -> np.ndarray:
        return self._at(np.zeros(self.n, np.int64))

    def maximum(self) -> np.ndarray:
        return self._at(np.maximum(self.count - 1, 0))

    def percentile(self, q: float) -> np.ndarray:
        """``np.percentile(x, q)`` (linear), NumPy's own interpolation steps included."""
        pos = q / 100.0 * (np.maximum(self.count, 1) - 1)
        lo = np.floor(pos).astype(np.int64)
        t = pos - lo
        hi = np.minimum(lo + 1, np.maximum(self.count - 1, 0))
        a, b = self._at(lo), self._at(hi)
        d = b - a
        out = a + d * t
        upper = t >= 0.5
        out[upper] = (b - d * (1 - t))[upper]
        return out

    def median(self) -> np.ndarray:
        """``np.median``: the middle value, or the mean of the middle two."""
        half = self.count // 2
        odd = self.count % 2 == 1
        a = self._at(np.where(odd, half, np.maximum(half - 1, 0)))
        b = self._at(half.clip(max=np.maximum(self.count - 1, 0)))
        return np.where(odd, a, (a + b) / 2)

    def central_moments(self, mean: np.ndarray):
        d = self.v - mean[self.s]
        with np.errstate(invalid="ignore", divide="ignore"):
            m2 = np.bincount(self.s, d ** 2, minlength=self.n) / self.count
            m3 = np.bincount(self.s, (d ** 2) * d, minlength=self.n) / self.count
            m4 = np.bincount(self.s, (d ** 2) ** 2, minlength=self.n) / self.count
        return m2, m3, m4

    def histogram_probabilities(self, lo: np.ndarray, hi: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
        """Per segment, ``np.histogram(x, bins)`` over [min, max] (±0.5 when they are equal, as NumPy does)
        divided by its total: (n, bins)."""
        lo, hi = lo.copy(), hi.copy()
        same = lo == hi
        lo[same] -= 0.5
        hi[same] += 0.5
        first, last = lo[self.s], hi[self.s]
        with np.errstate(invalid="ignore", divide="ignore"):
            idx = (((self.v - first) / (last - first)) * bins).astype(np.intp)
        idx[idx == bins] -= 1
        # NumPy corrects the index against the actual edges (linspace(first, last, bins + 1))
        edges = np.linspace(lo, hi, bins + 1, axis=1)  # (n, bins + 1)
        low_edge = edges[self.s, np.clip(idx, 0, bins)]
        idx[self.v < low_edge] -= 1
        up_edge = edges[self.s, np.clip(idx + 1, 0, bins)]
        idx[(self.v >= up_edge) & (idx != bins - 1)] += 1
        hist = np.bincount(self.s * bins + idx, minlength=self.n * bins).reshape(self.n, bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            return hist / hist.sum(axis=1, keepdims=True)


def _skew_kurtosis(mean, m2, m3, m4):
    eps = np.finfo(np.float64).eps
    with np.errstate(invalid="ignore", divide="ignore"):
        zero = m2 <= (eps * mean) ** 2
        return np.where(zero, np.nan, m3 / m2 ** 1.5), np.where(zero, np.nan, m4 / m2 ** 2.0) - 3


def _energy_entropy(prob):
    from scipy.special import entr

    with np.errstate(invalid="ignore", divide="ignore"):
        pk = prob / prob.sum(axis=1, keepdims=True)
        return (prob ** 2).sum(axis=1), entr(pk).sum(axis=1)


def intensity_stats(values: np.ndarray, seg: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """HistomicsTK's ``compute_intensity_features`` for every segment: Min, Max, Mean, Median,
    MeanMedianDiff, Std, IQR, MAD, Skewness, Kurtosis, HistEnergy, HistEntropy."""
    g = Segments(values, seg, n)
    mean, median = g.mean(), g.median()
    m2, m3, m4 = g.central_moments(mean)
    skew, kurt = _skew_kurtosis(mean, m2, m3, m4)
    lo, hi = g.minimum(), g.maximum()
    energy, entropy = _energy_entropy(g.histogram_probabilities(lo, hi))
    dev = Segments(np.abs(g.v - median[g.s]), g.s, n)
    return {"Min": lo, "Max": hi, "Mean": mean, "Median": median, "MeanMedianDiff": mean - median, "Std": np.sqrt(m2),
            "IQR": g.percentile(75) - g.percentile(25), "MAD": dev.median(), "Skewness": skew, "Kurtosis": kurt,
            "HistEnergy": energy, "HistEntropy": entropy}


def gradient_stats(magnitude: np.ndarray, edges: np.ndarray, seg: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """HistomicsTK's ``compute_gradient_features`` for every segment (magnitude and Canny values of its pixels)."""
    g = Segments(magnitude, seg, n)
    mean = g.mean()
    m2, m3, m4 = g.central_moments(mean)
    skew, kurt = _skew_kurtosis(mean, m2, m3, m4)
    energy, entropy = _energy_entropy(g.histogram_probabilities(g.minimum(), g.maximum()))
    canny_sum = np.bincount(seg, edges.astype(np.float64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        canny_mean = canny_sum / g.count
    return {"Mag.Mean": mean, "Mag.Std": np.sqrt(m2), "Mag.Skewness": skew, "Mag.Kurtosis": kurt,
            "Mag.HistEntropy": entropy, "Mag.HistEnergy": energy, "Canny.Sum": canny_sum, "Canny.Mean": canny_mean}
