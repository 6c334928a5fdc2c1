"""Planning a slide: its µm/px and the resolution tiles are read at, the tissue mask, the Reinhard source
statistics, and the tile grid with the tiles that run."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..colour_stats import sample_tissue_points, tissue_lab_stats
from ..errors import NoTissue, WsinucleiError
from ..morphology import CROSS, binary_dilation
from ..slide import Slide
from ..tiles import Tile, TileGrid
from ..tissue import region_fraction, slide_tissue
from .options import RunOptions, SlideContext, TileResult


@dataclass
class SlidePlan:
    slide: Slide
    ctx: SlideContext
    grid: TileGrid
    tiles: list[Tile]
    skipped: list[Tile]
    thumb: np.ndarray
    thumb_downsample: float
    mask: np.ndarray
    roi: tuple[int, int, int, int]
    # per tile key: (tissue fraction of its core, seconds the check took); computed once here, on the
    # thumbnail's mask, so workers need neither the mask nor a second pass
    tissue: dict = field(default_factory=dict)
    lab_stats: dict = field(default_factory=dict)  # the Reinhard source statistics and how they were taken
    regions: list | None = None  # with --regions: the drawn regions (regions.Region)
    region_area: object = None  # and their union, made once when planning (prepared for many tests)
    outside_regions: int = 0  # tiles not run because their core touches no region
    norm_info: dict | None = None  # --norm-statistics slide: how the statistics were taken (run.json)
    all_tissue: bool = False  # --no-tissue-mask: the user says every pixel is tissue (tile_tissue_mm2)

    @functools.cached_property
    def tissue_outline(self) -> np.ndarray:
        """The thumbnail pixels just outside the tissue mask (the thumbnail's green line), found once: glass
        pixels with a tissue pixel above, below or beside them (skimage's ``find_boundaries(mode="outer")`` on a
        binary mask, without its label-image machinery)."""
        return binary_dilation(self.mask, CROSS) & ~self.mask

    def tile_tissue_mm2(self, t) -> float:
        """The tissue in a tile's core (cut to the area the grid covers), in mm²: the core's area times its tissue
        fraction, or the whole core where none was measured or the run says all is tissue (``--no-tissue-mask``)."""
        x0, y0, x1, y1 = self.grid.clipped_core(t)
        frac = None if self.all_tissue else self.tissue.get(t.key, (None, 0.0))[0]
        return (x1 - x0) * (y1 - y0) * (self.ctx.mpp / 1000.0) ** 2 * (1.0 if frac is None else frac)

    def add_tissue(self, r: "TileResult") -> None:
        frac, secs = self.tissue.get(r.key, (None, 0.0))
        r.profile.update(tissue_fraction=None if frac is None else round(frac, 4), tissue_s=secs)


def run_mpp(slide_mpp: float, model_mpp: float, mpp_range: tuple[float, float] | None) -> float:
    """The µm/px tiles are read at: the slide's own when the model serves it (no resampling: a 20x slide is
    not upsampled to 40x, a quarter of the pixels), else the nearest end of the model's range."""
    if not mpp_range:
        return model_mpp
    lo, hi = mpp_range
    return float(min(max(slide_mpp, lo), hi))


def plan_slide(path: str | Path, opts: RunOptions, model_mpp: float, input_channels: str, target_mu, target_sigma,
               model_path: str | None, mpp_range: tuple[float, float] | None = None) -> SlidePlan:
    opts.validate()  # a library caller's options too: ranges checked, the overlap's default filled in
    slide = Slide(path, mpp=opts.mpp)
    try:
        if opts.read_mpp is not None:
            lo, hi = mpp_range or (model_mpp, model_mpp)
            if not lo - 1e-9 <= opts.read_mpp <= hi + 1e-9:
                raise WsinucleiError(f"--read-mpp {opts.read_mpp:g}: this model reads {lo:g}"
                                     + (f" to {hi:g}" if hi != lo else "") + " µm/px")
            model_mpp = float(opts.read_mpp)
        elif mpp_range and opts.native_resolution:
            model_mpp = run_mpp(slide.require_mpp(), model_mpp, mpp_range)
        return _plan(slide, path, opts, model_mpp, input_channels, target_mu, target_sigma, model_path)
    except BaseException:
        slide.close()
        raise


