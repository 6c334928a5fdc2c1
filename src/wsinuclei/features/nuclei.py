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


def _boundary(labels: np.ndarray, label: int, bbox, delta: int = 8):
    """HistomicsTK's traced boundary of one nucleus (rows, columns; the repeated last point dropped), or None
    when it has fewer than two points."""
    from .boundary import trace_boundary

    rows, cols = labels.shape
    r0, c0, r1, c1 = bbox
    r0, r1 = max(0, r0 - delta), min(rows - 1, r1 + delta)
    c0, c1 = max(0, c0 - delta), min(cols - 1, c1 + delta)
    m = labels[r0:r1, c0:c1] == label
    if not r0 or not c0 or r1 + 1 == rows or c1 + 1 == cols:  # as HistomicsTK: room for the tracer's window
        m = np.pad(m, ((1 if not r0 else 0, 1 if r1 + 1 == rows else 0), (1 if not c0 else 0, 1 if c1 + 1 == cols else 0)))
    by, bx = trace_boundary(m)
    if len(by) - 1 < 2:
        return None
    return by[:-1].astype(float), bx[:-1].astype(float)


def _resampled(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The boundary resampled to k + 1 points evenly spaced along its length (HistomicsTK's ``InterpolateArcLength``)."""
    t = np.linspace(0, 1, k + 1)
    seg = np.sqrt(np.diff(x) ** 2 + np.diff(y) ** 2)
    seg = seg / seg.sum()
    cum = np.zeros(len(seg) + 1)
    cum[1:] = np.cumsum(seg)
    loc = np.digitize(t, cum)
    loc[loc > len(seg)] = len(seg)
    lie = (t - cum[loc - 1]) / seg[loc - 1]
    return x[loc - 1] + (x[loc] - x[loc - 1]) * lie, y[loc - 1] + (y[loc] - y[loc - 1]) * lie


def fourier_shape_descriptors(boundaries: list, k: int = 128, n_bins: int = 6) -> np.ndarray:
    """HistomicsTK's ``FSDs`` for many boundaries at once, (len(boundaries), n_bins); a missing boundary (None)
    gives zeros. The turning-angle spectrum is one batched FFT."""
    intervals = np.round(np.power(2, np.linspace(0, np.log2(k) - 1, n_bins + 1, endpoint=True))).astype(np.uint8)
    if intervals[0] != 1.0:
        intervals = np.hstack((1.0, intervals))
    if intervals[-1] != k / 2:
        intervals = np.hstack((intervals, float(k)))
    n = len(intervals)
    out = np.zeros((len(boundaries), n - 1))
    have = [i for i, b in enumerate(boundaries) if b is not None]
    if not have:
        return out
    pts = [_resampled(*boundaries[i], k) for i in have]
    ix = np.stack([p[0] for p in pts])
    iy = np.stack([p[1] for p in pts])
    curv = np.arctan2(iy[:, 1:] - iy[:, :-1], ix[:, 1:] - ix[:, :-1])
    curv = curv - curv[:, :1]
    f = np.fft.fft(np.cos(curv) + 1j * np.sin(curv), axis=1)
    f = f * f.conj()
    total = f.sum(axis=1, keepdims=True)
    f = np.where(total != 0, f / np.where(total != 0, total, 1), f)
    for i in range(n - 1):
        out[have, i] = np.round(f[:, int(intervals[i]) - 1:int(intervals[i + 1])].sum(axis=1), n).real
    return out


def _put(out: dict, prefix: str, stats: dict[str, np.ndarray]) -> None:
    for name, values in stats.items():
        out[prefix + name] = np.asarray(values, dtype=float)


def compute_nuclei_features(labels: np.ndarray, nuclei: np.ndarray, cytoplasm: np.ndarray | None = None,
                            families=DEFAULT_FAMILIES, cyto_width: float = 8, edges=None) -> dict[str, np.ndarray]:
    """Features of every labelled nucleus, one array per column (rows in label order). A degenerate mask (a
    line of pixels) gives NaN where a definition divides by zero, as HistomicsTK does, without warnings.
    ``edges``: the Canny edges of ``nuclei`` and ``cytoplasm`` when the caller has them (``tile_features``
    computes them for a window of a larger image, see ``edges.py``); by default they are computed here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _compute(labels, nuclei, cytoplasm, families, cyto_width, edges)


def _compute(labels, nuclei, cytoplasm, families, cyto_width, edges=None) -> dict[str, np.ndarray]:
    from .edges import canny
    from .morphometry import find_regions, morphometry

    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown feature families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    labels = np.asarray(labels)
    nuclei = np.asarray(nuclei, dtype=float)
    reg = find_regions(labels)
    n = reg.n
    boxes = reg.box()
    out: dict[str, np.ndarray] = {
        "Identifier.Label": reg.labels.astype(float), "Identifier.Xmin": boxes[:, 1], "Identifier.Ymin": boxes[:, 0],
        "Identifier.Xmax": boxes[:, 3], "Identifier.Ymax": boxes[:, 2]}
    shape = morphometry(labels, reg, nuclei, shape="morphometry" in families)
    for k in ("CentroidX", "CentroidY", "WeightedCentroidX", "WeightedCentroidY"):
        out[f"Identifier.{k}"] = shape.pop(f"Identifier.{k}")
    if "morphometry" in families:
        out.update(shape)
    if "fsd" in families:
        fsd = fourier_shape_descriptors([_boundary(labels, v, b) for v, b in zip(reg.labels, boxes)])
        for k in range(6):
            out[f"Shape.FSD{k + 1}"] = fsd[:, k]
    inside = labels > 0
    index_of = reg.index_of  # label -> row
    seg_nucleus = index_of[labels[inside]]
    ring = None
    if cytoplasm is not None and ({"intensity", "gradient", "haralick"} & set(families)):
        cytoplasm = np.asarray(cytoplasm, dtype=float)
        ring = dilate_xor(labels, cyto_width)
        in_ring = ring > 0
        seg_ring = index_of[ring[in_ring]]
    if "intensity" in families:
        _put(out, "Nucleus.Intensity.", intensity_stats(nuclei[inside], seg_nucleus, n))
        if ring is not None:
            stats = intensity_stats(cytoplasm[in_ring], seg_ring, n)
            missing = np.bincount(seg_ring, minlength=n) == 0
            for v in stats.values():  # HistomicsTK leaves a nucleus without a ring at 0
                v[missing] = 0.0
            _put(out, "Cytoplasm.Intensity.", stats)
    if "gradient" in families:
        for k, (name, image, where, seg) in enumerate((("Nucleus", nuclei, inside, seg_nucleus),
                                                       ("Cytoplasm", cytoplasm, None if ring is None else in_ring,
                                                        None if ring is None else seg_ring))):
            if image is None or where is None:
                continue
            gx, gy = np.gradient(image)
            mag = np.sqrt(gx ** 2 + gy ** 2)
            found = canny(image) if edges is None else edges[k]
            _put(out, f"{name}.Gradient.", gradient_stats(mag[where], found[where], seg, n))
    if "haralick" in families:
        from .haralick import haralick_features

        _put(out, "Nucleus.", haralick_features(nuclei, [tuple(b) for b in boxes]))
        if ring is not None:
            ring_boxes = find_regions(ring)
            ring_box = dict(zip(ring_boxes.labels.tolist(), map(tuple, ring_boxes.box())))
            _put(out, "Cytoplasm.", haralick_features(cytoplasm, [ring_box.get(v) for v in reg.labels.tolist()]))
    columns = feature_columns(families, cytoplasm is not None)
    return {k: np.asarray(out[k], dtype=float) for k in columns}
