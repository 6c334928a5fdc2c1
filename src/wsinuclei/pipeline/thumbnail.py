"""``NAME.thumbnail.png``: the slide with its tissue outline, the tiles, and the nuclei found."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..morphology import sum3
from ..outputs import atomic_write_bytes
from .plan import SlidePlan


def draw_thumbnail(plan: SlidePlan, path: Path, nuclei: np.ndarray | None = None, types=None) -> None:
    """The slide thumbnail with the tissue outline (green) and the tile grid: processed tiles' cores in
    blue, skipped ones in grey. With ``nuclei`` (boxes in base pixels, those at the score cut) it shows what
    was found too: a red dot per nucleus while dots stay apart, else a density map (nuclei per mm²); with
    ``types`` (``outputs.Types`` of those nuclei) boxes and dots take their type's colour and the legend counts
    each type."""
    from PIL import Image, ImageDraw

    img = plan.thumb.copy()
    ds = plan.thumb_downsample
    legend = None
    if nuclei is not None and len(nuclei):
        colours = None if types is None else np.array([types.colour(i) for i in range(len(types.names))],
                                                      np.uint8)[types.index]
        img, legend = overlay_nuclei(img, nuclei, ds, plan.ctx.mpp, colours)
        if types is not None and not legend.endswith("(inferno)"):
            legend = f"{len(nuclei)} nuclei: " + ", ".join(f"{n} {c}" for n, c in types.counts().items())
    img[plan.tissue_outline] = (0, 200, 0)
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    for tiles, colour in ((plan.skipped, (170, 170, 170)), (plan.tiles, (0, 0, 255))):
        for t in tiles:
            x0, y0, x1, y1 = plan.grid.clipped_core(t)
            d.rectangle([x0 / ds, y0 / ds, max(x0 / ds, x1 / ds - 1), max(y0 / ds, y1 / ds - 1)], outline=colour)
    if legend:
        font = _legend_font()
        w = d.textlength(legend, font=font) + 8
        d.rectangle([2, 2, 2 + w, 20], fill=(255, 255, 255))
        d.text((6, 4), legend, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    # zlib level 1 with run-length matching only (Z_RLE = 3): on a slide thumbnail (long runs of glass and of
    # drawn colour) faster than level 1 alone and about as small as the default level 6; lossless either way
    im.save(buf, format="PNG", compress_level=1, compress_type=3)
    atomic_write_bytes(path, buf.getvalue())


#: a density map replaces dots once this share of the dots would touch another (thumbnail pixels)
DOTS_MAX_CROWDING = 0.05


DENSITY_CELL_UM = 50.0  # density-map cell edge (at least 4 thumbnail pixels)


OUTLINE_MAX_UM_PER_PX = 2.0  # thumbnail pixels this fine show each nucleus's box, not a dot


def overlay_nuclei(img: np.ndarray, boxes: np.ndarray, ds: float, mpp: float,
                   colours: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Draw nuclei (boxes in base pixels) on a thumbnail of ``ds`` base pixels per pixel: their boxes where a
    thumbnail pixel is at most 2 µm (a nucleus spans several pixels), red dots while dots stay apart, else a
    density map (nuclei per mm² in 50-µm cells). ``colours`` (N, 3): each nucleus' box or dot colour instead.
    Returns the image and a legend line."""
    h, w = img.shape[:2]
    if ds * mpp <= OUTLINE_MAX_UM_PER_PX:
        from PIL import Image, ImageDraw

        im = Image.fromarray(img)
        d = ImageDraw.Draw(im)
        for i, (x0, y0, x1, y1) in enumerate(boxes / ds):
            colour = (0, 200, 90) if colours is None else tuple(int(c) for c in colours[i])
            d.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour)
        return np.asarray(im).copy(), f"{len(boxes)} nuclei (green boxes)"
    cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2 / ds).astype(int), 0, w - 1)
    cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2 / ds).astype(int), 0, h - 1)
    per_pixel = np.bincount(cy * w + cx, minlength=h * w).reshape(h, w)
    # a dot is crowded when another shares its pixel or touches it: then dots merge into blobs
    near = sum3(per_pixel)
    occupied = per_pixel > 0
    crowded = (near[occupied] > 1).sum() / max(1, occupied.sum())
    if crowded <= DOTS_MAX_CROWDING:
        img[cy, cx] = (220, 0, 0) if colours is None else colours
        return img, f"{len(boxes)} nuclei (red dots)"
    from matplotlib import colormaps

    c = max(4, int(round(DENSITY_CELL_UM / (ds * mpp))))
    gh, gw = -(-h // c), -(-w // c)
    counts = np.bincount((cy // c) * gw + cx // c, minlength=gh * gw).reshape(gh, gw).astype(float)
    cell_mm2 = (c * ds * mpp / 1000.0) ** 2
    density = counts / cell_mm2
    top = float(np.percentile(density[density > 0], 99)) or 1.0
    rgba = colormaps["inferno"](np.clip(density / top, 0, 1))
    rgba = np.repeat(np.repeat(rgba, c, axis=0), c, axis=1)[:h, :w]
    alpha = np.where(np.repeat(np.repeat(counts, c, axis=0), c, axis=1)[:h, :w] > 0, 0.6, 0.0)[..., None]
    img = (img * (1 - alpha) + rgba[..., :3] * 255 * alpha).astype(np.uint8)
    return img, f"{len(boxes)} nuclei; density up to {top:,.0f}/mm² (inferno)"


def _legend_font():
    """DejaVu Sans from matplotlib's data (a dependency; found without importing matplotlib, a third of a
    second): PIL's built-in font has no µ or ²."""
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            return ImageFont.truetype(str(Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"), 13)
        except OSError:
            continue
    return ImageFont.load_default()