def _plan(slide: Slide, path, opts: RunOptions, model_mpp: float, input_channels: str, target_mu, target_sigma,
          model_path: str | None) -> SlidePlan:
    mpp = slide.require_mpp()
    if mpp / model_mpp > MAX_ENLARGEMENT:
        raise WsinucleiError(f"{path}: at {mpp:g} µm/px, reading it at the model's {model_mpp:g} µm/px would enlarge "
                             f"it {mpp / model_mpp:.0f}x (at most {MAX_ENLARGEMENT:g}x); check --mpp")
    W, H = slide.dimensions
    if opts.roi is not None:
        x, y, w, h = opts.roi
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
            raise WsinucleiError(f"--roi {x},{y},{w},{h} is not inside the slide ({W}x{H})")
        roi = (x, y, w, h)
    else:
        roi = (0, 0, W, H)
    regions = area = None
    if opts.regions is not None:  # run the regions' bounding box, and in it only the tiles that touch them
        import shapely

        from ..regions import check_regions_frame, read_regions, region_union

        regions = read_regions(opts.regions)
        check_regions_frame(regions, (W, H), opts.regions)
        area = region_union(regions)
        x0, y0, x1, y1 = area.intersection(shapely.box(0, 0, W, H)).bounds
        x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        roi = (x0, y0, max(1, min(W, int(np.ceil(x1))) - x0), max(1, min(H, int(np.ceil(y1))) - y0))
        shapely.prepare(area)
    if opts.roi is None and opts.regions is None and slide.best_level(model_mpp / mpp) == 0:
        # a small slide read at its base level: read it once here (planning and in-process tiles share this
        # handle), not once per colour patch and tile; a large one is left as it is (Slide.HOLD_PIXELS)
        slide.hold_base_level()
    thumb, ds, mask = slide_tissue(slide)
    if not mask.any() and (opts.tissue_mask or opts.lab_stats is None):
        mean = ", ".join(f"{v:.0f}" for v in thumb.reshape(-1, 3).mean(0))
        why = (f"{path}: no tissue found (no stained area: the image's mean colour is RGB {mean}, its darkest "
               f"pixel {int(thumb.min())})")
        if not opts.tissue_mask:
            why += "; --no-tissue-mask runs every tile, but the colour normalisation is measured on tissue"
        raise NoTissue(why)
    if opts.lab_stats is not None:
        mu, sigma = opts.lab_stats
        lab_info = {"mean": [float(v) for v in mu], "std": [float(v) for v in sigma], "definition": "given"}
    else:  # sampled where the tiles are normalised: a thumbnail's averaged pixels would halve σ on a big slide,
        # and a slide read enlarged (20x at 0.25 µm/px) is normalised on its own pixels, whose σ interpolation lowers
        stats = tissue_lab_stats(slide, mask, ds, slide.colour_map_mpp(model_mpp))
        mu, sigma, lab_info = stats.mean, stats.std, stats.as_dict()
    scale = model_mpp / mpp
    # an ROI (or the regions' box) is run with half an overlap of the slide around it where the slide has pixels,
    # as a tile core is: a nucleus cut by its edge is outlined from the whole nucleus, as the whole-slide run
    # outlines it (without, 1-2 % of an ROI's nuclei changed, nearly all at its edge); only nuclei whose
    # centre lies inside are reported
    covered = roi if roi == (0, 0, W, H) else with_context(roi, opts.overlap / 2 * scale, W, H)
    gx, gy, gw, gh = lattice_area(covered, scale)
    tile_shape = fitted_tile_shape(opts.tile_size, opts.overlap, gw / scale, gh / scale)
    grid = TileGrid(gw, gh, scale, tile_shape, opts.overlap, origin=(gx, gy))
    if len(grid) > MAX_TILES:
        raise WsinucleiError(f"{path}: at {mpp:g} µm/px the slide would be cut into {len(grid):,} tiles (at most "
                             f"{MAX_TILES:,}); check --mpp")
    touching = None
    if area is not None:  # one vectorised test of every tile core against the regions
        touching = shapely.intersects(area, shapely.box(*np.array([grid.clipped_core(t) for t in grid]).T))
    tiles, skipped, tissue = [], [], {}
    outside = 0
    for k, t in enumerate(grid):
        if touching is not None and not touching[k]:
            outside += 1
            continue
        t0 = time.perf_counter()
        frac = region_fraction(mask, ds, *grid.clipped_core(t))
        tissue[t.key] = (frac, time.perf_counter() - t0)
        runs = not opts.tissue_mask or (frac > 0 and frac >= opts.min_tissue)
        (tiles if runs else skipped).append(t)
    if not tiles and area is not None:
        raise NoTissue(f"{path}: no tile inside the regions of {opts.regions} holds tissue")
    if not tiles:
        held = "tissue" if not opts.min_tissue else f"at least {opts.min_tissue:.0%} tissue"
        raise NoTissue(f"{path}: no tile holds {held} (see --min-tissue, --no-tissue-mask)")
    norm_stats = norm_key = norm_info = None
    if opts.norm_statistics == "slide":
        norm_stats, norm_key, norm_info = slide_norm_statistics(slide, mask, ds, model_mpp, input_channels,
                                                                target_mu, target_sigma, mu, sigma, model_path, opts)
    ctx = SlideContext(str(Path(path).resolve()), mpp, model_path, model_mpp, input_channels,
                       [float(v) for v in mu], [float(v) for v in sigma],
                       [float(v) for v in target_mu], [float(v) for v in target_sigma],
                       opts.device, opts.min_score, opts.retries, opts.score_cut,
                       tuple(opts.feature_families) if opts.features else None, backend=opts.backend,
                       embeddings=opts.embeddings, norm_stats=norm_stats, norm_key=norm_key or "")
    return SlidePlan(slide, ctx, grid, tiles, skipped, thumb, ds, mask, roi, tissue, lab_info, regions, area, outside,
                     norm_info, all_tissue=not opts.tissue_mask)


