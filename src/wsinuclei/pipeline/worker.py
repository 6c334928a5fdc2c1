"""What runs where the tiles run (this process, a Dask worker, a Slurm job): one model and one open slide
per process, reading and normalising a tile, inference, keeping what the tile's core owns, and measuring it."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from .. import stain
from ..errors import WsinucleiError
from ..slide import Slide
from ..tiles import Tile
from .options import SlideContext, TileResult


_STATE: dict = {}


_STATE_LOCK = threading.Lock()


def _model_settings(model_path: str | None):
    """A model file's settings without its network (``checkpoint.read_model_file``): what planning a slide
    needs, read while the detector itself is still being built."""
    from ..checkpoint import read_model_file

    return read_model_file(model_path)[0]


def _detector(model_path: str | None, device: str, backend: str = "auto", read_mpp: float | None = None,
              streams: int = 1, embeddings: bool = False, norm_stats: dict | None = None, norm_key: str = ""):
    """This process's detector for tiles read at ``read_mpp`` (None: the model's own µm/px). Its budgets are set
    once, for that resolution: a worker that runs slides at two resolutions holds one detector for each, never
    one whose budgets change under another thread. ``streams``: tiles one call runs at once (OpenVINO; the
    in-process executor asks for :data:`IN_PROCESS_STREAMS`, a Dask worker's one-tile tasks for 1).
    ``embeddings``: a detector that gives each nucleus' embedding too (``--embeddings``). ``norm_stats``
    (named by ``norm_key``): one slide's normalisation statistics (``--norm-statistics slide``); a process keeps
    the detectors of its last :data:`SLIDE_DETECTORS` such slides."""
    from ..inference import load_detector

    key = ("model", model_path, device, backend, streams, bool(embeddings), norm_key)
    with _STATE_LOCK:
        if key not in _STATE:
            if norm_stats is not None:
                held = [k for k in _STATE if k[0] == "model" and k[6]]
                for old in held[: max(0, len(held) - SLIDE_DETECTORS + 1)]:  # oldest first (dicts keep order)
                    del _STATE[old]
            _STATE[key] = load_detector(model_path, device=device, backend=backend, streams=streams,
                                        embeddings=embeddings, norm_stats=_as_stats(norm_stats))
        native = _STATE[key]
        density = native.density(read_mpp)
        if density == 1.0:
            return native
        key = (*key, density)
        if key not in _STATE:
            # the same network with its own budgets where the detector can share it, else a second load
            _STATE[key] = native.at_read_mpp(read_mpp) or load_detector(
                model_path, device=device, backend=backend, read_mpp=read_mpp, embeddings=embeddings,
                norm_stats=_as_stats(norm_stats))
        return _STATE[key]


def _as_stats(norm_stats: dict | None):
    """A slide context's statistics (plain lists, as they travel) as the runtime takes them; made only when a
    detector is built, never on a tile's lookup."""
    if norm_stats is None:
        return None
    from ..models.norm_statistics import from_lists

    return from_lists(norm_stats)


#: detectors with one slide's statistics a process keeps (each holds its own compiled network)
SLIDE_DETECTORS = 2


#: OpenVINO streams for in-process runs on the CPU: two tiles at a time, one per stream (``OpenVinoStarNet``);
#: fewer where the machine has fewer cores
IN_PROCESS_STREAMS = 2


def in_process_streams(device: str) -> int:
    return min(IN_PROCESS_STREAMS, os.cpu_count() or 1) if device == "cpu" else 1


def in_process_detector(model_path: str | None, device: str, backend: str = "auto", read_mpp: float | None = None,
                        embeddings: bool = False, norm_stats: dict | None = None, norm_key: str = ""):
    """:func:`_detector` as the in-process executor runs it (with :func:`in_process_streams`): the one call
    that the background load in ``run_slide`` and the executor share, so both get the same cached instance."""
    return _detector(model_path, device, backend, read_mpp, in_process_streams(device), embeddings, norm_stats, norm_key)


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
        # a Dask worker process has imported distributed; an in-process run never needs it (half a second)
        distributed = sys.modules.get("distributed")
        try:
            if distributed is None:
                raise ValueError
            name = str(distributed.get_worker().name)
        except ValueError:  # not running inside a Dask worker
            name = f"pid{os.getpid()}"
        _STATE["worker_name"] = name
    return name


def _reinhard_table(ctx: SlideContext) -> "stain.ReinhardTable":
    """The slide's Reinhard as a per-colour table, shared by this process's reader threads (stain.py)."""
    key = ("reinhard", ctx.path, tuple(ctx.target_mu), tuple(ctx.target_sigma), tuple(ctx.src_mu), tuple(ctx.src_sigma))
    with _STATE_LOCK:
        if key not in _STATE:
            _STATE[key] = stain.ReinhardTable(ctx.target_mu, ctx.target_sigma, ctx.src_mu, ctx.src_sigma)
        return _STATE[key]


def read_and_preprocess(ctx: SlideContext, tile: Tile) -> tuple[np.ndarray, dict, np.ndarray]:
    """Read a tile at the model's µm/px and turn it into network input; times each stage. Returns the input,
    the timings and the Reinhard-normalised RGB (what features are measured on)."""
    prof = {"tile": tile.key, "x": round(tile.x, 1), "y": round(tile.y, 1)}
    attempts, last_exc = 0, None
    table, spent = _reinhard_table(ctx), [0.0]

    def reinhard(pixels):  # inside the read: a 20x slide read at 0.25 µm/px is normalised before it is enlarged
        t = time.perf_counter()
        out = table(pixels)
        spent[0] += time.perf_counter() - t
        return out

    t0 = time.perf_counter()
    while attempts <= ctx.retries:
        attempts += 1
        try:
            normalised = _slide(ctx.path, ctx.mpp).read_region(tile.x, tile.y, tile.width, tile.height, ctx.model_mpp,
                                                               colour_map=reinhard)
            break
        except WsinucleiError as exc:  # a corrupt region: retry, then report the tile as failed
            last_exc = exc
    else:
        raise TileReadError(str(last_exc), attempts)
    prof["attempts"] = attempts
    prof["read_s"] = time.perf_counter() - t0 - spent[0]
    prof["reinhard_s"] = spent[0]
    t0 = time.perf_counter()
    x = stain.model_input(normalised, ctx.input_channels)
    prof["deconvolution_s"] = time.perf_counter() - t0
    return x, prof, normalised


class TileReadError(Exception):
    def __init__(self, msg, attempts):
        super().__init__(msg)
        self.attempts = attempts


def postprocess(ctx: SlideContext, tile: Tile, boxes: np.ndarray, scores: np.ndarray, prof: dict,
                outlines: np.ndarray | None = None, rgb: np.ndarray | None = None,
                type_probs: np.ndarray | None = None, embeddings: np.ndarray | None = None) -> TileResult:
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
        from ..features.tiles import tile_features

        t0 = time.perf_counter()
        features = tile_features(rgb, boxes, scores, outlines, np.flatnonzero(keep), ctx.score_cut, ctx.model_mpp,
                                 lambda x, y: (x * scale + tile.x, y * scale + tile.y), ctx.features)
        prof["features_s"] = time.perf_counter() - t0
    prof["nuclei"] = int(keep.sum())
    prof["worker"] = _worker_name()
    return TileResult(tile.key, b[keep], scores[keep], prof,
                      outlines=None if base_outlines is None else base_outlines[keep], features=features,
                      type_probs=None if type_probs is None else np.asarray(type_probs, np.float32)[keep],
                      embeddings=None if embeddings is None or not ctx.embeddings else
                      np.asarray(embeddings, np.float32)[keep].astype(np.float16))


def process_tile(ctx: SlideContext, tile: Tile) -> TileResult:
    """The unit of work every executor runs (Dask tasks call this)."""
    try:
        x, prof, rgb = read_and_preprocess(ctx, tile)
    except TileReadError as exc:
        return _failed(tile, str(exc), exc.attempts)
    t0 = time.perf_counter()
    det = _detector(ctx.model, ctx.device, ctx.backend, ctx.model_mpp, embeddings=ctx.embeddings,
                    norm_stats=ctx.norm_stats, norm_key=ctx.norm_key)
    (boxes, scores, outlines, types, emb), = det.predict_full([x])
    prof["inference_s"] = time.perf_counter() - t0
    return postprocess(ctx, tile, boxes, scores, prof, outlines, rgb, types, emb)


def _failed(tile: Tile, msg: str, attempts: int) -> TileResult:
    prof = {"tile": tile.key, "x": round(tile.x, 1), "y": round(tile.y, 1), "attempts": attempts,
            "worker": _worker_name(), "nuclei": 0}
    return TileResult(tile.key, np.zeros((0, 4)), np.zeros(0), prof, failed=msg)


def _dask_worker_init(threads: int, device: str):
    import torch

    torch.set_num_threads(max(1, threads))
    _STATE.pop("worker_name", None)
    if device.startswith("cuda"):  # local cluster: worker i takes GPU i (one worker per GPU, see below)
        from distributed import get_worker

        torch.cuda.set_device(int(get_worker().name))


def _close_slide(path: str, mpp: float) -> None:
    slide = _STATE.pop(("slide", path, mpp), None)
    if slide is not None:
        slide.close()
    for key in [k for k in _STATE if k[0] == "reinhard" and k[1] == path]:  # 64 MiB each
        del _STATE[key]
