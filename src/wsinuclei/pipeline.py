"""Whole-slide detection: tissue, tiles, stain steps, inference, seam-safe merging, outputs, profile.

One pipeline with three executors: in-process (with reader threads and batched inference, the GPU path),
a local Dask cluster, or an existing Dask cluster by scheduler address. Workers open the slide by path and
load the model once per process; only tile coordinates travel to them and only boxes come back.

Per-tile results are saved as they finish under ``OUT/.NAME.parts/<settings-hash>/``; rerunning the same
command skips finished tiles, so an interrupted run resumes and gives the same output. The final files are
written atomically once every tile is done.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import stain
from .colour_stats import tissue_lab_stats
from .errors import WsinucleiError
from .outputs import atomic_write_bytes, write_outputs
from .slide import Slide
from .tiles import Tile, TileGrid
from .tissue import region_fraction, tissue_mask

#: The score cut the shipped models' figures are quoted at (their scores are calibrated so that 0.5 is the
#: best validation cut); lower-scoring boxes are written for precision-recall curves, not as nuclei.
OPERATING_POINT = 0.5

PROFILE_FIELDS = ["tile", "x", "y", "tissue_fraction", "read_s", "tissue_s", "reinhard_s", "deconvolution_s",
                  "inference_s", "postprocess_s", "features_s", "nuclei", "worker", "attempts"]


@dataclass
class RunOptions:
    mpp: float | None = None  # override the slide's µm/px
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h in base pixels
    tile_size: int = 1024
    overlap: int = 64
    min_tissue: float = 0.0  # a tile runs when its core holds more tissue than this (0: any tissue at all)
    tissue_mask: bool = True  # False: run every tile and keep every detection (images that are all tissue)
    native_resolution: bool = True  # slides inside the model's µm/px range run at their own resolution
    model: str | None = None  # path; None = the shipped default
    min_score: float = 0.1  # floor for the CSV: every box at or above it, for precision-recall work
    score_cut: float = OPERATING_POINT  # what counts as a nucleus: the GeoJSON, the DSA file and the count
    device: str = "cpu"
    batch_size: int = 1
    readers: int = 2
    workers: int = 0  # 0 = in-process; N = local Dask cluster with N worker processes
    scheduler: str | None = None  # address of an existing Dask scheduler
    force: bool = False
    gzip: bool = False
    retries: int = 2
    progress: bool = True
    keep_parts: bool = False
    # Reinhard source statistics (lab mean, lab std) to use instead of the slide's own: for a region cut
    # out of a larger slide, pass the whole slide's so the region is normalised as the slide would be.
    lab_stats: tuple | None = None
    # recorded in the annotation's attributes beside the options (the DSA CLI puts its own arguments here)
    extra_params: dict | None = None
    # a Slurm cluster (dask-jobqueue): each job is one Dask worker running the same tile tasks
    cluster: str | None = None  # None or "slurm"
    jobs: int = 2
    slurm_queue: str | None = None
    slurm_account: str | None = None
    slurm_cores: int = 4
    slurm_memory: str = "16GB"
    slurm_walltime: str = "02:00:00"
    slurm_wait_s: float = 600.0  # how long to wait for the first job to start
    features: bool = False  # measure every nucleus at the score cut: NAME.nuclei.parquet and NAME.bag.parquet
    feature_families: tuple = ("morphometry", "fsd", "intensity", "gradient")

    def validate(self) -> "RunOptions":
        """Every option in its range, and only executor/device combinations that work; one clear error each."""
        def integer(name, value, low, high):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise WsinucleiError(f"--{name} must be a whole number from {low} to {high}, got {value}")

        integer("tile-size", self.tile_size, 64, 16384)
        integer("overlap", self.overlap, 0, self.tile_size - 1)
        integer("batch-size", self.batch_size, 1, 256)
        integer("readers", self.readers, 1, 64)
        integer("workers", self.workers, 0, 1024)
        integer("retries", self.retries, 0, 10)
        for name, value in (("min-tissue", self.min_tissue), ("min-score", self.min_score),
                            ("score-cut", self.score_cut)):
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise WsinucleiError(f"--{name} must be a number from 0 to 1, got {value}")
        if self.features:
            from .features import FAMILIES

            unknown = [f for f in self.feature_families if f not in FAMILIES]
            if unknown or not self.feature_families:
                raise WsinucleiError(f"--feature-families: unknown {', '.join(unknown) or '(none given)'}; "
                                     f"known: {', '.join(FAMILIES)}")
        if self.score_cut < self.min_score:
            raise WsinucleiError(f"--score-cut {self.score_cut:g} is below --min-score {self.min_score:g}: boxes "
                                 "under --min-score are never kept; lower --min-score too")
        if self.mpp is not None and not (self.mpp > 0 and np.isfinite(self.mpp)):
            raise WsinucleiError(f"--mpp must be a positive number, got {self.mpp}")
        if self.scheduler and self.workers:
            raise WsinucleiError("--workers starts a local Dask cluster and --scheduler uses a running one: give one of them")
        if self.cluster is not None:
            if self.cluster != "slurm":
                raise WsinucleiError(f"--cluster {self.cluster}: only slurm is supported")
            if self.scheduler or self.workers:
                raise WsinucleiError("--cluster slurm starts its own Dask workers as Slurm jobs: leave out --workers "
                                     "and --scheduler")
            integer("jobs", self.jobs, 1, 10000)
            integer("slurm-cores", self.slurm_cores, 1, 1024)
            if self.device.startswith("cuda:"):
                raise WsinucleiError("with --cluster slurm each job takes its own GPU: give --device cuda")
        if self.batch_size > 1 and (self.scheduler or self.workers or self.cluster):
            raise WsinucleiError("--batch-size batches tiles in-process; with --workers or --scheduler each Dask task "
                                 "is one tile (leave --batch-size at 1)")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise WsinucleiError(f"--device {self.device}: expected cpu, cuda or cuda:N")
        if self.device.startswith("cuda:") and (self.workers or self.scheduler):
            raise WsinucleiError("with Dask each worker takes its own GPU: give --device cuda, not a numbered device")
        return self


@dataclass
class SlideContext:
    """Everything a worker needs to process any tile of one slide (small; sent with each task)."""

    path: str
    mpp: float
    model: str | None
    model_mpp: float
    input_channels: str
    src_mu: list[float]
    src_sigma: list[float]
    target_mu: list[float]
    target_sigma: list[float]
    tile_size: int
    device: str = "cpu"
    min_score: float = 0.1
    retries: int = 2
    score_cut: float = OPERATING_POINT
    features: tuple | None = None  # feature families to measure, None for none


@dataclass
class TileResult:
    key: str
    boxes: np.ndarray
    scores: np.ndarray
    profile: dict
    failed: str | None = None
    outlines: np.ndarray | None = None  # (N, rays, 2) nuclear contours in base pixels, for contour models
    features: dict | None = None  # column -> (N,) values, for runs with --features (NaN under the score cut)


# -- worker-side state: one model and one open slide per process ----------------------------------------
_STATE: dict = {}
_STATE_LOCK = threading.Lock()


def _detector(model_path: str | None, device: str):
    from .inference import NucleusDetector

    key = ("model", model_path, device)
    with _STATE_LOCK:
        if key not in _STATE:
            _STATE[key] = NucleusDetector.from_file(model_path, device=device)
        return _STATE[key]


def _slide(path: str, mpp: float) -> Slide:
    """This process's handle on a slide: OpenSlide handles are thread-safe, so reader threads share one."""
    key = ("slide", path, mpp)
    with _STATE_LOCK:
        if key not in _STATE:
            _STATE[key] = Slide(path, mpp=mpp)
        return _STATE[key]


