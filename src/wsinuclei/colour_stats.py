"""Reinhard source statistics of a slide: the lαβ mean and σ of its tissue, sampled at the model's µm/px.

Why not the thumbnail: a 40x slide tens of thousands of pixels wide has a thumbnail at 1/30 to 1/50 scale,
where every pixel averages nuclei with the stroma around them, so the colour spread σ falls to about half of
what the tiles the model sees have (measured on MoNuSeg: full-resolution/thumbnail σ ratios 2.06, 2.31 and
1.83 at 1/32 scale), and every tile is then over-stretched. The thumbnail only says *where* the tissue is;
the colours are read from seeded random patches inside it, at the resolution Reinhard is applied at: the
model's, or the slide's own where tiles are read enlarged (``Slide.read_region``: normalised, then interpolated).

One definition for training (``data.prepare``), evaluation and inference (``pipeline.plan_slide``): an
image in a training set is treated exactly as a slide is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import stain
from .errors import WsinucleiError
from .morphology import dilate_square
from .slide import Slide
from .tissue import slide_tissue

#: How the statistics are taken; stored in run.json and model files so results say what they used.
DEFINITION = "tissue-patches-v1"


@dataclass
class LabStats:
    mean: np.ndarray
    std: np.ndarray
    pixels: int  # tissue pixels the statistics were computed from
    patches: int
    mpp: float
    definition: str = DEFINITION

    def as_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "pixels": int(self.pixels), "patches": int(self.patches), "mpp": float(self.mpp),
                "definition": self.definition}


def sample_tissue_points(mask: np.ndarray, mask_downsample: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points (x, y in base pixels) spread evenly over the tissue of a mask whose pixels are
    ``mask_downsample`` base pixels wide.

    Stratified sampling: the tissue mask pixels in raster order cut into ``n`` equal runs, one pixel at random
    from each, then a uniform position inside it. Every part of the tissue gets its share of points (simple random sampling leaves
    one region of a slide with a few percent more or less than its share, which moves σ by as much).
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise WsinucleiError("no tissue to sample colour statistics from")
    pick = np.floor((rng.random(n) + np.arange(n)) * len(ys) / n).astype(int).clip(0, len(ys) - 1)
    jitter = rng.random((n, 2))
    return np.stack([(xs[pick] + jitter[:, 0]) * mask_downsample, (ys[pick] + jitter[:, 1]) * mask_downsample], axis=1)


def tissue_lab_stats(slide: Slide, mask: np.ndarray, mask_downsample: float, mpp: float, *,
                     patches: int = 2048, patch_size: int = 32, seed: int = 0) -> LabStats:
    """lαβ mean/σ of a slide's tissue at ``mpp`` µm/px from ``patches`` seeded patches of ``patch_size``
    pixels centred on random tissue points; only pixels that the mask calls tissue count.

    The cost is fixed (about a million pixels read in small regions) whatever the slide's size. A mask with no
    tissue falls back to the whole slide.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        mask = np.ones_like(mask)
    rng = np.random.default_rng(seed)
    scale = mpp / slide.require_mpp()  # base pixels per pixel at mpp
    half = patch_size * scale / 2
    offsets = (np.arange(patch_size) + 0.5) * scale  # pixel centres, base pixels from the patch's corner
    H, W = mask.shape
    # Patch centres are spread over the tissue grown by half a patch, so that a pixel at the tissue's edge is
    # as likely to fall in some patch as one in its middle (centres on the tissue alone under-sample edges).
    reach = int(np.ceil(half / mask_downsample))
    # a square dilation, as a separable maximum filter: the same pixels as binary_dilation with a square, in
    # constant time per pixel instead of time growing with the square's area (seconds on large reaches)
    region = dilate_square(mask, reach) if reach else mask
    centres = sample_tissue_points(region, mask_downsample, patches, rng)
    # on the grid of pixels at ``mpp`` (as tiles are): an off-grid read would be interpolated, which smooths
    # the pixels and lowers σ
    x0s = np.round((centres[:, 0] - half) / scale) * scale
    y0s = np.round((centres[:, 1] - half) / scale) * scale
    rgb = slide.read_patches(x0s, y0s, patch_size, mpp)
    ys, xs = y0s[:, None] + offsets, x0s[:, None] + offsets  # (patches, patch_size) base-pixel centres
    rows = np.clip((ys / mask_downsample).astype(int), 0, H - 1)
    cols = np.clip((xs / mask_downsample).astype(int), 0, W - 1)
    inside = ((ys >= 0) & (ys < H * mask_downsample))[:, :, None] & ((xs >= 0) & (xs < W * mask_downsample))[:, None, :]
    sel = mask[rows[:, :, None], cols[:, None, :]] & inside
    pixels = rgb[sel]  # patch by patch, row by row: the order the statistics always summed in
    if len(pixels) == 0:
        raise WsinucleiError(f"{slide.path}: no tissue pixels to take colour statistics from")
    mu, sigma = stain.lab_mean_std(pixels.reshape(-1, 1, 3))
    return LabStats(mu, sigma, len(pixels), patches, mpp)


def slide_tissue_stats(slide: Slide, mpp: float, **kwargs) -> LabStats:
    """:func:`tissue_lab_stats` with the tissue mask made from the slide's thumbnail (``tissue.slide_tissue``)."""
    _, ds, mask = slide_tissue(slide)
    return tissue_lab_stats(slide, mask, ds, mpp, **kwargs)


def image_tissue_stats(path, image_mpp: float, mpp: float, **kwargs) -> LabStats:
    """The statistics of one image file (a training or test image standing for a slide)."""
    with Slide(path, mpp=image_mpp) as slide:
        return slide_tissue_stats(slide, mpp, **kwargs)
