"""A whole-slide run: plan, resume finished tiles, execute the rest, merge, write every output."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import stain
from ..checkpoint import resolve_model_path
from ..errors import WsinucleiError
from ..nucleus_types import model_type_names
from ..outputs import Types, atomic_write_bytes, write_outputs
from ..tiles import Tile
from . import worker
from .executors import _run_dask, _run_in_process, in_process_batch
from .options import PROFILE_FIELDS, RunOptions, RunReport, TileResult
from .plan import SlidePlan, on_tissue, plan_slide
from .seams import merge_seams
from .thumbnail import draw_thumbnail
from .worker import _close_slide, read_and_preprocess


def _settings_hash(plan: SlidePlan, opts: RunOptions, model_id: str) -> str:
    key = {"path": plan.ctx.path, "mpp": plan.ctx.mpp, "run_mpp": plan.ctx.model_mpp, "roi": plan.roi, "tile": [plan.grid.tile_w, plan.grid.tile_h],
           "overlap": opts.overlap, "min_score": opts.min_score, "model": model_id,
           "backend": opts.backend, "device": opts.device,  # INT8, float32 and torch give slightly different nuclei
           "lab": [plan.ctx.src_mu, plan.ctx.src_sigma],
           "features": list(plan.ctx.features or []),
           "score_cut": opts.score_cut if opts.features or opts.embeddings else None}
    if opts.embeddings:  # only then, so the parts of runs made before embeddings existed still resume
        key["embeddings"] = True
    if plan.roi != (0, 0, *plan.slide.dimensions):  # an ROI's grid covers context around it (plan.with_context)
        key["grid_origin"] = [round(float(v), 3) for v in plan.grid.origin]
    if plan.ctx.norm_key:  # the slide's statistics (--norm-statistics slide)
        key["norm"] = plan.ctx.norm_key
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _save_part(folder: Path, r: TileResult) -> None:
    tmp = folder / f".{r.key}.tmp.npz"
    extra = {} if r.outlines is None else {"outlines": r.outlines.astype(np.float32)}
    if r.type_probs is not None:
        extra["type_probs"] = r.type_probs.astype(np.float32)
    if r.embeddings is not None:
        extra["embeddings"] = r.embeddings.astype(np.float16)
    if r.features is not None:
        extra["feature_names"] = np.array(list(r.features), dtype=str)
        extra["feature_values"] = np.stack([r.features[k] for k in r.features], axis=1) if r.features else np.zeros((0, 0))
    # the part names its tile and the settings it was made with (its folder's name), checked when it is loaded
    np.savez(tmp, boxes=r.boxes, scores=r.scores, profile=json.dumps(r.profile), failed=r.failed or "",
             tile=r.key, settings=folder.name, **extra)
    os.replace(tmp, folder / f"{r.key}.npz")


class _BadPart(ValueError):
    pass


def _load_part(path: Path) -> TileResult | None:
    """A finished tile's result, or None (its tile runs again, and the log says why) for a part that is damaged,
    belongs to another tile or other settings (a file moved or copied by hand), or whose arrays do not fit
    together."""
    import zipfile

    try:
        with np.load(path) as z:
            if str(z["tile"]) != path.stem or str(z["settings"]) != path.parent.name:
                raise _BadPart(f"it holds tile {z['tile']} of settings {z['settings']}")
            boxes, scores = z["boxes"], z["scores"]
            n = len(scores)
            if boxes.shape != (n, 4) or scores.shape != (n,) or not np.issubdtype(boxes.dtype, np.floating):
                raise _BadPart(f"boxes {boxes.shape} and scores {scores.shape} do not fit")
            failed = str(z["failed"]) or None
            features = None
            if "feature_names" in z:
                values = z["feature_values"]
                if values.shape != (n, len(z["feature_names"])):
                    raise _BadPart(f"feature values {values.shape} for {n} nuclei")
                features = {str(k): values[:, i] for i, k in enumerate(z["feature_names"])}
            outlines = z["outlines"].astype(np.float64) if "outlines" in z else None
            if outlines is not None and (outlines.ndim != 3 or outlines.shape[0] != n or outlines.shape[2] != 2):
                raise _BadPart(f"outlines {outlines.shape} for {n} nuclei")
            types = z["type_probs"] if "type_probs" in z else None
            if types is not None and (types.ndim != 2 or types.shape[0] != n):
                raise _BadPart(f"type probabilities {types.shape} for {n} nuclei")
            emb = z["embeddings"] if "embeddings" in z else None
            if emb is not None and (emb.ndim != 2 or emb.shape[0] != n or emb.dtype != np.float16):
                raise _BadPart(f"embeddings {emb.shape} {emb.dtype} for {n} nuclei")
            return TileResult(path.stem, boxes, scores, json.loads(str(z["profile"])), failed, outlines, features,
                              types, emb)
    except _BadPart as exc:
        logging.getLogger(__name__).warning("resume: %s does not belong here (%s); its tile is run again",
                                            path.name, exc)
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # a part damaged by a crash mid-write (parts are renamed into place, so this is rare), or of an older
        # version without its tile and settings: recompute it
        logging.getLogger(__name__).warning("resume: %s is unreadable (%s); its tile is run again", path.name, exc)
        return None


#: runs with more tiles than this write the thumbnail (the plan: tissue, tiles) before the tiles run as well
EARLY_THUMBNAIL_TILES = 64
#: one thread for work that overlaps the main thread's: loading the detector while the slide is planned,
#: drawing the thumbnail while the result files are written
_BACKGROUND = ThreadPoolExecutor(1, thread_name_prefix="wsinuclei-background")


def run_slide(path: str | Path, out_dir: str | Path, opts: RunOptions, log=print, on_progress=None) -> RunReport:
    """Detect every nucleus in one slide; write NAME.csv/.geojson/.anot.json, NAME.thumbnail.png,
    NAME.profile.csv and NAME.run.json into ``out_dir`` (the tables, the profile and run.json alone with
    ``opts.tables_only``). ``on_progress(done, total)`` is called as tiles
    finish (resumed ones count as done from the start)."""
    from ..checkpoint import check_device

    t_start = time.time()
    opts.validate()
    if not (opts.scheduler or opts.cluster):  # a cluster's GPUs are on its workers, not here
        check_device(opts.device)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise WsinucleiError(f"{out_dir}: exists and is not a folder")
    if opts.cluster == "slurm" and opts.slurm_log_dir is None:  # job logs beside the results, not in the cwd
        import dataclasses

        opts = dataclasses.replace(opts, slurm_log_dir=str(out_dir.resolve() / "slurm-logs"))
    model_path = str(resolve_model_path(opts.model).resolve()) if opts.model else None
    loaded = worker._model_settings(model_path)  # fail early on a bad model file, before any slide work
    if opts.embeddings and not loaded.config.is_star:
        raise WsinucleiError(f"--embeddings: {Path(str(loaded.path)).name} is not a star model (embeddings are the star head's "
                             "features pooled over each nucleus)")
    distributed = bool(opts.scheduler or opts.workers or opts.cluster)  # then workers load the model
    loading = None
    if not distributed and opts.norm_statistics == "tile":
        # the detector is built while the slide is planned (compiling a network takes ~0.5 s);
        # cached, so the tiles (and later slides of the same command) use this very instance
        loading = _BACKGROUND.submit(worker.in_process_detector, model_path, opts.device, opts.backend, None,
                                     opts.embeddings)
    if opts.features or opts.embeddings:  # the table writers' imports (pyarrow.parquet brings pandas: ~0.4 s on
        _BACKGROUND.submit(_import_table_writers)  # 2 cores) happen while the tiles run, not after them
    plan = plan_slide(path, opts, loaded.mpp, loaded.input_channels, loaded.target_mu, loaded.target_sigma, model_path,
                      mpp_range=loaded.config.mpp_range)
    if plan.regions is not None:
        from ..regions import report_repairs

        report_repairs(plan.regions, lambda m: log(f"{name}: {m}"))
    batch = opts.batch_size
    if not distributed and plan.ctx.norm_stats is not None:  # a detector with this slide's statistics
        loading = _BACKGROUND.submit(worker.in_process_detector, model_path, opts.device, opts.backend,
                                     plan.ctx.model_mpp, opts.embeddings, plan.ctx.norm_stats, plan.ctx.norm_key)
    if loading is not None:
        try:
            batch = in_process_batch(opts, loading.result())  # a network that does not build fails here
        except BaseException:
            plan.slide.close()
            raise
    # this process's readers share the plan's handle (OpenSlide handles are thread-safe; a plain image is
    # decoded once); it is closed when the slide is done
    worker._STATE[("slide", plan.ctx.path, plan.ctx.mpp)] = plan.slide
    lock = None
    try:
        name = plan.slide.name
        writable_folder(out_dir)
        lock = _lock_output(out_dir, name)
        if len(plan.tiles) > EARLY_THUMBNAIL_TILES and not opts.tables_only:  # a long run: its plan can be seen
            draw_thumbnail(plan, out_dir / f"{name}.thumbnail.png")
        model_id = loaded.digest[:12]  # the SHA-1 of the model file's bytes
        parts = out_dir / f".{name}.parts" / _settings_hash(plan, opts, model_id)
        if opts.force and parts.parent.exists():
            shutil.rmtree(parts.parent)
        parts.mkdir(parents=True, exist_ok=True)
        results = _load_resumed(plan, parts)
        resumed = len(results)
        todo = [t for t in plan.tiles if t.key not in results]
        executor = f"slurm, {opts.jobs} jobs x {opts.slurm_cores} cores" if opts.cluster == "slurm" else \
            f"dask scheduler {opts.scheduler}" if opts.scheduler else (
            f"local dask, {opts.workers} workers" if opts.workers > 0 else f"in-process ({opts.device}, batch {batch})")
        log(f"{name}: {plan.slide.dimensions[0]}x{plan.slide.dimensions[1]} px at {plan.ctx.mpp:g} µm/px, read at "
            f"{plan.ctx.model_mpp:g}; "
            f"{len(plan.tiles)} tissue tiles of {len(plan.grid)} ({plan.grid.tile_w}x{plan.grid.tile_h} px; {resumed} done before); "
            f"{executor}")
        run_s = _execute(plan, todo, opts, results, parts, on_progress)
        report = RunReport(name=name, tiles_total=len(plan.grid), tiles_processed=len(plan.tiles),
                           tiles_skipped_tissue=len(plan.skipped), tiles_resumed=resumed, executor=executor,
                           tiles_outside_regions=plan.outside_regions,
                           workers=max(1, opts.workers), reinhard_source=plan.lab_stats,
                           norm_statistics=plan.norm_info or {},
                           slide=str(Path(plan.ctx.path).resolve()), mpp=plan.ctx.mpp, read_mpp=plan.ctx.model_mpp,
                           score_cut=opts.score_cut,
                           min_score=opts.min_score, model={"file": str(loaded.path), "sha1": model_id},
                           device=opts.device, backend=opts.backend if loading is None else
                           getattr(loading.result(), "backend", opts.backend))
        report.tiles_per_s = round(len(todo) / run_s, 4) if todo and run_s > 0 else 0.0
        _write_results_or_none(plan, opts, results, out_dir, report, t_start, model_type_names(loaded.config),
                               loaded.config.has_masks)
        if not report.tiles_failed and not opts.keep_parts:
            shutil.rmtree(parts.parent, ignore_errors=True)
    finally:
        _close_slide(plan.ctx.path, plan.ctx.mpp)
        if lock is not None:
            lock.close()  # releases the lock
    return report


def _import_table_writers() -> None:
    """Import what writing the Parquet tables needs, by writing a one-row table to memory (pyarrow imports part
    of its machinery, pandas among it, only on the first write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    shapely.to_wkb(shapely.box(0, 0, 1, 1))
    pq.write_table(pa.table({"a": pa.array([1.0], pa.float32())}), pa.BufferOutputStream(), compression="zstd")


def _lock_output(out_dir: Path, name: str):
    """Hold ``OUT/.NAME.lock`` (an advisory lock, released when the process ends however it ends) while a run
    writes NAME there: a second run of the same slide into the same folder is refused instead of doing all the
    work again beside the first and racing it for the same files."""
    import fcntl

    fh = open(out_dir / f".{name}.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise WsinucleiError(f"{out_dir}: another wsinuclei run is writing {name} there; wait for it to finish or "
                             "give another --out") from None
    return fh


def plan_only(path: str | Path, opts: RunOptions) -> str:
    """``detect --dry-run``: plan the slide (µm/px, tissue, tiles) as a run would, and describe the plan; no tile
    runs and nothing is written."""
    opts.validate()
    model_path = str(resolve_model_path(opts.model).resolve()) if opts.model else None
    loaded = worker._model_settings(model_path)
    plan = plan_slide(path, opts, loaded.mpp, loaded.input_channels, loaded.target_mu, loaded.target_sigma,
                      model_path, mpp_range=loaded.config.mpp_range)
    try:
        w, h = plan.slide.dimensions
        return (f"{plan.slide.name}: {w}x{h} px at {plan.ctx.mpp:g} µm/px, read at {plan.ctx.model_mpp:g}; "
                f"{len(plan.tiles)} tissue tiles of {len(plan.grid)} ({plan.grid.tile_w}x{plan.grid.tile_h} px, "
                f"overlap {plan.grid.overlap}); nothing was run (--dry-run)")
    finally:
        plan.slide.close()


def writable_folder(folder: Path) -> None:
    """Make ``folder`` and check that files can be written in it, before any work: a read-only file system, a
    path under a file or a folder without permission is one clear error, not a traceback after the tiles ran."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".wsinuclei-write-check-"):
            pass
    except OSError as exc:
        raise WsinucleiError(f"{folder}: cannot write results there ({exc.strerror or exc})") from None


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


def _write_results_or_none(plan: SlidePlan, opts: RunOptions, results: dict, out_dir: Path, report: RunReport,
                           *args) -> None:
    """:func:`_write_results`, or, where the folder cannot take them (a full disk, a file system that turned
    read-only), none of its files: those written so far are removed, so no set of results looks complete
    unless it is; the finished tiles stay for the rerun."""
    name = report.name
    try:
        _write_results(plan, opts, results, out_dir, report, *args)
    except OSError as exc:
        for f in out_dir.iterdir():
            if f.name.startswith(f"{name}.") and f.is_file():
                f.unlink(missing_ok=True)
        raise WsinucleiError(f"{out_dir}: could not write the results ({exc.strerror or exc}); none were kept, "
                             "the finished tiles were: rerun the same command to write them") from None


def gather_types(results: dict, tile_of: np.ndarray, row_of: np.ndarray, names) -> Types | None:
    """The merged nuclei's type probabilities, from the tile results that hold them (None for an untyped
    model)."""
    if names is None:
        return None
    probs = np.zeros((len(tile_of), len(names)), np.float32)
    for key in np.unique(tile_of) if len(tile_of) else ():
        sel = tile_of == key
        tp = results[key].type_probs
        if tp is None:
            raise WsinucleiError(f"tile {key} holds no nucleus types though the model has a type head; rerun with "
                                 "--force")
        probs[sel] = tp[row_of[sel]]
    return Types(probs, tuple(names))


def _write_results(plan: SlidePlan, opts: RunOptions, results: dict, out_dir: Path, report: RunReport,
                   t_start: float, type_names=None, contours: bool = False) -> None:
    """Merge seams, cut to the ROI, and write the result files, the profile and run.json."""
    name = report.name
    t_merge = time.perf_counter()
    boxes, scores, outlines, tile_of, row_of = merge_seams(plan.grid, results, with_tiles=True)
    merge_s = time.perf_counter() - t_merge
    types = gather_types(results, tile_of, row_of, type_names)

    def take(keep):  # keep these nuclei in every per-nucleus array
        nonlocal boxes, scores, tile_of, row_of, outlines, types
        boxes, scores, tile_of, row_of = boxes[keep], scores[keep], tile_of[keep], row_of[keep]
        outlines = None if outlines is None else outlines[keep]
        types = None if types is None else types.take(keep)

    x, y, w, h = plan.roi
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    if opts.roi is not None:  # detections are owned by cores; keep those whose centre is in the ROI
        take((cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h))
    elif plan.region_area is not None:  # as an ROI: the nuclei whose centre lies in (or on) a region
        import shapely

        take(shapely.intersects_xy(plan.region_area, cx, cy))
    if opts.tissue_mask:  # every tile with tissue runs, so glass beside a strip is seen: drop what lies on it
        keep = on_tissue(boxes, plan.mask, plan.thumb_downsample, plan.ctx.mpp)
        report.dropped_off_tissue = int((~keep).sum())
        take(keep)
    areas = None
    if outlines is not None:
        from ..contours import polygon_areas

        areas = polygon_areas(outlines) * plan.ctx.mpp ** 2
    elif contours and not len(boxes):  # no nucleus: the same columns as any other run of this model
        areas = np.zeros(0)
    failed = sorted(k for k, r in results.items() if r.failed)
    report.candidates, report.tiles_failed = len(boxes), len(failed)
    report.tissue_mm2 = round(sum(plan.tile_tissue_mm2(t) for t in plan.tiles), 6)
    report.nuclei = int((scores >= opts.score_cut).sum())
    if types is not None:
        report.nuclei_by_type = types.take(scores >= opts.score_cut).counts()
    report.failed = [{"tile": k, "error": results[k].failed} for k in failed]
    profile_rows = [results[k].profile for k in sorted(results)]
    for stage in ("read_s", "tissue_s", "reinhard_s", "deconvolution_s", "inference_s", "postprocess_s", "features_s"):
        if stage == "features_s" and not opts.features:
            continue
        report.stage_totals_s[stage] = round(sum(float(p.get(stage, 0) or 0) for p in profile_rows), 3)
    report.stage_totals_s["merge_seams_s"] = round(merge_s, 3)  # once per slide, after every tile
    at_cut = scores >= opts.score_cut
    report.outputs = {}
    if not opts.tables_only:
        attributes = annotation_attributes(report, opts)
        measurements = _qupath_measurements(results, tile_of, row_of) if opts.features and not failed else None
        # the thumbnail's PNG encoding releases the GIL: it runs beside the formatting of the other files
        thumbnail = _BACKGROUND.submit(draw_thumbnail, plan, out_dir / f"{name}.thumbnail.png", boxes[at_cut],
                                       None if types is None else types.take(at_cut))
        try:
            report.outputs = {k: str(v) for k, v in write_outputs(
                out_dir, name, boxes, scores, opts.gzip, polygons=outlines, areas_um2=areas,
                score_cut=opts.score_cut, attributes=attributes, measurements=measurements, types=types).items()}
        finally:
            thumbnail.result()
        report.outputs["thumbnail"] = str(out_dir / f"{name}.thumbnail.png")
    if (opts.features or opts.embeddings) and not failed:  # a partial table is never written as if it were the slide's
        report.outputs.update(_write_feature_tables(plan, opts, results, out_dir, report, boxes, scores, areas,
                                                    tile_of, row_of, types, outlines))
    if plan.regions is not None and not opts.tables_only:  # regions then only say where to run
        report.outputs.update(_write_region_tables(plan, out_dir, name, boxes[at_cut], None if areas is None else
                                                   areas[at_cut], None if types is None else types.take(at_cut)))
    atomic_write_bytes(out_dir / f"{name}.profile.csv", _profile_csv(profile_rows))
    report.outputs["profile"] = str(out_dir / f"{name}.profile.csv")
    report.wall_s = round(time.time() - t_start, 3)
    atomic_write_bytes(out_dir / f"{name}.run.json", json.dumps(asdict(report), indent=1).encode())


def _write_region_tables(plan, out_dir, name, boxes, areas, types) -> dict:
    """``--regions``: the nuclei at the cut counted in each region and region class, with the tissue area
    inside each (the run's own tissue mask): ``NAME.regions.csv`` and ``.parquet``."""
    import sys

    from ..regions import count_in_regions, write_region_tables

    nuclei = {"centres": (boxes[:, :2] + boxes[:, 2:]) / 2}
    if areas is not None:
        nuclei["area_um2"] = areas
    names = ()
    if types is not None:
        nuclei["type"] = np.asarray(types.names)[types.index]
        names = types.names
    rows = count_in_regions(plan.regions, nuclei, plan.ctx.mpp, names, tissue=(plan.mask, plan.thumb_downsample),
                            log=lambda m: print(f"{name}: {m}", file=sys.stderr))
    return {k: str(v) for k, v in write_region_tables(out_dir, name, rows).items()}


#: what the embedding is, as the tables' metadata states it
EMBEDDING_POOLING = ("mean over the nucleus' polygon of the star head's features (the layer its centre and distance "
                     "outputs read), on the network's stride-4 grid at the model's µm/px")


#: feature columns QuPath shows for each detection (measurement table, histograms), by QuPath-style name
QUPATH_MEASUREMENTS = {"Circularity": "Shape.Circularity", "Hematoxylin mean": "Nucleus.Intensity.Mean",
                       "Eosin ring mean": "Cytoplasm.Intensity.Mean", "Solidity": "Shape.Solidity"}


def _qupath_measurements(results, tile_of, row_of) -> dict:
    from ..features.tables import result_feature_columns, gather_features

    have = set(result_feature_columns(results))
    wanted = {k: v for k, v in QUPATH_MEASUREMENTS.items() if v in have}
    if not wanted or not len(tile_of):
        return {}
    cols = gather_features(results, tile_of, row_of, np.arange(len(tile_of)), list(wanted.values()))
    return {k: cols[v] for k, v in wanted.items()}


def _write_feature_tables(plan, opts, results, out_dir, report, boxes, scores, areas, tile_of, row_of,
                          types=None, outlines=None) -> dict:
    from .. import __version__
    from ..features import FEATURES_VERSION
    from ..features.tables import write_bag_table, write_nuclei_table
    from ..features.tiles import SHAPE_FAMILIES

    contours = areas is not None
    families = [f for f in opts.feature_families if contours or f not in SHAPE_FAMILIES] if opts.features else []
    meta = {"slide": report.slide, "name": report.name, "mpp": report.mpp, "model_mpp": plan.ctx.model_mpp,
            "model": report.model, "wsinuclei": __version__, "features_version": FEATURES_VERSION,
            "families": families, "score_cut": opts.score_cut,
            "masks": "model contours" if contours else "ellipses inscribed in the boxes (box-only model: no shape "
                     "features)",
            "units": "Identifier.* in base-level pixels of the slide; other px-based values in pixels at model_mpp; "
                     "*_um and *_um2 columns in µm and µm²; intensities on HistomicsTK's 0-255 stain scale"}
    if opts.embeddings:
        from ..features.tables import embedding_dim

        meta["embedding"] = {"column": "embedding", "dim": embedding_dim(results), "dtype": "float16",
                             "model": report.model, "wsinuclei": __version__, "pooling": EMBEDDING_POOLING,
                             "stability": "tied to this model file (its sha1 above): another model or model version "
                                          "gives vectors that are not comparable"}
    keep = np.flatnonzero(scores >= opts.score_cut)
    model_name = Path(report.model.get("file", "")).name
    t0 = time.perf_counter()
    paths = {"nuclei_table": out_dir / f"{report.name}.nuclei.parquet", "bag_table": out_dir / f"{report.name}.bag.parquet"}
    write_nuclei_table(paths["nuclei_table"], results, boxes, scores, tile_of, row_of, keep, meta, model_name, areas,
                       types, outlines)
    write_bag_table(paths["bag_table"], plan, results, tile_of, row_of, keep, meta, types)
    report.stage_totals_s["feature_tables_s"] = round(time.perf_counter() - t0, 3)
    return {k: str(v) for k, v in paths.items()}


def annotation_attributes(report: RunReport, opts: RunOptions) -> dict:
    """What the DSA annotation records about how it was made (HistomicsTK's CLIs record the same kind):
    the parameters, the model, wsinuclei's version and the Reinhard source statistics."""
    from .. import __version__

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

    from ..models import load_preset

    preset = load_preset("fast")
    plan = plan_slide(path, opts, preset.mpp, preset.input_channels, stain.DEFAULT_TARGET_MU,
                      stain.DEFAULT_TARGET_SIGMA, None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = plan.slide.name
    worker._STATE[("slide", plan.ctx.path, plan.ctx.mpp)] = plan.slide
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
        f"({r.tiles_skipped_tissue} skipped as background, "
        + (f"{r.tiles_outside_regions} outside the regions, " if r.tiles_outside_regions else "")
        + f"{r.tiles_resumed} resumed, {r.tiles_failed} failed)",
        f"  wall {r.wall_s:.1f} s, {r.tiles_per_s:.3f} tiles/s, executor: {r.executor}",
        "  stage totals (s): " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in st.items()),
    ]
    if r.nuclei_by_type:
        lines.insert(1, "  by type: " + ", ".join(f"{n} {c}" for n, c in r.nuclei_by_type.items()))
    if r.tiles_failed:
        lines.append(f"  {r.tiles_failed} tiles failed to read (listed in {r.name}.run.json); their nuclei are missing")
    return "\n".join(lines)