def _worker_name() -> str:
    """The Dask worker's name, or ``pidN`` outside Dask; looked up once per process."""
    name = _STATE.get("worker_name")
    if name is None:
        try:
            from distributed import get_worker

            name = str(get_worker().name)
        except (ImportError, ValueError):  # ValueError: not running inside a Dask worker
            name = f"pid{os.getpid()}"
        _STATE["worker_name"] = name
    return name


def read_and_preprocess(ctx: SlideContext, tile: Tile) -> tuple[np.ndarray, dict, np.ndarray]:
    """Read a tile at the model's µm/px and turn it into network input; times each stage. Returns the input,
    the timings and the Reinhard-normalised RGB (what features are measured on)."""
    prof = {"tile": tile.key, "x": round(tile.x, 1), "y": round(tile.y, 1)}
    attempts, last_exc = 0, None
    t0 = time.perf_counter()
    while attempts <= ctx.retries:
        attempts += 1
        try:
            rgb = _slide(ctx.path, ctx.mpp).read_region(tile.x, tile.y, tile.size, tile.size, ctx.model_mpp)
            break
        except WsinucleiError as exc:  # a corrupt region: retry, then report the tile as failed
            last_exc = exc
    else:
        raise TileReadError(str(last_exc), attempts)
    prof["attempts"] = attempts
    prof["read_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    normalised = stain.reinhard(rgb, ctx.target_mu, ctx.target_sigma, src_mu=ctx.src_mu, src_sigma=ctx.src_sigma)
    prof["reinhard_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = stain.model_input(normalised, ctx.input_channels)
    prof["deconvolution_s"] = time.perf_counter() - t0
    return x, prof, normalised


class TileReadError(Exception):
    def __init__(self, msg, attempts):
        super().__init__(msg)
        self.attempts = attempts


def postprocess(ctx: SlideContext, tile: Tile, boxes: np.ndarray, scores: np.ndarray, prof: dict,
                outlines: np.ndarray | None = None, rgb: np.ndarray | None = None) -> TileResult:
    """Tile pixels -> base pixels; keep what this tile's core owns and what clears the score floor. A kept
    nucleus keeps its whole contour, as this tile (which sees all of it) drew it, and is measured here, on
    this tile's pixels (``rgb``, when the run asks for features)."""
    t0 = time.perf_counter()
    scale = ctx.model_mpp / ctx.mpp
    b = boxes * scale + np.array([tile.x, tile.y, tile.x, tile.y])
    base_outlines = None if outlines is None else outlines * scale + np.array([tile.x, tile.y])
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    x0, y0, x1, y1 = tile.core
    keep = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1) & (scores >= ctx.min_score)
    prof["postprocess_s"] = time.perf_counter() - t0
    features = None
    if ctx.features and rgb is not None:
        from .features.tiles import tile_features

        t0 = time.perf_counter()
        features = tile_features(rgb, boxes, scores, outlines, np.flatnonzero(keep), ctx.score_cut, ctx.model_mpp,
                                 lambda x, y: (x * scale + tile.x, y * scale + tile.y), ctx.features)
        prof["features_s"] = time.perf_counter() - t0
    prof["nuclei"] = int(keep.sum())
    prof["worker"] = _worker_name()
    return TileResult(tile.key, b[keep], scores[keep], prof,
                      outlines=None if base_outlines is None else base_outlines[keep], features=features)


def process_tile(ctx: SlideContext, tile: Tile) -> TileResult:
    """The unit of work every executor runs (Dask tasks call this)."""
    try:
        x, prof, rgb = read_and_preprocess(ctx, tile)
    except TileReadError as exc:
        return _failed(tile, str(exc), exc.attempts)
    t0 = time.perf_counter()
    (boxes, scores, outlines), = _detector(ctx.model, ctx.device).predict_instances([x])
    prof["inference_s"] = time.perf_counter() - t0
    return postprocess(ctx, tile, boxes, scores, prof, outlines, rgb)


def _failed(tile: Tile, msg: str, attempts: int) -> TileResult:
    prof = {"tile": tile.key, "x": round(tile.x, 1), "y": round(tile.y, 1), "attempts": attempts,
            "worker": _worker_name(), "nuclei": 0}
    return TileResult(tile.key, np.zeros((0, 4)), np.zeros(0), prof, failed=msg)


# -- merging --------------------------------------------------------------------------------------------
def merge_seams(grid: TileGrid, results: dict[str, TileResult], iou_threshold: float = 0.5, with_tiles: bool = False):
    """Concatenate kept detections (boxes, scores and, for contour models, outlines) and remove duplicates
    across seams (with ``with_tiles``, also each survivor's tile key and its row in that tile's result, which
    is where its features are): NMS between each pair of
    neighbouring tiles only (right, below, below-left, below-right), over boxes within reach of the seam.

    Every kept box has its centre in its own tile's core, so a box of tile A can overlap a box of tile B only
    if it reaches into B's core grown by half of B's largest box: only those candidates are compared (a dense
    tile pair costs a few hundred boxes each side instead of a full 2,000 x 2,000 IoU matrix)."""
    from .evaluate import box_iou

    by_tile = {k: r for k, r in results.items() if r.failed is None and len(r.boxes)}
    suppressed = {k: np.zeros(len(r.boxes), bool) for k, r in by_tile.items()}
    cores, reach = {}, {}
    for key, r in by_tile.items():
        row, col = (int(v) for v in key.split("_"))
        cores[key] = np.array(grid.tile_at(col, row).core, float)
        reach[key] = float(np.max(np.maximum(r.boxes[:, 2] - r.boxes[:, 0], r.boxes[:, 3] - r.boxes[:, 1]))) / 2

    def near(boxes, core, margin):
        x0, y0, x1, y1 = core[0] - margin, core[1] - margin, core[2] + margin, core[3] + margin
        return np.flatnonzero((boxes[:, 2] > x0) & (boxes[:, 0] < x1) & (boxes[:, 3] > y0) & (boxes[:, 1] < y1))

    for key, a in by_tile.items():
        row, col = (int(v) for v in key.split("_"))
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            nkey = f"{row + dr:05d}_{col + dc:05d}"
            if nkey not in by_tile:
                continue
            b = by_tile[nkey]
            ia = near(a.boxes, cores[nkey], reach[nkey])
            ib = near(b.boxes, cores[key], reach[key])
            if not len(ia) or not len(ib):
                continue
            iou = box_iou(a.boxes[ia], b.boxes[ib])
            for i, j in zip(*np.nonzero(iou > iou_threshold)):
                i, j = ia[i], ib[j]
                if suppressed[key][i] or suppressed[nkey][j]:
                    continue
                if a.scores[i] >= b.scores[j]:
                    suppressed[nkey][j] = True
                else:
                    suppressed[key][i] = True
    keys = sorted(by_tile)
    if not keys:
        empty = (np.zeros((0, 4)), np.zeros(0), None)
        return empty + (np.zeros(0, dtype=object), np.zeros(0, int)) if with_tiles else empty
    boxes = np.concatenate([by_tile[k].boxes[~suppressed[k]] for k in keys])
    scores = np.concatenate([by_tile[k].scores[~suppressed[k]] for k in keys])
    outlines = None
    if all(by_tile[k].outlines is not None for k in keys):
        outlines = np.concatenate([by_tile[k].outlines[~suppressed[k]] for k in keys])
    # a stable, executor-independent order: by row of centre, then column
    order = np.lexsort(((boxes[:, 0] + boxes[:, 2]), (boxes[:, 1] + boxes[:, 3])))
    merged = boxes[order], scores[order], (None if outlines is None else outlines[order])
    if not with_tiles:
        return merged
    tile_of = np.concatenate([np.full((~suppressed[k]).sum(), k, dtype=object) for k in keys])
    row_of = np.concatenate([np.flatnonzero(~suppressed[k]) for k in keys])
    return merged + (tile_of[order], row_of[order])


# -- planning ------------------------------------------------------------------------------------------
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
    slide = Slide(path, mpp=opts.mpp)
    try:
        if mpp_range and opts.native_resolution:
            model_mpp = run_mpp(slide.require_mpp(), model_mpp, mpp_range)
        return _plan(slide, path, opts, model_mpp, input_channels, target_mu, target_sigma, model_path)
    except BaseException:
        slide.close()
        raise


def _plan(slide: Slide, path, opts: RunOptions, model_mpp: float, input_channels: str, target_mu, target_sigma,
          model_path: str | None) -> SlidePlan:
    mpp = slide.require_mpp()
    W, H = slide.dimensions
    if opts.roi is not None:
        x, y, w, h = opts.roi
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
            raise WsinucleiError(f"--roi {x},{y},{w},{h} is not inside the slide ({W}x{H})")
        roi = (x, y, w, h)
    else:
        roi = (0, 0, W, H)
    thumb, ds = slide.thumbnail()
    mask = tissue_mask(thumb)
    if not mask.any():
        raise WsinucleiError(f"{path}: no tissue found")
    if opts.lab_stats is not None:
        mu, sigma = opts.lab_stats
        lab_info = {"mean": [float(v) for v in mu], "std": [float(v) for v in sigma], "definition": "given"}
    else:  # sampled at the model's µm/px: a thumbnail's averaged pixels would halve σ on a big slide
        stats = tissue_lab_stats(slide, mask, ds, model_mpp)
        mu, sigma, lab_info = stats.mean, stats.std, stats.as_dict()
    scale = model_mpp / mpp
    tile_size = fitted_tile_size(opts.tile_size, opts.overlap, roi[2] / scale, roi[3] / scale)
    grid = TileGrid(roi[2], roi[3], scale, tile_size, opts.overlap, origin=(roi[0], roi[1]))
    tiles, skipped, tissue = [], [], {}
    for t in grid:
        t0 = time.perf_counter()
        frac = region_fraction(mask, ds, *grid.clipped_core(t))
        tissue[t.key] = (frac, time.perf_counter() - t0)
        runs = not opts.tissue_mask or (frac > 0 and frac >= opts.min_tissue)
        (tiles if runs else skipped).append(t)
    if not tiles:
        raise WsinucleiError(f"{path}: no tile holds {'tissue' if not opts.min_tissue else f'at least {opts.min_tissue:.0%} tissue'} "
                             "(see --min-tissue, --no-tissue-mask)")
    ctx = SlideContext(str(Path(path).resolve()), mpp, model_path, model_mpp, input_channels,
                       [float(v) for v in mu], [float(v) for v in sigma],
                       [float(v) for v in target_mu], [float(v) for v in target_sigma], tile_size,
                       opts.device, opts.min_score, opts.retries, opts.score_cut,
                       tuple(opts.feature_families) if opts.features else None)
    return SlidePlan(slide, ctx, grid, tiles, skipped, thumb, ds, mask, roi, tissue, lab_info)


TISSUE_MARGIN_UM = 20.0  # the tissue mask is grown by this before detections are checked against it


def on_tissue(boxes: np.ndarray, mask: np.ndarray, ds: float, mpp: float, margin_um: float = TISSUE_MARGIN_UM) -> np.ndarray:
    """Which boxes have their centre on the tissue mask (``ds`` base pixels per mask pixel) grown by
    ``margin_um``: the mask is drawn at thumbnail scale, so a nucleus at the very edge of tissue is kept."""
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return np.zeros(len(boxes), bool)
    grow = max(1.0, margin_um / (ds * mpp))
    grown = distance_transform_edt(~mask) <= grow  # a disc-shaped growth in one linear-time pass
    h, w = grown.shape
    cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2 / ds).astype(int), 0, w - 1)
    cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2 / ds).astype(int), 0, h - 1)
    return grown[cy, cx]


