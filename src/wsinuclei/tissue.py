"""Tissue detection on a low-resolution image: where to look, and how much tissue each tile holds."""

from __future__ import annotations

import numpy as np

from .morphology import binary_closing, drop_small_components, otsu_threshold


#: µm per thumbnail pixel that tissue detection needs at most: a slide larger than the thumbnail's 2,048 px is
#: reduced at least this far (``Slide.thumbnail(min_mpp=)``). Finer costs time in every step that reads the
#: thumbnail (the mask, the colour patches' pixel test, the tissue line and the PNG) and finds the same tissue:
#: nuclei (5-15 µm), strips of tissue a few tens of µm wide and the 20 µm margin around detections are all
#: several pixels at 1 µm. A slide within 2,048 px (an annotated image or tile) stays its own thumbnail.
MASK_MIN_UM_PER_PX = 1.0

#: µm² a piece of tissue must cover to be kept when the thumbnail's µm/px is known (0.01 mm², a 100 µm square):
#: smaller pieces are dust and debris. The share-of-the-thumbnail rule alone (``min_object_fraction``) grows with
#: the slide: on a 25 mm slide it dropped every isolated fragment under about 0.24 mm², whole 250 µm cores and
#: biopsy crumbs among them, so a piece is dropped only when it is small by both rules.
MIN_TISSUE_AREA_UM2 = 10_000.0


def slide_tissue(slide) -> tuple[np.ndarray, float, np.ndarray]:
    """A slide's thumbnail for tissue detection (:data:`MASK_MIN_UM_PER_PX`), its downsample (base px per
    thumbnail px) and its tissue mask: the one rule planning and colour statistics (training too) share."""
    thumb, ds = slide.thumbnail(min_mpp=MASK_MIN_UM_PER_PX)
    return thumb, ds, tissue_mask(thumb, um_per_px=slide.mpp * ds if slide.mpp else None)


def tissue_mask(thumb_rgb: np.ndarray, min_object_fraction: float = 0.0005, min_saturation: float = 0.04,
                um_per_px: float | None = None) -> np.ndarray:
    """Boolean tissue mask of a thumbnail.

    Otsu threshold on optical density (glass is bright, stained tissue absorbs), intersected with a floor on
    saturation (grey pen marks and shadows absorb but carry no stain colour); then specks removed, small
    holes filled and the outline smoothed. A blank image gives an all-False mask.

    A speck is a piece smaller than ``min_object_fraction`` of the thumbnail and, when ``um_per_px`` (the
    thumbnail's µm per pixel) is known, also smaller than :data:`MIN_TISSUE_AREA_UM2`. Holes are filled by the
    share rule alone: a hole inside tissue costs a tile at most.
    """
    rgb = np.asarray(thumb_rgb)[..., :3]
    if rgb.dtype == np.uint8:  # a table per value, not a log per pixel: the same numbers, a fifth of the time
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        od = _OD[r] + _OD[g] + _OD[b]
        # element-wise over three planes: a reduction over a last axis of 3 is several times slower
        mx = np.maximum(np.maximum(r, g), b).astype(np.float64)
        mn = np.minimum(np.minimum(r, g), b).astype(np.float64)
    else:
        rgb = rgb.astype(np.float64)
        od = -np.log((rgb + 1) / 256.0).sum(axis=-1)
        mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0)
    if od.max() - od.min() < 0.05:  # uniform: glass only (or a single colour): no tissue to find
        return np.zeros(od.shape, bool)
    thresh = otsu_threshold(od)
    # Otsu splits whatever two populations there are; on a slide that is all tissue it would split nuclei
    # from stroma, so never let the threshold exceed a clearly-tissue optical density.
    thresh = min(thresh, 0.3)
    mask = (od > thresh) & (saturation > min_saturation)
    mask = binary_closing(mask, DISK_2)
    min_size = max(16, int(mask.size * min_object_fraction))
    min_piece = min_size
    if um_per_px:
        min_piece = max(4, min(min_size, int(MIN_TISSUE_AREA_UM2 / um_per_px ** 2)))
    mask = drop_small_components(mask, min_piece)  # specks: dust, debris
    mask = ~drop_small_components(~mask, min_size)  # small holes: lumina, fat inside tissue
    return mask


#: skimage.morphology.disk(2), written out (morphology.py says why the run avoids importing scipy.ndimage and
#: the scikit-image modules that import it)
DISK_2 = np.array([[0, 0, 1, 0, 0],
                   [0, 1, 1, 1, 0],
                   [1, 1, 1, 1, 1],
                   [0, 1, 1, 1, 0],
                   [0, 0, 1, 0, 0]], dtype=np.uint8)

#: optical density of each 8-bit value, -log((v + 1) / 256)
_OD = -np.log((np.arange(256, dtype=np.float64) + 1) / 256.0)


def region_fraction(mask: np.ndarray, mask_downsample: float, x0: float, y0: float, x1: float, y1: float) -> float:
    """Fraction of tissue in the base-pixel rectangle [x0, x1) x [y0, y1), read off a mask whose pixels are
    ``mask_downsample`` base pixels wide. Parts outside the slide count as background."""
    if x1 <= x0 or y1 <= y0:
        return 0.0
    h, w = mask.shape
    fx0, fy0, fx1, fy1 = x0 / mask_downsample, y0 / mask_downsample, x1 / mask_downsample, y1 / mask_downsample
    cx0, cy0 = int(np.floor(max(fx0, 0))), int(np.floor(max(fy0, 0)))
    cx1, cy1 = int(np.ceil(min(fx1, w))), int(np.ceil(min(fy1, h)))
    if cx1 <= cx0 or cy1 <= cy0:
        return 0.0
    sub = mask[cy0:cy1, cx0:cx1]
    # area-weight the mask pixels cut by the rectangle's edges
    wx = np.minimum(np.arange(cx0, cx1) + 1, fx1) - np.maximum(np.arange(cx0, cx1), fx0)
    wy = np.minimum(np.arange(cy0, cy1) + 1, fy1) - np.maximum(np.arange(cy0, cy1), fy0)
    weights = np.clip(wy, 0, 1)[:, None] * np.clip(wx, 0, 1)[None, :]
    return float((sub * weights).sum() / ((fx1 - fx0) * (fy1 - fy0)))
