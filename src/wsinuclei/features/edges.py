"""Canny edges of a window of an image, equal to ``skimage.feature.canny(image)[window]`` (sigma 1, the default
thresholds, float input) but computed from the window and a small margin only.

HistomicsTK counts Canny edge pixels inside each nucleus and its cytoplasm ring; on a tile whose nuclei cover
part of it, running Canny over the whole tile is most of the features' fixed cost. Every step of Canny but the
last is local: the Gaussian (radius 4), the Sobel gradients (radius 1) and the non-maximum suppression (radius
1) make a pixel's thresholded value depend on pixels at most ``REACH`` = 6 away. The last step, hysteresis, is
not local: a weak edge pixel is kept when its 8-connected chain of weak pixels reaches a strong one, wherever
that is. So the window is computed exactly from its ``REACH`` margin, and a chain of weak pixels with no strong
pixel that runs into the margin (its fate decided outside) makes :func:`canny_window` fall back to the whole
image. With the default thresholds (0.1 and 0.2 on 0-255 stain images) such chains are rare.

The steps are scikit-image 0.26's ``canny`` with ``mask=None``, ``mode='constant'``; the non-maximum suppression
is scikit-image's own compiled routine. ``tests/test_feature_windows.py`` checks the result against
``skimage.feature.canny`` on real stain images and random windows, so a scikit-image that changes its Canny
fails there, not silently.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

REACH = 6  # Gaussian 4 (sigma 1, truncate 4) + Sobel 1 + non-maximum suppression 1
LOW, HIGH = 0.1, 0.2  # skimage's defaults for a float image

try:  # scikit-image's compiled non-maximum suppression: the one step not rebuilt here from public parts
    from skimage.feature._canny_cy import _nonmaximum_suppression_bilinear
except ImportError:  # pragma: no cover - another scikit-image layout: always the whole-image Canny
    _nonmaximum_suppression_bilinear = None


def canny(image: np.ndarray) -> np.ndarray:
    """``skimage.feature.canny(image)`` for a 2-D float64 image."""
    from skimage.feature import canny as skimage_canny

    return skimage_canny(image)


_GAUSS = dict(sigma=1, mode="constant", cval=0.0, truncate=4.0)
_RADIUS = 4


def _nearness(n: int) -> tuple[np.ndarray, int]:
    """For each of n pixels along an axis, which pixel of a (2 * radius + 1)-long stand-in is as near (within the
    radius) to each end as it is; and the stand-in's length (n itself when n is no longer)."""
    if n <= 2 * _RADIUS + 1:
        return np.arange(n), n
    p = np.full(n, _RADIUS)
    p[:_RADIUS] = np.arange(_RADIUS)
    p[n - _RADIUS:] = np.arange(_RADIUS + 1, 2 * _RADIUS + 1)
    return p, 2 * _RADIUS + 1