def fitted_tile_size(tile: int, overlap: int, width: float, height: float) -> int:
    """The tile size for an area of ``width`` x ``height`` model pixels: ``tile``, or less when the area is
    narrower, so a small image or a thin ROI is not padded with white. Padding is not neutral: the detector's
    GroupNorm statistics cover the whole tile, and a 512-px image in a 1024-px tile (three quarters glass)
    gave three times as many boxes as the same image read in a 512-px tile."""
    narrow = int(np.ceil(min(width, height) / 32.0)) * 32
    return int(max(min(tile, narrow), overlap + 32, 64))


def draw_thumbnail(plan: SlidePlan, path: Path, nuclei: np.ndarray | None = None) -> None:
    """The slide thumbnail with the tissue outline (green) and the tile grid: processed tiles' cores in
    blue, skipped ones in grey. With ``nuclei`` (boxes in base pixels, those at the score cut) it shows what
    was found too: a red dot per nucleus while dots stay apart, else a density map (nuclei per mm²)."""
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    img = plan.thumb.copy()
    ds = plan.thumb_downsample
    legend = None
    if nuclei is not None and len(nuclei):
        img, legend = overlay_nuclei(img, nuclei, ds, plan.ctx.mpp)
    img[find_boundaries(plan.mask, mode="outer")] = (0, 200, 0)
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
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


