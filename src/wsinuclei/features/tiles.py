"""Features of the nuclei a tile owns, computed where the tile is processed (in-process or on a Dask worker),
on the tile's own pixels: the tile reaches past its core by the overlap, so a nucleus it owns is whole in it.

Masks come from the model's contours (polygons filled at the tile's resolution, the model's µm/px). A box-only
model has no contours: then only the identifier, intensity and gradient families are computed, over the ellipse
inscribed in each box, and the shape families (morphometry, Fourier descriptors) are left out, not guessed.
"""

from __future__ import annotations

import functools

import numpy as np

from .nuclei import compute_nuclei_features

#: px-based columns also given in µm (or µm²) at the slide's scale; the unit is in the new column's name
LENGTH_COLUMNS = ("Size.MajorAxisLength", "Size.MinorAxisLength", "Size.Perimeter", "Shape.EquivalentDiameter")
AREA_COLUMNS = ("Size.Area", "Size.ConvexHullArea")
IDENTIFIER_X = ("Identifier.Xmin", "Identifier.Xmax", "Identifier.CentroidX", "Identifier.WeightedCentroidX")
IDENTIFIER_Y = ("Identifier.Ymin", "Identifier.Ymax", "Identifier.CentroidY", "Identifier.WeightedCentroidY")
SHAPE_FAMILIES = ("morphometry", "fsd")
RING_WIDTH = 8  # HistomicsTK's cytoplasm ring (dilate_xor), px


def _window(labels: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The box around every labelled pixel, grown by ``margin`` and clipped to the image (a corner when none:
    still big enough for a gradient)."""
    h, w = labels.shape
    rows = np.flatnonzero(labels.any(axis=1))
    if not len(rows):
        return slice(0, min(h, 3)), slice(0, min(w, 3))
    cols = np.flatnonzero(labels.any(axis=0))
    return (slice(max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin)),
            slice(max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin)))


def _channels(stains: np.ndarray) -> tuple[np.ndarray, ...]:
    """An (H, W, C) uint8 stain stack as C contiguous float64 images (what Canny and the statistics read)."""
    return tuple(np.ascontiguousarray(stains[..., c], dtype=np.float64) for c in range(stains.shape[-1]))


def label_image(shape: tuple[int, int], boxes: np.ndarray, outlines: np.ndarray | None, order: np.ndarray) -> np.ndarray:
    """Nuclei ``order[k]`` painted with label k + 1, in that order (a later nucleus wins where two overlap):
    filled contours (``skimage.draw.polygon``'s pixels, all polygons in one pass: ``raster.fill_polygons``), or
    the ellipse inscribed in each box."""
    from skimage.draw import ellipse

    from ..raster import fill_polygons

    order = np.asarray(order, np.int64)
    if outlines is not None:
        picked = np.asarray(outlines)[order] if len(order) else np.zeros((0, 0, 2))
        return fill_polygons(picked[..., 1], picked[..., 0], shape)
    labels = np.zeros(shape, np.int32)
    for k, i in enumerate(order, 1):
        x0, y0, x1, y1 = boxes[i]
        rr, cc = ellipse((y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5, max(0.5, (y1 - y0) / 2), max(0.5, (x1 - x0) / 2),
                         shape=shape)
        labels[rr, cc] = k
    return labels


def tile_features(rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray, outlines: np.ndarray | None,
                  owned: np.ndarray, score_cut: float, model_mpp: float, to_base, families) -> dict[str, np.ndarray]:
    """Features of the nuclei ``owned`` (indices into ``boxes``, in tile pixels), one row each; nuclei under
    ``score_cut`` get NaN rows. Every nucleus at the cut is painted, owned or not, so the cytoplasm ring of an
    owned nucleus stops at its neighbours from the next tile as it does at its own. ``to_base(x, y)`` maps tile
    pixels to base pixels for the ``Identifier`` columns."""
    from .. import stain
    from .edges import canny_window, reach_box

    fams = tuple(f for f in families if outlines is not None or f not in SHAPE_FAMILIES)
    at_cut = np.flatnonzero(scores >= score_cut)
    order = at_cut[np.argsort(scores[at_cut], kind="stable")]  # the higher score paints last and wins overlaps
    labels = label_image(rgb.shape[:2], boxes, outlines, order)
    # Everything is measured on the window that holds the nuclei, their rings and a margin (the gradient's one
    # pixel and one spare), not on the whole tile: the same values, as the window is cut where no measured pixel
    # can see the cut. Canny can see further; edges.canny_window computes it exactly for the window from the
    # window's reach, and asks for the whole tile's stains in the rare case that is not enough.
    rows, cols = _window(labels, RING_WIDTH + 2)
    reach = reach_box(rows, cols, labels.shape)
    inner = (slice(rows.start - reach[0].start, rows.stop - reach[0].start),
             slice(cols.start - reach[1].start, cols.stop - reach[1].start))
    stains = _channels(stain.stain_images(rgb[reach], stain.STAIN_MATRIX_HE, (0, 1)))
    edges = None
    if "gradient" in fams:
        whole_stains = functools.cache(lambda: _channels(stain.stain_images(rgb, stain.STAIN_MATRIX_HE, (0, 1))))
        edges = tuple(canny_window(stains[c], rows, cols, labels.shape, lambda c=c: whole_stains()[c])
                      for c in (0, 1))
    f = compute_nuclei_features(labels[rows, cols], stains[0][inner], stains[1][inner], families=fams,
                                cyto_width=RING_WIDTH, edges=edges)
    for xs, ys in zip(IDENTIFIER_X, IDENTIFIER_Y):  # window -> tile pixels
        f[xs] = f[xs] + cols.start
        f[ys] = f[ys] + rows.start
    row_of = np.full(len(boxes), -1)
    if len(f.get("Identifier.Label", [])):
        row_of[order[f["Identifier.Label"].astype(int) - 1]] = np.arange(len(f["Identifier.Label"]))
    f.pop("Identifier.Label", None)
    out = {}
    pick = row_of[owned]
    for name, values in f.items():
        col = np.full(len(owned), np.nan, np.float64)
        col[pick >= 0] = values[pick[pick >= 0]]
        out[name] = col
    # slide coordinates for the identifiers; µm for lengths and areas
    for xs, ys in zip(IDENTIFIER_X, IDENTIFIER_Y):
        if xs in out:
            out[xs], out[ys] = to_base(out[xs], out[ys])
    for name in LENGTH_COLUMNS:
        if name in out:
            out[f"{name}_um"] = out[name] * model_mpp
    for name in AREA_COLUMNS:
        if name in out:
            out[f"{name}_um2"] = out[name] * model_mpp ** 2
    return {k: v.astype(np.float32) for k, v in out.items()}  # float32: a slide's table stays half the size
