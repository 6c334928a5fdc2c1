"""Per-nucleus features with HistomicsTK 1.4.0's names and definitions (``compute_nuclei_features``), from a
label image (one integer per nucleus), the hematoxylin channel and, for the cytoplasm, the eosin channel of
colour deconvolution (``stain.color_deconvolution``; dark = much stain, as HistomicsTK's ``Stains``).

The families and what they hold:

- ``Identifier.*``: label, box (``Xmin`` … ``Ymax``), centroid, hematoxylin-weighted centroid.
- morphometry (``Size.*``, ``Shape.*``, ``Orientation.Orientation``): scikit-image ``regionprops`` values, as
  HistomicsTK takes them, plus its circularity (4πA/P²), minor/major ratio, box-counting fractal dimension and
  Hu moments (plain and hematoxylin-weighted).
- ``Shape.FSD1..6``: Fourier shape descriptors of the boundary (HistomicsTK's Moore trace, 128 points, 6 bins).
- ``Nucleus.Intensity.*`` / ``Cytoplasm.Intensity.*``: statistics of the hematoxylin values inside the nucleus
  and of the eosin values in the 8-pixel ring around it (``dilate_xor``: background pixels within 8 px, each
  given to its nearest nucleus).
- ``Nucleus.Gradient.*`` / ``Cytoplasm.Gradient.*``: gradient magnitude statistics and Canny edge counts.
- ``Nucleus.Haralick.*`` / ``Cytoplasm.Haralick.*`` (opt-in): grey-level co-occurrence texture (``haralick.py``).

Every value is HistomicsTK's to floating-point rounding (``tests/test_features.py`` checks each against
HistomicsTK's own output on MoNuSeg nuclei).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .segments import gradient_stats, intensity_stats

FEATURES_VERSION = "wsinuclei-features-1 (HistomicsTK 1.4.0 definitions)"
FAMILIES = ("morphometry", "fsd", "intensity", "gradient", "haralick")
DEFAULT_FAMILIES = ("morphometry", "fsd", "intensity", "gradient")  # Haralick is opt-in: the costly one
INTENSITY_STATS = ("Min", "Max", "Mean", "Median", "MeanMedianDiff", "Std", "IQR", "MAD", "Skewness", "Kurtosis",
                   "HistEnergy", "HistEntropy")
GRADIENT_STATS = ("Mag.Mean", "Mag.Std", "Mag.Skewness", "Mag.Kurtosis", "Mag.HistEntropy", "Mag.HistEnergy",
                  "Canny.Sum", "Canny.Mean")


IDENTIFIERS = ("Identifier.Label", "Identifier.Xmin", "Identifier.Ymin", "Identifier.Xmax", "Identifier.Ymax",
               "Identifier.CentroidX", "Identifier.CentroidY", "Identifier.WeightedCentroidX",
               "Identifier.WeightedCentroidY")
MORPHOMETRY = ("Orientation.Orientation", "Size.Area", "Size.ConvexHullArea", "Size.MajorAxisLength",
               "Size.MinorAxisLength", "Size.Perimeter", "Shape.Circularity", "Shape.Eccentricity",
               "Shape.EquivalentDiameter", "Shape.Extent", "Shape.FractalDimension", "Shape.MinorMajorAxisRatio",
               "Shape.Solidity") + tuple(f"Shape.HuMoments{k}" for k in range(1, 8)) + tuple(
               f"Shape.WeightedHuMoments{k}" for k in range(1, 8))


def feature_columns(families=DEFAULT_FAMILIES, cytoplasm: bool = True) -> list[str]:
    """The columns :func:`compute_nuclei_features` returns, in order, for these families."""
    cols = list(IDENTIFIERS)
    if "morphometry" in families:
        cols += MORPHOMETRY
    if "fsd" in families:
        cols += [f"Shape.FSD{k}" for k in range(1, 7)]
    if "intensity" in families:
        cols += [f"Nucleus.Intensity.{s}" for s in INTENSITY_STATS]
        if cytoplasm:
            cols += [f"Cytoplasm.Intensity.{s}" for s in INTENSITY_STATS]
    if "gradient" in families:
        cols += [f"Nucleus.Gradient.{s}" for s in GRADIENT_STATS]
        if cytoplasm:
            cols += [f"Cytoplasm.Gradient.{s}" for s in GRADIENT_STATS]
    if "haralick" in families:
        from .haralick import COLUMNS

        cols += [f"Nucleus.{c}" for c in COLUMNS]
        if cytoplasm:
            cols += [f"Cytoplasm.{c}" for c in COLUMNS]
    return cols


def dilate_xor(labels: np.ndarray, width: float = 8) -> np.ndarray:
    """The ring of background pixels within ``width`` of a nucleus, each labelled with its nearest nucleus."""
    from scipy.ndimage import distance_transform_edt

    dist, (ri, ci) = distance_transform_edt(labels == 0, return_indices=True)
    ring = (dist > 0) & (dist <= width)
    out = np.zeros_like(labels)
    out[ring] = labels[ri[ring], ci[ring]]
    return out


def _fractal_dimension(image: np.ndarray) -> float:
    z = image > 0
    p = min(z.shape)
    n = int(np.log(2 ** np.floor(np.log(p) / np.log(2))) / np.log(2))
    sizes = 2 ** np.arange(n, 1, -1)
    counts = []
    for k in sizes:
        s = np.add.reduceat(np.add.reduceat(z, np.arange(0, z.shape[0], k), axis=0), np.arange(0, z.shape[1], k), axis=1)
        counts.append(len(np.where((s > 0) & (s < k * k))[0]))
    if not len(counts):
        return -0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(-np.polyfit(np.log(sizes), np.log(counts), 1)[0])
        except (TypeError, ValueError, np.linalg.LinAlgError):
            return -0.0


def _morphometry(p) -> dict:
    area, perim = float(p.area), float(p.perimeter)
    major, minor = float(p.axis_major_length), float(p.axis_minor_length)
    row = {
        "Orientation.Orientation": float(p.orientation), "Size.Area": area, "Size.ConvexHullArea": float(p.area_convex),
        "Size.MajorAxisLength": major, "Size.MinorAxisLength": minor, "Size.Perimeter": perim,
        "Shape.Circularity": 4 * math.pi * area / (perim ** 2 if perim > 0 else 1),
        "Shape.Eccentricity": float(p.eccentricity), "Shape.EquivalentDiameter": float(p.equivalent_diameter_area),
        "Shape.Extent": float(p.extent), "Shape.FractalDimension": _fractal_dimension(p.image),
        "Shape.MinorMajorAxisRatio": minor / major if major > 0 else 1.0, "Shape.Solidity": float(p.solidity),
    }
    for k, v in enumerate(p.moments_hu, 1):
        row[f"Shape.HuMoments{k}"] = float(v)
    for k, v in enumerate(p.moments_weighted_hu, 1):
        row[f"Shape.WeightedHuMoments{k}"] = float(v)
    return row


def _fsd(labels: np.ndarray, p, n_points: int = 128, n_bins: int = 6, delta: int = 8) -> np.ndarray:
    from .boundary import trace_boundary

    rows, cols = labels.shape
    r0, c0, r1, c1 = p.bbox
    r0, r1 = max(0, r0 - delta), min(rows - 1, r1 + delta)
    c0, c1 = max(0, c0 - delta), min(cols - 1, c1 + delta)
    m = labels[r0:r1, c0:c1] == p.label
    if not r0 or not c0 or r1 + 1 == rows or c1 + 1 == cols:  # as HistomicsTK: room for the tracer's window
        m = np.pad(m, ((1 if not r0 else 0, 1 if r1 + 1 == rows else 0), (1 if not c0 else 0, 1 if c1 + 1 == cols else 0)))
    by, bx = trace_boundary(m)
    if len(by) - 1 < 2:
        return np.zeros(n_bins)
    return _fsd_values(by[:-1].astype(float), bx[:-1].astype(float), n_points, n_bins)


def _fsd_values(x: np.ndarray, y: np.ndarray, k: int, n_bins: int) -> np.ndarray:
    intervals = np.round(np.power(2, np.linspace(0, np.log2(k) - 1, n_bins + 1, endpoint=True))).astype(np.uint8)
    if intervals[0] != 1.0:
        intervals = np.hstack((1.0, intervals))
    if intervals[-1] != k / 2:
        intervals = np.hstack((intervals, float(k)))
    n = len(intervals)
    out = np.zeros(n - 1)
    # the boundary resampled to k + 1 points evenly spaced along its length
    t = np.linspace(0, 1, k + 1)
    seg = np.sqrt(np.diff(x) ** 2 + np.diff(y) ** 2)
    seg = seg / seg.sum()
    cum = np.zeros(len(seg) + 1)
    cum[1:] = np.cumsum(seg)
    loc = np.digitize(t, cum)
    loc[loc > len(seg)] = len(seg)
    lie = (t - cum[loc - 1]) / seg[loc - 1]
    ix = x[loc - 1] + (x[loc] - x[loc - 1]) * lie
    iy = y[loc - 1] + (y[loc] - y[loc - 1]) * lie
    if ix.size:
        curv = np.arctan2(iy[1:] - iy[:-1], ix[1:] - ix[:-1])
        curv = curv - curv[0]
        f = np.fft.fft(np.cos(curv) + 1j * np.sin(curv))
        f = f * f.conj()
        f = f / f.sum() if f.sum() else f
        for i in range(n - 1):
            out[i] = np.round(f[int(intervals[i]) - 1:int(intervals[i + 1])].sum(), n).real
    return out


def _put(rows: list[dict], prefix: str, stats: dict[str, np.ndarray]) -> None:
    for name, values in stats.items():
        for row, v in zip(rows, values):
            row[prefix + name] = float(v)


def compute_nuclei_features(labels: np.ndarray, nuclei: np.ndarray, cytoplasm: np.ndarray | None = None,
                            families=DEFAULT_FAMILIES, cyto_width: float = 8) -> dict[str, np.ndarray]:
    """Features of every labelled nucleus, one array per column (rows in label order). A degenerate mask (a
    line of pixels) gives NaN where a definition divides by zero, as HistomicsTK does, without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _compute(labels, nuclei, cytoplasm, families, cyto_width)