#: a density map replaces dots once this share of the dots would touch another (thumbnail pixels)
DOTS_MAX_CROWDING = 0.05
DENSITY_CELL_UM = 50.0  # density-map cell edge (at least 4 thumbnail pixels)
OUTLINE_MAX_UM_PER_PX = 2.0  # thumbnail pixels this fine show each nucleus's box, not a dot


def overlay_nuclei(img: np.ndarray, boxes: np.ndarray, ds: float, mpp: float) -> tuple[np.ndarray, str]:
    """Draw nuclei (boxes in base pixels) on a thumbnail of ``ds`` base pixels per pixel: their boxes where a
    thumbnail pixel is at most 2 µm (a nucleus spans several pixels), red dots while dots stay apart, else a
    density map (nuclei per mm² in 50-µm cells). Returns the image and a legend line."""
    h, w = img.shape[:2]
    if ds * mpp <= OUTLINE_MAX_UM_PER_PX:
        from PIL import Image, ImageDraw

        im = Image.fromarray(img)
        d = ImageDraw.Draw(im)
        for x0, y0, x1, y1 in boxes / ds:
            d.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(0, 200, 90))
        return np.asarray(im).copy(), f"{len(boxes)} nuclei (green boxes)"
    cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2 / ds).astype(int), 0, w - 1)
    cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2 / ds).astype(int), 0, h - 1)
    from scipy.ndimage import convolve

    per_pixel = np.bincount(cy * w + cx, minlength=h * w).reshape(h, w)
    # a dot is crowded when another shares its pixel or touches it: then dots merge into blobs
    near = convolve(per_pixel, np.ones((3, 3), per_pixel.dtype), mode="constant")
    occupied = per_pixel > 0
    crowded = (near[occupied] > 1).sum() / max(1, occupied.sum())
    if crowded <= DOTS_MAX_CROWDING:
        img[cy, cx] = (220, 0, 0)
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
    """DejaVu Sans from matplotlib (a dependency): PIL's built-in font has no µ or ²."""
    from pathlib import Path as _Path

    import matplotlib
    from PIL import ImageFont

    try:
        return ImageFont.truetype(str(_Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), 13)
    except OSError:
        return ImageFont.load_default()


# -- executors -----------------------------------------------------------------------------------------
def _run_in_process(plan: SlidePlan, todo: list[Tile], opts: RunOptions, on_result):
    """Reader threads read and normalise tiles ahead; inference runs in batches on this thread."""
    ctx = plan.ctx
    det = _detector(ctx.model, ctx.device)

    def prepare(t):
        try:
            return t, *read_and_preprocess(ctx, t), None
        except TileReadError as exc:
            return t, None, None, None, exc

    with ThreadPoolExecutor(max_workers=max(1, opts.readers)) as pool:
        # bounded look-ahead: memory is set by tiles in flight, not slide size
        window = max(2 * opts.batch_size, opts.readers * 2)
        pending = [pool.submit(prepare, t) for t in todo[:window]]
        nxt = window
        while pending:
            batch = []
            while pending and len(batch) < opts.batch_size:
                batch.append(pending.pop(0).result())
                if nxt < len(todo):
                    pending.append(pool.submit(prepare, todo[nxt]))
                    nxt += 1
            good = [(t, x, p, rgb) for t, x, p, rgb, e in batch if e is None]
            for t, _, _, _, e in batch:
                if e is not None:
                    on_result(_failed(t, str(e), e.attempts))
            if good:
                t0 = time.perf_counter()
                preds = det.predict_instances([x for _, x, _, _ in good])
                dt = (time.perf_counter() - t0) / len(good)
                for (t, _, p, rgb), (b, s, o) in zip(good, preds):
                    p["inference_s"] = dt
                    on_result(postprocess(ctx, t, b, s, p, o, rgb))