def _stand_in(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's and column's pixel in the stand-in (:func:`_nearness`) and the stand-in itself:
    ``gaussian_filter`` of ones the stand-in's size, plus eps."""
    (pr, mr), (pc, mc) = _nearness(shape[0]), _nearness(shape[1])
    return pr, pc, ndi.gaussian_filter(np.ones((mr, mc)), **_GAUSS) + np.finfo(np.float64).eps


def _bleed_over(shape: tuple[int, int]) -> np.ndarray:
    """``gaussian_filter(ones(shape)) + eps``, skimage's correction for the zeros outside the image, from a
    9x9 stand-in: a pixel's value depends only on how near (within the radius) it is to each edge, so every
    pixel reads the stand-in pixel that has the same nearness, and gets the same sums in the same order."""
    pr, pc, small = _stand_in(shape)
    return small[np.ix_(pr, pc)]


def _divide_by_bleed_over(image: np.ndarray) -> None:
    """``image /= _bleed_over(image.shape)`` in place, without making the whole divisor: rows more than the
    radius from the top and bottom share one row of it, so only the border rows read the stand-in pixel by pixel
    (the same divisor for every pixel, so the same quotients)."""
    h = image.shape[0]
    if h <= 2 * _RADIUS + 1:
        image /= _bleed_over(image.shape)
        return
    pr, pc, small = _stand_in(image.shape)
    image[_RADIUS:h - _RADIUS] /= small[_RADIUS, pc][None, :]
    for rows in (slice(0, _RADIUS), slice(h - _RADIUS, h)):
        image[rows] /= small[np.ix_(pr[rows], pc)]


def _suppressed_magnitude(image: np.ndarray) -> np.ndarray:
    """skimage's Canny up to its hysteresis: the gradient magnitude where it is a local maximum across the edge
    and above the low threshold, 0 elsewhere; the image's outside counts as zero (``constant`` mode, with
    skimage's bleed-over correction) and its outermost pixels are never edges."""
    smoothed = ndi.gaussian_filter(image, **_GAUSS)
    _divide_by_bleed_over(smoothed)
    jsobel = ndi.sobel(smoothed, axis=1)
    isobel = ndi.sobel(smoothed, axis=0)
    magnitude = isobel * isobel
    magnitude += jsobel * jsobel
    np.sqrt(magnitude, out=magnitude)
    inner = np.ones(image.shape, dtype=bool)
    inner[:1, :] = inner[-1:, :] = inner[:, :1] = inner[:, -1:] = False
    return np.asarray(_nonmaximum_suppression_bilinear(isobel, jsobel, magnitude, inner, LOW))


def reach_box(rows: slice, cols: slice, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The window grown by ``REACH`` and clipped to an image of ``shape``: all :func:`canny_window` reads."""
    return (slice(max(0, rows.start - REACH), min(shape[0], rows.stop + REACH)),
            slice(max(0, cols.start - REACH), min(shape[1], cols.stop + REACH)))


def canny_window(part: np.ndarray, rows: slice, cols: slice, shape: tuple[int, int], whole) -> np.ndarray:
    """``skimage.feature.canny(whole_image)[rows, cols]`` for a 2-D float64 image of ``shape``, computed from
    ``part`` = ``whole_image[reach_box(rows, cols, shape)]`` when that decides every pixel of the window, and from
    ``whole()`` (a function that returns the whole image, called only then) otherwise. ``rows`` and ``cols`` are
    slices with explicit bounds, in the whole image."""
    image = part
    h, w = shape
    r0, r1, c0, c1 = rows.start, rows.stop, cols.start, cols.stop
    if _nonmaximum_suppression_bilinear is None:
        return canny(whole())[rows, cols]
    # The crop: the window and its margin, clipped to the image. A side of the crop inside the image is a cut;
    # values within REACH of a cut differ from the whole image's, the rest (the exact region) are the same.
    box_r, box_c = reach_box(rows, cols, shape)
    R0, R1, C0, C1 = box_r.start, box_r.stop, box_c.start, box_c.stop
    if image.shape != (R1 - R0, C1 - C0):
        raise ValueError(f"canny_window: got a {image.shape} part, expected the window's reach {(R1 - R0, C1 - C0)}")
    nms = _suppressed_magnitude(np.ascontiguousarray(image))
    e0, e1 = r0 - R0 if R0 else 0, nms.shape[0] - (R1 - r1 if R1 < h else 0)  # the exact region = the window
    f0, f1 = c0 - C0 if C0 else 0, nms.shape[1] - (C1 - c1 if C1 < w else 0)  # (and beyond it at image edges)
    weak = np.zeros(nms.shape, dtype=bool)
    weak[e0:e1, f0:f1] = nms[e0:e1, f0:f1] > 0
    labels, count = ndi.label(weak, np.ones((3, 3), bool))
    win = labels[r0 - R0:r1 - R0, c0 - C0:c1 - C0]
    if count == 0:
        return np.zeros(win.shape, dtype=bool)
    good = np.zeros(count + 1, dtype=bool)
    good[labels[weak & (nms >= HIGH)]] = True  # a chain with a strong pixel is kept, whatever lies outside
    good[0] = False
    # A chain without a strong pixel that touches a cut side of the exact region may go on outside, to a strong
    # pixel: undecided here. If one reaches into the window, ask the whole image.
    edge_labels = [labels[e0, f0:f1] if R0 else (), labels[e1 - 1, f0:f1] if R1 < h else (),
                   labels[e0:e1, f0] if C0 else (), labels[e0:e1, f1 - 1] if C1 < w else ()]
    undecided = np.zeros(count + 1, dtype=bool)
    undecided[np.concatenate([np.asarray(v, dtype=labels.dtype) for v in edge_labels])] = True
    undecided &= ~good
    undecided[0] = False
    if undecided[win].any():
        return canny(whole())[rows, cols]
    return good[win]