#: ``--norm-statistics slide``: windows of the slide's tissue its statistics are measured on, and their size at
#: the µm/px tiles are read at (the default tile's: what GroupNorm saw per tile)
NORM_WINDOWS = 8
NORM_WINDOW_SIZE = 1024
LATTICE = 32  # the network's coarsest stride: windows start on the tiles' lattice


def norm_windows(slide: Slide, mask: np.ndarray, ds: float, read_mpp: float, n: int = NORM_WINDOWS,
                 size: int = NORM_WINDOW_SIZE, seed: int = 0) -> list[tuple[float, float, int, int]]:
    """Where a slide's normalisation statistics are measured: ``n`` windows (x, y in base pixels, width and height
    at ``read_mpp``) centred near seeded points spread over the whole slide's tissue mask
    (``colour_stats.sample_tissue_points``), their corners on the 32-px lattice in slide coordinates. They
    depend on the slide alone, not on the tile size, the overlap, an ROI or regions: so neither do the
    statistics. A slide smaller than a window is one window, the whole slide."""
    scale = read_mpp / slide.require_mpp()  # base pixels per pixel at read_mpp
    W, H = (int(d / scale) for d in slide.dimensions)
    w, h = min(size, W), min(size, H)
    pts = sample_tissue_points(mask if mask.any() else np.ones_like(mask), ds, n, np.random.default_rng(seed)) / scale
    out = []
    for px, py in pts:
        x = int(np.clip(np.floor((px - w / 2) / LATTICE) * LATTICE, 0, (W - w) // LATTICE * LATTICE))
        y = int(np.clip(np.floor((py - h / 2) / LATTICE) * LATTICE, 0, (H - h) // LATTICE * LATTICE))
        out.append((x * scale, y * scale, w, h))
    return out


def slide_norm_statistics(slide: Slide, mask, ds, read_mpp, input_channels, target_mu, target_sigma, src_mu, src_sigma,
                          model_path, opts: RunOptions):
    """The slide's GroupNorm statistics (``models/norm_statistics.py``), measured on :func:`norm_windows` read and
    normalised as tiles are, by the runtime that will run the tiles. Returns them (JSON-ready), their digest and
    what run.json records."""
    from .. import stain
    from ..inference import measure_norm_statistics
    from ..models import norm_statistics as ns

    t0 = time.perf_counter()
    table = stain.ReinhardTable(target_mu, target_sigma, src_mu, src_sigma)
    wins = norm_windows(slide, mask, ds, read_mpp)
    # the distinct windows, each read and measured once (a slide no larger than a window is one window, not
    # the same one eight times)
    crops = [stain.model_input(slide.read_region(x, y, w, h, read_mpp, colour_map=table), input_channels)
             for x, y, w, h in sorted(set(wins), key=wins.index)]
    stats, runtime = measure_norm_statistics(model_path, crops, opts.device, opts.backend)
    key = ns.digest(stats)
    info = {"definition": ns.DEFINITION, "windows": [[round(x, 1), round(y, 1), w, h] for x, y, w, h in wins],
            "runtime": runtime, "layers": len(stats), "digest": key, "seconds": round(time.perf_counter() - t0, 3)}
    return ns.to_lists(stats), key, info


TISSUE_MARGIN_UM = 20.0  # the tissue mask is grown by this before detections are checked against it


def on_tissue(boxes: np.ndarray, mask: np.ndarray, ds: float, mpp: float, margin_um: float = TISSUE_MARGIN_UM) -> np.ndarray:
    """Which boxes have their centre on the tissue mask (``ds`` base pixels per mask pixel) grown by
    ``margin_um``: the mask is drawn at thumbnail scale, so a nucleus at the very edge of tissue is kept.

    A centre on a tissue pixel is kept as it is; one off the tissue is kept when some tissue pixel lies within
    the margin (the Euclidean distance between pixel centres, as ``distance_transform_edt`` measures it). Only
    the disc around each such centre is looked at, not the whole thumbnail (a distance transform of it costs
    0.3-0.6 s at 2048 px); off-tissue centres are few, those on glass beside the tissue's edge."""
    keep = np.zeros(len(boxes), bool)
    if not mask.any() or len(boxes) == 0:
        return keep
    grow = max(1.0, margin_um / (ds * mpp))
    h, w = mask.shape
    cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2 / ds).astype(int), 0, w - 1)
    cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2 / ds).astype(int), 0, h - 1)
    keep = mask[cy, cx]
    off = np.flatnonzero(~keep)
    if len(off):
        r = int(np.floor(grow))
        dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
        disc = dy ** 2 + dx ** 2 <= grow ** 2
        dy, dx = dy[disc], dx[disc]
        padded = np.pad(mask, r)  # glass beyond the thumbnail
        for i in range(0, len(off), 4096):  # bounded memory: a chunk of centres times the disc's offsets
            part = off[i : i + 4096]
            keep[part] = padded[cy[part, None] + r + dy, cx[part, None] + r + dx].any(axis=1)
    return keep