def _dask_worker_init(threads: int, device: str):
    import torch

    torch.set_num_threads(max(1, threads))
    _STATE.pop("worker_name", None)
    if device.startswith("cuda"):  # local cluster: worker i takes GPU i (one worker per GPU, see below)
        from distributed import get_worker

        torch.cuda.set_device(int(get_worker().name))


def local_cluster_kwargs(opts: RunOptions, gpus: int) -> dict:
    """LocalCluster settings. With --device cuda every worker offers one GPU resource (tiles ask for one,
    so a cluster started without it would never run a tile), and there must be a GPU for each worker."""
    kwargs = dict(n_workers=opts.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                  silence_logs=40)
    if opts.device.startswith("cuda"):
        if opts.workers > gpus:
            raise WsinucleiError(f"--workers {opts.workers} --device cuda takes one GPU per worker and this machine "
                                 f"has {gpus}: use --workers {gpus} or fewer")
        kwargs["resources"] = {"GPU": 1}
    return kwargs


def slurm_cluster_kwargs(opts: RunOptions) -> dict:
    """dask-jobqueue SLURMCluster settings: one Dask worker per job with --slurm-cores threads (torch uses them),
    this Python for the workers, and a GPU request per job with --device cuda."""
    import sys

    kwargs = dict(cores=opts.slurm_cores, processes=1, memory=opts.slurm_memory, walltime=opts.slurm_walltime,
                  queue=opts.slurm_queue, account=opts.slurm_account, python=sys.executable,
                  scheduler_options={"dashboard_address": None}, silence_logs="error")
    if opts.device.startswith("cuda"):
        kwargs["job_extra_directives"] = ["--gres=gpu:1"]
        kwargs["worker_extra_args"] = ["--resources", "GPU=1"]
    return kwargs


def check_remote_workers(info: dict, device: str, address: str) -> None:
    """Refuse a cluster whose workers cannot run the tiles (instead of waiting for them forever)."""
    workers = info.get("workers", {})
    if not workers:
        raise WsinucleiError(f"the Dask scheduler at {address} has no workers; start some with 'dask worker {address}'")
    if device.startswith("cuda") and not any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values()):
        raise WsinucleiError(f"--device cuda: no worker of the Dask scheduler at {address} offers a GPU; start them "
                             f"with 'dask worker {address} --resources GPU=1' (one per GPU)")


def _start_slurm(opts: RunOptions):
    from distributed import Client

    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise WsinucleiError("--cluster slurm needs dask-jobqueue: pip install dask-jobqueue") from None
    import shutil

    if shutil.which("sbatch") is None:
        raise WsinucleiError("--cluster slurm: no sbatch on PATH (run on a Slurm login node)")
    try:
        cluster = SLURMCluster(**slurm_cluster_kwargs(opts))
        cluster.scale(jobs=opts.jobs)
    except Exception as exc:
        raise WsinucleiError(f"--cluster slurm: cannot submit the worker jobs ({str(exc).strip().splitlines()[-1]})") from None
    client = Client(cluster)
    try:
        client.wait_for_workers(1, timeout=opts.slurm_wait_s)
    except Exception:
        client.close()
        cluster.close()
        raise WsinucleiError(f"--cluster slurm: no worker job started within {opts.slurm_wait_s:g} s (check squeue; "
                             "the jobs are cancelled)") from None
    # jobs start one by one: a worker plugin sets up every worker, those that join later too (each job
    # has its own GPU from --gres, so no GPU is picked by worker name here)
    from distributed.diagnostics.plugin import WorkerPlugin

    class TorchThreads(WorkerPlugin):
        name = "wsinuclei-torch-threads"

        def setup(self, worker):
            _dask_worker_init(opts.slurm_cores, "cpu")

    client.register_plugin(TorchThreads())
    return cluster, client