def _compute(labels, nuclei, cytoplasm, families, cyto_width) -> dict[str, np.ndarray]:
    from skimage.feature import canny
    from skimage.measure import regionprops

    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown feature families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    labels = np.asarray(labels)
    nuclei = np.asarray(nuclei, dtype=float)
    props = regionprops(labels, intensity_image=nuclei)
    rows: list[dict] = []
    for p in props:
        r0, c0, r1, c1 = p.bbox
        cy, cx = p.centroid
        wy, wx = p.centroid_weighted
        rows.append({"Identifier.Label": p.label, "Identifier.Xmin": c0, "Identifier.Ymin": r0, "Identifier.Xmax": c1,
                     "Identifier.Ymax": r1, "Identifier.CentroidX": cx, "Identifier.CentroidY": cy,
                     "Identifier.WeightedCentroidX": wx, "Identifier.WeightedCentroidY": wy})
    if "morphometry" in families:
        for row, p in zip(rows, props):
            row.update(_morphometry(p))
    if "fsd" in families:
        for row, p in zip(rows, props):
            row.update({f"Shape.FSD{k}": v for k, v in enumerate(_fsd(labels, p), 1)})
    n = len(props)
    index_of = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int64)  # label -> row
    index_of[[p.label for p in props]] = np.arange(n)
    inside = labels > 0
    seg_nucleus = index_of[labels[inside]]
    ring = None
    if cytoplasm is not None and ({"intensity", "gradient", "haralick"} & set(families)):
        cytoplasm = np.asarray(cytoplasm, dtype=float)
        ring = dilate_xor(labels, cyto_width)
        in_ring = ring > 0
        seg_ring = index_of[ring[in_ring]]
    if "intensity" in families:
        _put(rows, "Nucleus.Intensity.", intensity_stats(nuclei[inside], seg_nucleus, n))
        if ring is not None:
            stats = intensity_stats(cytoplasm[in_ring], seg_ring, n)
            missing = np.bincount(seg_ring, minlength=n) == 0
            for v in stats.values():  # HistomicsTK leaves a nucleus without a ring at 0
                v[missing] = 0.0
            _put(rows, "Cytoplasm.Intensity.", stats)
    if "gradient" in families:
        for name, image, where, seg in (("Nucleus", nuclei, inside, seg_nucleus),
                                        ("Cytoplasm", cytoplasm, None if ring is None else in_ring,
                                         None if ring is None else seg_ring)):
            if image is None or where is None:
                continue
            gx, gy = np.gradient(image)
            mag = np.sqrt(gx ** 2 + gy ** 2)
            edges = canny(image)
            _put(rows, f"{name}.Gradient.", gradient_stats(mag[where], edges[where], seg, n))
    if "haralick" in families:
        from .haralick import haralick_features

        _put(rows, "Nucleus.", haralick_features(nuclei, [p.bbox for p in props]))
        if ring is not None:
            from skimage.measure import regionprops as _rp

            ring_box = {p.label: p.bbox for p in _rp(ring)}
            _put(rows, "Cytoplasm.", haralick_features(cytoplasm, [ring_box.get(p.label) for p in props]))
    columns = feature_columns(families, cytoplasm is not None)
    return {k: np.array([r[k] for r in rows], dtype=float) for k in columns}
