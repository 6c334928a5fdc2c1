"""Features of the nuclei a tile owns, computed where the tile is processed (in-process or on a Dask worker),
on the tile's own pixels: the tile reaches past its core by the overlap, so a nucleus it owns is whole in it.

Masks come from the model's contours (polygons filled at the tile's resolution, the model's µm/px). A box-only
model has no contours: then only the identifier, intensity and gradient families are computed, over the ellipse
inscribed in each box, and the shape families (morphometry, Fourier descriptors) are left out, not guessed.
"""

from __future__ import annotations

import numpy as np

from .nuclei import compute_nuclei_features

#: px-based columns also given in µm (or µm²) at the slide's scale; the unit is in the new column's name
LENGTH_COLUMNS = ("Size.MajorAxisLength", "Size.MinorAxisLength", "Size.Perimeter", "Shape.EquivalentDiameter")
AREA_COLUMNS = ("Size.Area", "Size.ConvexHullArea")
IDENTIFIER_X = ("Identifier.Xmin", "Identifier.Xmax", "Identifier.CentroidX", "Identifier.WeightedCentroidX")
IDENTIFIER_Y = ("Identifier.Ymin", "Identifier.Ymax", "Identifier.CentroidY", "Identifier.WeightedCentroidY")
SHAPE_FAMILIES = ("morphometry", "fsd")


def label_image(shape: tuple[int, int], boxes: np.ndarray, outlines: np.ndarray | None, order: np.ndarray) -> np.ndarray:
    """Nuclei ``order[k]`` painted with label k + 1, in that order (a later nucleus wins where two overlap):
    filled contours, or the ellipse inscribed in each box."""
    from skimage.draw import ellipse, polygon

    labels = np.zeros(shape, np.int32)
    for k, i in enumerate(order, 1):
        if outlines is not None:
            rr, cc = polygon(outlines[i][:, 1], outlines[i][:, 0], shape)
        else:
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

    fams = tuple(f for f in families if outlines is not None or f not in SHAPE_FAMILIES)
    at_cut = np.flatnonzero(scores >= score_cut)
    order = at_cut[np.argsort(scores[at_cut], kind="stable")]  # the higher score paints last and wins overlaps
    labels = label_image(rgb.shape[:2], boxes, outlines, order)
    stains = stain.color_deconvolution(rgb, stain.STAIN_MATRIX_HE).Stains
    f = compute_nuclei_features(labels, stains[..., 0].astype(float), stains[..., 1].astype(float), families=fams)
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