def _run_dask(plan: SlidePlan, todo: list[Tile], opts: RunOptions, on_result):
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if opts.cluster == "slurm":
        cluster, client = _start_slurm(opts)
    elif opts.scheduler:
        try:
            client = Client(opts.scheduler, timeout="20s")
        except Exception as exc:
            raise WsinucleiError(f"cannot reach the Dask scheduler at {opts.scheduler} ({exc})") from None
        try:
            client.wait_for_workers(1, timeout=30)
        except Exception:
            pass  # reported just below
        try:
            check_remote_workers(client.scheduler_info(), plan.ctx.device, opts.scheduler)
        except WsinucleiError:
            client.close()
            raise
    else:
        import torch

        threads = max(1, (os.cpu_count() or 1) // opts.workers)
        gpus = torch.cuda.device_count() if opts.device.startswith("cuda") else 0
        cluster = LocalCluster(**local_cluster_kwargs(opts, gpus))
        client = Client(cluster)
        client.run(_dask_worker_init, threads, opts.device)
    try:
        ctx_future = client.scatter(plan.ctx, broadcast=True)  # sent once per worker, not per tile
        # On GPUs: one worker per GPU, started with `--resources GPU=1` (and its own CUDA_VISIBLE_DEVICES);
        # each tile then claims one GPU, so no two tiles share a card.
        extra = {"resources": {"GPU": 1}} if plan.ctx.device.startswith("cuda") else {}
        futures = [client.submit(process_tile, ctx_future, t, key=f"tile-{Path(plan.ctx.path).name}-{t.key}-{id(plan)}",
                                 retries=2, pure=False, **extra) for t in todo]
        for fut in as_completed(futures):
            on_result(fut.result())
            fut.release()
    finally:
        if cluster is None:  # a long-lived cluster's workers let go of this slide
            try:
                client.run(_close_slide, plan.ctx.path, plan.ctx.mpp)
            except Exception:  # a worker lost meanwhile has nothing to close
                pass
        client.close()
        if cluster is not None:
            cluster.close()


# -- the run -------------------------------------------------------------------------------------------
def _settings_hash(plan: SlidePlan, opts: RunOptions, model_id: str) -> str:
    key = {"path": plan.ctx.path, "mpp": plan.ctx.mpp, "run_mpp": plan.ctx.model_mpp, "roi": plan.roi, "tile": opts.tile_size,
           "overlap": opts.overlap, "min_score": opts.min_score, "model": model_id,
           "lab": [plan.ctx.src_mu, plan.ctx.src_sigma],
           "features": list(plan.ctx.features or []), "score_cut": opts.score_cut if opts.features else None}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _save_part(folder: Path, r: TileResult) -> None:
    tmp = folder / f".{r.key}.tmp.npz"
    extra = {} if r.outlines is None else {"outlines": r.outlines.astype(np.float32)}
    if r.features is not None:
        extra["feature_names"] = np.array(list(r.features), dtype=str)
        extra["feature_values"] = np.stack([r.features[k] for k in r.features], axis=1) if r.features else np.zeros((0, 0))
    np.savez(tmp, boxes=r.boxes, scores=r.scores, profile=json.dumps(r.profile), failed=r.failed or "", **extra)
    os.replace(tmp, folder / f"{r.key}.npz")


def _load_part(path: Path) -> TileResult | None:
    import zipfile

    try:
        with np.load(path) as z:
            failed = str(z["failed"]) or None
            features = None
            if "feature_names" in z:
                values = z["feature_values"].reshape(len(z["scores"]), len(z["feature_names"]))
                features = {str(k): values[:, i] for i, k in enumerate(z["feature_names"])}
            return TileResult(path.stem, z["boxes"], z["scores"], json.loads(str(z["profile"])), failed,
                              z["outlines"].astype(np.float64) if "outlines" in z else None, features)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # a part damaged by a crash mid-write (parts are renamed into place, so this is rare): recompute it
        logging.getLogger(__name__).warning("resume: %s is unreadable (%s); its tile is run again", path.name, exc)
        return None


@dataclass
class RunReport:
    name: str
    slide: str = ""  # absolute path of the slide or image
    mpp: float = 0.0  # µm/px of its base level, as used
    read_mpp: float = 0.0  # µm/px the tiles were read at (the slide's own when the model serves it)
    outputs: dict = field(default_factory=dict)
    nuclei: int = 0  # score >= score_cut: what the model counts as nuclei (GeoJSON, DSA file)
    candidates: int = 0  # boxes in the CSV: score >= min_score
    score_cut: float = OPERATING_POINT
    min_score: float = 0.1
    model: dict = field(default_factory=dict)  # file, sha1 prefix
    tiles_total: int = 0
    tiles_processed: int = 0
    tiles_skipped_tissue: int = 0
    tiles_resumed: int = 0
    tiles_failed: int = 0
    dropped_off_tissue: int = 0  # detections whose centre lay off the (grown) tissue mask
    wall_s: float = 0.0
    tiles_per_s: float = 0.0
    executor: str = ""
    workers: int = 1
    stage_totals_s: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)
    reinhard_source: dict = field(default_factory=dict)


def run_slide(path: str | Path, out_dir: str | Path, opts: RunOptions, log=print, on_progress=None) -> RunReport:
    """Detect every nucleus in one slide; write NAME.csv/.geojson/.anot.json, NAME.thumbnail.png,
    NAME.profile.csv and NAME.run.json into ``out_dir``. ``on_progress(done, total)`` is called as tiles
    finish (resumed ones count as done from the start)."""
    from .checkpoint import check_device

    t_start = time.time()
    opts.validate()
    if not (opts.scheduler or opts.cluster):  # a cluster's GPUs are on its workers, not here
        check_device(opts.device)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise WsinucleiError(f"{out_dir}: exists and is not a folder")
    model_path = str(Path(opts.model).resolve()) if opts.model else None
    # fail early on a bad model, before any slide work; cached, so in-process runs (and later slides of the
    # same command) use this very instance instead of loading the file again
    loaded = _detector(model_path, "cpu" if (opts.scheduler or opts.workers or opts.cluster) else opts.device).loaded
    plan = plan_slide(path, opts, loaded.mpp, loaded.input_channels, loaded.target_mu, loaded.target_sigma, model_path,
                      mpp_range=loaded.config.mpp_range)
    # this process's readers share the plan's handle (OpenSlide handles are thread-safe; a plain image is
    # decoded once); it is closed when the slide is done
    _STATE[("slide", plan.ctx.path, plan.ctx.mpp)] = plan.slide
    try:
        name = plan.slide.name
        out_dir.mkdir(parents=True, exist_ok=True)
        draw_thumbnail(plan, out_dir / f"{name}.thumbnail.png")
        model_id = hashlib.sha1(loaded.path.read_bytes()).hexdigest()[:12]
        parts = out_dir / f".{name}.parts" / _settings_hash(plan, opts, model_id)
        if opts.force and parts.parent.exists():
            shutil.rmtree(parts.parent)
        parts.mkdir(parents=True, exist_ok=True)
        results = _load_resumed(plan, parts)
        resumed = len(results)
        todo = [t for t in plan.tiles if t.key not in results]
        executor = f"slurm, {opts.jobs} jobs x {opts.slurm_cores} cores" if opts.cluster == "slurm" else \
            f"dask scheduler {opts.scheduler}" if opts.scheduler else (
            f"local dask, {opts.workers} workers" if opts.workers > 0 else f"in-process ({opts.device}, batch {opts.batch_size})")
        log(f"{name}: {plan.slide.dimensions[0]}x{plan.slide.dimensions[1]} px at {plan.ctx.mpp:g} µm/px, read at "
            f"{plan.ctx.model_mpp:g}; "
            f"{len(plan.tiles)} tissue tiles of {len(plan.grid)} ({plan.grid.tile} px; {resumed} done before); "
            f"{executor}")
        run_s = _execute(plan, todo, opts, results, parts, on_progress)
        report = RunReport(name=name, tiles_total=len(plan.grid), tiles_processed=len(plan.tiles),
                           tiles_skipped_tissue=len(plan.skipped), tiles_resumed=resumed, executor=executor,
                           workers=max(1, opts.workers), reinhard_source=plan.lab_stats,
                           slide=str(Path(plan.ctx.path).resolve()), mpp=plan.ctx.mpp, read_mpp=plan.ctx.model_mpp,
                           score_cut=opts.score_cut,
                           min_score=opts.min_score, model={"file": str(loaded.path), "sha1": model_id})
        report.tiles_per_s = round(len(todo) / run_s, 4) if todo and run_s > 0 else 0.0
        _write_results(plan, opts, results, out_dir, report, t_start)
    finally:
        _close_slide(plan.ctx.path, plan.ctx.mpp)
    if not report.tiles_failed and not opts.keep_parts:
        shutil.rmtree(parts.parent, ignore_errors=True)
    return report


