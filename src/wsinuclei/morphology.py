"""The few image filters a whole-slide run needs (tissue mask, colour-patch region, peak finding, thumbnail),
in numpy: each is exactly the scipy.ndimage or scikit-image call it stands for, and tests/test_morphology.py
checks them against those calls.

Why not call them: importing ``scipy.ndimage`` (which ``skimage.filters`` and ``skimage.measure`` import too)
costs every process a noticeable share of a small slide's whole run, most of it scipy's array-API layer
(numpy.testing, numpy.f2py); docs/history/measurements.md (commit 126dbc3) gives the command that measures it. These few operations
on thumbnail-sized arrays are cheap in numpy. Training and evaluation keep using scipy and scikit-image.
"""

from __future__ import annotations

import numpy as np


def _shifted(padded: np.ndarray, pad: int, dy: int, dx: int, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return padded[pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def max_filter3(a: np.ndarray, fill: float) -> np.ndarray:
    """The maximum over each 3x3 neighbourhood, ``fill`` beyond the edges: ``scipy.ndimage.maximum_filter(a,
    size=3, mode="constant", cval=fill)``. Separable: a row maximum, then a column maximum."""
    a = np.asarray(a)
    p = np.pad(a, 1, constant_values=fill)
    rows = np.maximum(np.maximum(p[:, :-2], p[:, 1:-1]), p[:, 2:])
    return np.maximum(np.maximum(rows[:-2], rows[1:-1]), rows[2:])


def dilate_square(mask: np.ndarray, reach: int) -> np.ndarray:
    """A boolean mask grown by a square of side ``2 * reach + 1`` (glass beyond the edges):
    ``scipy.ndimage.maximum_filter(mask, size=2 * reach + 1, mode="constant", cval=0)``. Separable, and along
    each axis by doubling windows (an OR of windows of 1, 2, 4, ... pixels), so its cost grows with the log of
    the square's side."""
    mask = np.asarray(mask, bool)
    if reach <= 0:
        return mask.copy()
    k = 2 * reach + 1

    def window_or(m: np.ndarray) -> np.ndarray:  # along axis 1: out[:, i] = any(m[:, i - reach : i + reach + 1])
        a = np.pad(m, ((0, 0), (reach, reach)))
        span = 1  # a[:, i] is the OR of the padded row's pixels i .. i + span - 1
        while 2 * span <= k:
            a = a[:, :-span] | a[:, span:]
            span *= 2
        if span < k:
            a = a[:, : -(k - span)] | a[:, k - span :]
        return a

    return window_or(window_or(mask).T).T


def binary_dilation(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_dilation(mask, structure)`` for a symmetric odd-sized ``structure`` (glass beyond
    the edges): a pixel is set when the structure centred on it meets the mask."""
    return _combine(mask, structure, np.logical_or, False)


def binary_erosion(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, structure, border_value=0)`` for a symmetric odd-sized
    ``structure``: a pixel stays set when the structure centred on it lies inside the mask (beyond the edges
    is not mask)."""
    return _combine(mask, structure, np.logical_and, True)


def binary_closing(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_closing(mask, structure, border_value=0)``: dilation, then erosion."""
    return binary_erosion(binary_dilation(mask, structure), structure)


def _combine(mask, structure, op, start: bool) -> np.ndarray:
    mask = np.asarray(mask, bool)
    structure = np.asarray(structure, bool)
    sh, sw = structure.shape
    if sh != sw or sh % 2 == 0 or not np.array_equal(structure, structure[::-1, ::-1]):
        raise ValueError("structure must be square, odd-sized and symmetric")
    r = sh // 2
    padded = np.pad(mask, r)  # outside the image: not mask
    out = np.full(mask.shape, start, bool)
    for dy, dx in zip(*np.nonzero(structure)):
        op(out, _shifted(padded, r, int(dy) - r, int(dx) - r, mask.shape), out=out)
    return out


#: scipy.ndimage.generate_binary_structure(2, 1): a pixel and its four edge neighbours
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def sum3(a: np.ndarray) -> np.ndarray:
    """The sum over each 3x3 neighbourhood of an integer array, 0 beyond the edges:
    ``scipy.ndimage.convolve(a, np.ones((3, 3)), mode="constant")``."""
    p = np.pad(np.asarray(a), 1)
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return rows[:-2] + rows[1:-1] + rows[2:]


def drop_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_size`` pixels (what labelling with
    ``scipy.ndimage.label(mask, structure=np.ones((3, 3)))`` and dropping the small labels gives).

    Components are found on runs: each row's runs of set pixels are nodes, runs in neighbouring rows that touch
    (diagonally included) are joined, and a union-find with path halving, vectorised over all joins at once,
    gives every run its component; a thumbnail has tens of thousands of runs, not millions of pixels."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    if not mask.any():
        return mask.copy()
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)  # (h, w + 1)
    row, start = np.nonzero(edges == 1)  # row-major: runs in order of row, then column
    _, end = np.nonzero(edges == -1)  # exclusive; the same order
    n = len(row)
    # runs a (row r) and b (row r + 1) touch when a.start <= b.end and b.start <= a.end (ends exclusive:
    # diagonal contact counts). Keyed by row * stride + column, each row's runs are a sorted, disjoint block.
    stride = w + 2
    start_key, end_key = row * stride + start, row * stride + end
    below = np.flatnonzero(row > 0)
    above_row = (row[below] - 1) * stride
    lo = np.searchsorted(end_key, above_row + start[below], side="left")
    hi = np.searchsorted(start_key, above_row + end[below], side="right")
    counts = np.maximum(hi - lo, 0)
    b = np.repeat(below, counts)
    a = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    parent = np.arange(n)
    while True:  # hook each join's larger root under the smaller, then halve every path; until no join is left
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        hi_root, lo_root = np.maximum(ra[differ], rb[differ]), np.minimum(ra[differ], rb[differ])
        np.minimum.at(parent, hi_root, lo_root)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    sizes = np.bincount(parent, weights=end - start, minlength=n)
    keep = sizes[parent] >= min_size
    flat = np.zeros(h * w + 1, np.int32)
    np.add.at(flat, (row * w + start)[keep], 1)
    np.add.at(flat, (row * w + end)[keep], -1)
    return (np.cumsum(flat[:-1]) > 0).reshape(h, w)


def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold of a float image: ``skimage.filters.threshold_otsu(values, nbins)`` (the same
    histogram over the values' range, the same between-class variance, the same bin centre returned)."""
    values = np.asarray(values).reshape(-1)
    if np.all(values == values[0]):
        return values[0]
    counts, edges = np.histogram(values, bins=nbins)
    counts = counts.astype(np.float32)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centres) / weight1
    mean2 = (np.cumsum((counts * centres)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return centres[np.argmax(variance12)]