#: a plan reading the slide more than this many times enlarged is refused (a wrong --mpp, not a slide)
MAX_ENLARGEMENT = 4.0
#: a plan of more tiles than this is refused: a 200,000 x 200,000 px 40x slide needs about 45,000
MAX_TILES = 1_000_000
#: the network's coarsest stride (model pixels): every tile starts on this lattice in slide coordinates
LATTICE = 32


def with_context(roi: tuple, margin: float, width: int, height: int) -> tuple[float, float, float, float]:
    """``roi`` (x, y, w, h in base pixels) grown by ``margin`` base pixels on every side, inside the slide."""
    x, y, w, h = roi
    x0, y0 = max(0.0, x - margin), max(0.0, y - margin)
    x1, y1 = min(float(width), x + w + margin), min(float(height), y + h + margin)
    return x0, y0, x1 - x0, y1 - y0


def lattice_area(roi: tuple, scale: float) -> tuple[float, float, float, float]:
    """The area the tile grid covers for ``roi`` (x, y, w, h in base pixels; ``scale`` base pixels per model
    pixel): the ROI grown up and left to the nearest point of the lattice of :data:`LATTICE` model pixels laid
    from the slide's origin. A nucleus is then read at the same phase of the network's strides whether the run
    covers the whole slide or an ROI at any origin (off the lattice its decoded centres and outlines shift by up
    to a stride, and half the nuclei of an ROI at (333, 217) changed). Only nuclei whose centre lies in the ROI
    are reported."""
    x, y, w, h = roi
    step = LATTICE * scale
    gx, gy = math.floor(x / step + 1e-9) * step, math.floor(y / step + 1e-9) * step
    return gx, gy, w + (x - gx), h + (y - gy)


def fitted_tile_shape(tile: int, overlap: int, width: float, height: float) -> tuple[int, int]:
    """The (width, height) of the tiles for an area of ``width`` x ``height`` model pixels: along each axis, the
    fewest tiles of at most ``tile`` that cover the area, made as short as still covers it (a multiple of 32,
    as the network pads to 32; never below overlap + 32 or 64).

    Padding is not neutral: the detector's GroupNorm statistics cover the whole tile, and a 512-px image in a
    1024-px tile (three quarters glass) gave three times as many boxes as the same image read in a 512-px tile.
    Nor is it free: a 20x slide read at 0.25 µm/px (CMU-1-Small-Region, 4431 x 5922 model px) needs 5 x 7 tiles
    of 1024, whose last row would be 84 % beyond the slide; 5 x 7 tiles of 960 x 928 cover it with the same
    count and 15 % fewer pixels."""
    def side(extent: float) -> int:
        n = max(1, math.ceil((extent - overlap) / (tile - overlap)))  # as many tiles as ``tile`` needs
        need = math.ceil((extent - overlap) / n + overlap)
        return int(max(min(tile, -(-need // 32) * 32), overlap + 32, 64))

    return side(width), side(height)