def _close_slide(path: str, mpp: float) -> None:
    slide = _STATE.pop(("slide", path, mpp), None)
    if slide is not None:
        slide.close()


def _load_resumed(plan: SlidePlan, parts: Path) -> dict[str, "TileResult"]:
    """Tiles finished by an earlier, interrupted run of the same command (failed tiles are run again)."""
    results = {}
    for t in plan.tiles:
        f = parts / f"{t.key}.npz"
        if f.exists():
            r = _load_part(f)
            if r is not None and r.failed is None:
                results[t.key] = r
    return results


def _execute(plan: SlidePlan, todo: list[Tile], opts: RunOptions, results: dict, parts: Path,
             on_progress=None) -> float:
    """Run the tiles still to do on the chosen executor, saving each result as it arrives; returns seconds."""
    from tqdm import tqdm

    bar = tqdm(total=len(plan.tiles), initial=len(results), desc=plan.slide.name, unit="tile",
               disable=not opts.progress)
    found = {"nuclei": sum(len(r.boxes) for r in results.values())}

    def on_result(r: TileResult):
        plan.add_tissue(r)
        results[r.key] = r
        _save_part(parts, r)
        found["nuclei"] += len(r.boxes)
        bar.update(1)
        bar.set_postfix(nuclei=found["nuclei"])
        if on_progress is not None:
            on_progress(len(results), len(plan.tiles))

    t_run = time.time()
    if on_progress is not None:
        on_progress(len(results), len(plan.tiles))
    try:
        if todo:
            if opts.scheduler or opts.workers > 0 or opts.cluster:
                _run_dask(plan, todo, opts, on_result)
            else:
                _run_in_process(plan, todo, opts, on_result)
    finally:
        bar.close()
    return time.time() - t_run


def _profile_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=PROFILE_FIELDS, extrasaction="ignore", lineterminator="\n")
    wr.writeheader()
    for p in rows:
        wr.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in p.items()})
    return buf.getvalue().encode()


def _write_results(plan: SlidePlan, opts: RunOptions, results: dict, out_dir: Path, report: RunReport,
                   t_start: float) -> None:
    """Merge seams, cut to the ROI, and write the result files, the profile and run.json."""
    name = report.name
    t_merge = time.perf_counter()
    boxes, scores, outlines, tile_of, row_of = merge_seams(plan.grid, results, with_tiles=True)
    merge_s = time.perf_counter() - t_merge
    x, y, w, h = plan.roi
    if opts.roi is not None:  # detections are owned by cores; keep those whose centre is in the ROI
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        keep = (cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h)
        boxes, scores, tile_of, row_of = boxes[keep], scores[keep], tile_of[keep], row_of[keep]
        outlines = None if outlines is None else outlines[keep]
    if opts.tissue_mask:  # every tile with tissue runs, so glass beside a strip is seen: drop what lies on it
        keep = on_tissue(boxes, plan.mask, plan.thumb_downsample, plan.ctx.mpp)
        report.dropped_off_tissue = int((~keep).sum())
        boxes, scores, tile_of, row_of = boxes[keep], scores[keep], tile_of[keep], row_of[keep]
        outlines = None if outlines is None else outlines[keep]
    areas = None
    if outlines is not None:
        from .contours import polygon_areas

        areas = polygon_areas(outlines) * plan.ctx.mpp ** 2
    failed = sorted(k for k, r in results.items() if r.failed)
    report.candidates, report.tiles_failed = len(boxes), len(failed)
    report.nuclei = int((scores >= opts.score_cut).sum())
    report.failed = [{"tile": k, "error": results[k].failed} for k in failed]
    profile_rows = [results[k].profile for k in sorted(results)]
    for stage in ("read_s", "tissue_s", "reinhard_s", "deconvolution_s", "inference_s", "postprocess_s", "features_s"):
        if stage == "features_s" and not opts.features:
            continue
        report.stage_totals_s[stage] = round(sum(float(p.get(stage, 0) or 0) for p in profile_rows), 3)
    report.stage_totals_s["merge_seams_s"] = round(merge_s, 3)  # once per slide, after every tile
    attributes = annotation_attributes(report, opts)
    measurements = _qupath_measurements(results, tile_of, row_of) if opts.features and not failed else None
    report.outputs = {k: str(v) for k, v in write_outputs(out_dir, name, boxes, scores, opts.gzip, polygons=outlines,
                                                          areas_um2=areas, score_cut=opts.score_cut,
                                                          attributes=attributes, measurements=measurements).items()}
    draw_thumbnail(plan, out_dir / f"{name}.thumbnail.png", boxes[scores >= opts.score_cut])
    if opts.features and not failed:  # a partial table is never written as if it were the slide's
        report.outputs.update(_write_feature_tables(plan, opts, results, out_dir, report, boxes, scores, areas,
                                                    tile_of, row_of))
    atomic_write_bytes(out_dir / f"{name}.profile.csv", _profile_csv(profile_rows))
    report.outputs["profile"] = str(out_dir / f"{name}.profile.csv")
    report.outputs["thumbnail"] = str(out_dir / f"{name}.thumbnail.png")
    report.wall_s = round(time.time() - t_start, 3)
    atomic_write_bytes(out_dir / f"{name}.run.json", json.dumps(asdict(report), indent=1).encode())


#: feature columns QuPath shows for each detection (measurement table, histograms), by QuPath-style name
QUPATH_MEASUREMENTS = {"Circularity": "Shape.Circularity", "Hematoxylin mean": "Nucleus.Intensity.Mean",
                       "Eosin ring mean": "Cytoplasm.Intensity.Mean", "Solidity": "Shape.Solidity"}


def _qupath_measurements(results, tile_of, row_of) -> dict:
    from .features.tables import result_feature_columns, gather_features

    have = set(result_feature_columns(results))
    wanted = {k: v for k, v in QUPATH_MEASUREMENTS.items() if v in have}
    if not wanted or not len(tile_of):
        return {}
    cols = gather_features(results, tile_of, row_of, np.arange(len(tile_of)), list(wanted.values()))
    return {k: cols[v] for k, v in wanted.items()}


def _write_feature_tables(plan, opts, results, out_dir, report, boxes, scores, areas, tile_of, row_of) -> dict:
    from . import __version__
    from .features import FEATURES_VERSION
    from .features.tables import write_bag_table, write_nuclei_table
    from .features.tiles import SHAPE_FAMILIES

    contours = areas is not None
    families = [f for f in opts.feature_families if contours or f not in SHAPE_FAMILIES]
    meta = {"slide": report.slide, "name": report.name, "mpp": report.mpp, "model_mpp": plan.ctx.model_mpp,
            "model": report.model, "wsinuclei": __version__, "features_version": FEATURES_VERSION,
            "families": families, "score_cut": opts.score_cut,
            "masks": "model contours" if contours else "ellipses inscribed in the boxes (box-only model: no shape "
                     "features)",
            "units": "Identifier.* in base-level pixels of the slide; other px-based values in pixels at model_mpp; "
                     "*_um and *_um2 columns in µm and µm²; intensities on HistomicsTK's 0-255 stain scale"}
    keep = np.flatnonzero(scores >= opts.score_cut)
    model_name = Path(report.model.get("file", "")).name
    t0 = time.perf_counter()
    paths = {"nuclei_table": out_dir / f"{report.name}.nuclei.parquet", "bag_table": out_dir / f"{report.name}.bag.parquet"}
    write_nuclei_table(paths["nuclei_table"], results, boxes, scores, tile_of, row_of, keep, meta, model_name, areas)
    write_bag_table(paths["bag_table"], plan, results, scores, tile_of, row_of, keep, meta)
    report.stage_totals_s["feature_tables_s"] = round(time.perf_counter() - t0, 3)
    return {k: str(v) for k, v in paths.items()}


def annotation_attributes(report: RunReport, opts: RunOptions) -> dict:
    """What the DSA annotation records about how it was made (HistomicsTK's CLIs record the same kind):
    the parameters, the model, wsinuclei's version and the Reinhard source statistics."""
    from . import __version__

    params = {k: v for k, v in asdict(opts).items() if k not in ("progress", "keep_parts", "lab_stats")}
    params.update(opts.extra_params or {})
    src = report.reinhard_source or {}
    return {"cli": "wsinuclei", "version": __version__, "params": params, "model": report.model,
            "mpp": report.mpp, "score_cut": opts.score_cut, "min_score": opts.min_score,
            "src_mu_lab": src.get("mean"), "src_sigma_lab": src.get("std"), "reinhard_source": src}


def survey_slide(path: str | Path, out_dir: str | Path, opts: RunOptions, log=print) -> dict:
    """Everything but inference (used when no model is installed): tissue mask, slide-wide Reinhard
    statistics, the tile grid and thumbnail, and the stain steps on every tissue tile, timed."""
    from tqdm import tqdm

    from .models import load_preset

    preset = load_preset("fast")
    plan = plan_slide(path, opts, preset.mpp, preset.input_channels, stain.DEFAULT_TARGET_MU,
                      stain.DEFAULT_TARGET_SIGMA, None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = plan.slide.name
    _STATE[("slide", plan.ctx.path, plan.ctx.mpp)] = plan.slide
    try:
        draw_thumbnail(plan, out_dir / f"{name}.thumbnail.png")
        rows = []
        for t in tqdm(plan.tiles, desc=f"{name} (stain steps)", unit="tile", disable=not opts.progress):
            _, prof, _ = read_and_preprocess(plan.ctx, t)
            r = TileResult(t.key, np.zeros((0, 4)), np.zeros(0), prof)
            plan.add_tissue(r)
            rows.append(r.profile)
    finally:
        _close_slide(plan.ctx.path, plan.ctx.mpp)
    atomic_write_bytes(out_dir / f"{name}.profile.csv", _profile_csv(rows))
    return {"name": name, "tiles": len(plan.tiles), "skipped": len(plan.skipped),
            "thumbnail": str(out_dir / f"{name}.thumbnail.png"), "lab_mean": plan.ctx.src_mu}


def format_report(r: RunReport) -> str:
    st = r.stage_totals_s
    lines = [
        f"{r.name}: {r.nuclei} nuclei at score >= {r.score_cut:g} ({r.candidates} candidates >= {r.min_score:g}); "
        f"{r.tiles_processed} tissue tiles of {r.tiles_total} "
        f"({r.tiles_skipped_tissue} skipped as background, {r.tiles_resumed} resumed, {r.tiles_failed} failed)",
        f"  wall {r.wall_s:.1f} s, {r.tiles_per_s:.3f} tiles/s, executor: {r.executor}",
        "  stage totals (s): " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in st.items()),
    ]
    if r.tiles_failed:
        lines.append(f"  {r.tiles_failed} tiles failed to read (listed in {r.name}.run.json); their nuclei are missing")
    return "\n".join(lines)
