"""The ``wsinuclei`` command: a thin layer over the library. Errors the user can fix come out as one line
on stderr with a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path

from .errors import WsinucleiError


def _roi(text: str):
    usage = "--roi takes x,y,w,h in whole base pixels, e.g. 1000,2000,4096,4096"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{usage}, got '{text}'") from None
    if len(values) != 4 or not all(math.isfinite(v) and v == int(v) for v in values):
        raise argparse.ArgumentTypeError(f"{usage}, got '{text}'")  # 0.5 would be cut to 0 unseen
    x, y, w, h = (int(v) for v in values)
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"--roi {text}: x and y must be >= 0, w and h > 0")
    return (x, y, w, h)


def _argv_for_argparse(argv: list[str]) -> list[str]:
    """The command line as argparse can take it, or a :class:`WsinucleiError` where it cannot:

    - ``--roi -10,0,100,100`` as ``--roi=-10,0,100,100``: argparse takes a value starting with '-' for an option
      and says only "expected one argument"; joined, the value reaches its own check and error;
    - ``--device=--`` refused: Python 3.11's argparse drops the value '--' and hands the option an empty list,
      which no check of ours expects (argparse itself refuses ``--device --``)."""
    out, it = [], iter(argv)
    for a in it:
        name, eq, value = a.partition("=")
        if a.startswith("--") and eq and value == "--":
            raise WsinucleiError(f"{name}: '--' is not a value")
        if a in ("--roi", "--analysis-roi"):
            nxt = next(it, None)
            if nxt is not None and nxt[:1] == "-" and nxt[1:2].isdigit():
                out.append(f"{a}={nxt}")
                continue
            out.append(a)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(a)
    return out


def _run_options(args):
    from .pipeline import RunOptions

    return RunOptions(mpp=args.mpp, roi=args.roi, regions=getattr(args, "regions", None), tile_size=args.tile_size,
                      overlap=args.overlap,
                      min_tissue=args.min_tissue, tissue_mask=not args.no_tissue_mask,
                      native_resolution=not args.model_resolution, read_mpp=args.read_mpp, model=args.model, min_score=args.min_score, score_cut=args.score_cut,
                      device=args.device, backend=args.backend, norm_statistics=getattr(args, "norm_statistics", "tile"),
                      batch_size=args.batch_size, readers=args.readers, workers=args.workers,
                      scheduler=args.scheduler, force=args.force, gzip=args.gzip, features=args.features,
                      embeddings=getattr(args, "embeddings", False),
                      feature_families=tuple(f.strip() for f in args.feature_families.split(",") if f.strip()),
                      cluster=args.cluster, jobs=args.jobs, slurm_queue=args.queue, slurm_account=args.account,
                      slurm_cores=args.cores, slurm_memory=args.memory, slurm_walltime=args.walltime,
                      progress=not args.quiet).validate()


def _cmd_detect(args) -> int:
    from .pipeline import format_report, plan_only, run_slide

    opts = _run_options(args)
    if len(args.slides) > 1 and opts.roi is not None:
        raise WsinucleiError("--roi applies to one slide at a time")
    if len(args.slides) > 1 and opts.regions is not None:
        raise WsinucleiError("--regions applies to one slide at a time (its coordinates are that slide's pixels)")
    failed = 0
    for path in args.slides:
        try:
            if args.dry_run:
                print(plan_only(path, opts))
                continue
            report = run_slide(path, args.out, opts)
        except WsinucleiError as exc:
            if len(args.slides) == 1:
                raise
            # one bad slide in a batch: say so, go on with the others, exit non-zero at the end
            print(f"wsinuclei: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(format_report(report))
    if failed:
        print(f"wsinuclei: error: {failed} of {len(args.slides)} slides failed (see above)", file=sys.stderr)
        return 2
    return 0


def _cmd_demo(args) -> int:
    from .checkpoint import DEFAULT_MODEL
    from .datasets import cmu_small_region
    from .pipeline import RunOptions, format_report, run_slide, survey_slide

    slide = cmu_small_region(args.cache)
    print(f"demo slide: {slide}")
    opts = RunOptions(progress=not args.quiet, workers=args.workers)
    if args.model or DEFAULT_MODEL.is_file():
        opts.model = args.model
        report = run_slide(slide, args.out, opts)
        print(format_report(report))
        print(f"results: {args.out}/{report.name}.csv, .geojson (QuPath), .anot.json (DSA); "
              f"look at {args.out}/{report.name}.thumbnail.png first, or explore them: wsinuclei view {args.out}")
    else:
        s = survey_slide(slide, args.out, opts)
        print(f"{s['name']}: {s['tiles']} tissue tiles ({s['skipped']} background) normalised and deconvolved; "
              f"thumbnail: {s['thumbnail']}")
        print("no model is installed, so no nuclei were detected; train one with 'wsinuclei train'")
    return 0


def _cmd_models(args) -> int:
    from .checkpoint import shipped_models

    models = shipped_models()
    if args.json:
        print(json.dumps(models, indent=1))
        return 0
    print("shipped models (MoNuSeg 2018 test, pooled, at each file's operating point; --model NAME or PATH picks one):")
    for m in models:
        figs = [f"F1@0.5 {m['monuseg_test_f1']:.3f}" if "monuseg_test_f1" in m else None,
                f"centroid F1 {m['monuseg_test_centroid_f1']:.3f}" if "monuseg_test_centroid_f1" in m else None,
                f"AJI {m['monuseg_test_aji']:.3f}" if "monuseg_test_aji" in m else None]
        traits = [m["preset"], f"{m['mpp']:g} µm/px", f"{m['megabytes']:.1f} MB"] + (["INT8 network"] if m["int8"] else []) \
            + ([f"{m['types']} types"] if m["types"] else [])
        print(f"{'*' if m['default'] else ' '} {m['name']}: {m.get('summary', '')}")
        print(f"    {', '.join(traits)}; since {m.get('shipped_in', '?')}; " + (", ".join(f for f in figs if f) or "no test figures"))
        print(f"    {m['path']}" + (f"  (card: {m['card']})" if "card" in m else ""))
    print("* the default")
    return 0


def _cmd_info(args) -> int:
    from .slide import Slide

    for path in args.slides:
        with Slide(path, mpp=args.mpp) as s:
            i = s.info()
        if args.json:
            print(json.dumps(i.__dict__))
            continue
        print(f"{i.path}\n  format: {i.format}\n  size: {i.dimensions[0]} x {i.dimensions[1]} px")
        mpp = f"{i.mpp:g} ({i.mpp_source})" if i.mpp else "unknown: give --mpp when detecting"
        print(f"  µm/px: {mpp}\n  objective power: {i.objective_power or 'unknown'}")
        print(f"  levels: {i.level_count}")
        for k, (d, ds) in enumerate(zip(i.level_dimensions, i.level_downsamples)):
            print(f"    {k}: {d[0]} x {d[1]} (downsample {ds:.3f})")
    return 0


def _cmd_evaluate(args) -> int:
    from .report import evaluate_folders, format_table

    if args.min_precision is not None and not 0 < args.min_precision <= 1:
        raise WsinucleiError(f"--min-precision is a precision, from 0 (exclusive) to 1, got {args.min_precision}")
    res = evaluate_folders(args.pred, args.truth, args.out, score_threshold=args.score_threshold,
                           iou_threshold=args.iou, radius_um=args.radius_um, mpp=args.mpp, border=args.border,
                           images=args.images, overlays=not args.no_overlays, min_precision=args.min_precision)
    print(format_table(res))
    print(f"report: {args.out}/metrics.json, per_image.csv, score_cuts.csv, pr_curve.png"
          + ("" if args.no_overlays else ", overlay_*.png"))
    return 0


def _cmd_prepare(args) -> int:
    from .data import load_recipe, prepare, prepare_sources

    if (args.data is None) == (args.recipe is None):
        raise WsinucleiError("prepare takes a data folder or --recipe FILE (one of them)")
    if args.recipe:
        sources, settings = load_recipe(args.recipe)
        settings = {k: settings[k] for k in ("tile", "seed", "min_visible", "min_size") if k in settings}
        m = prepare_sources(sources, args.out, mpp=args.mpp, progress=not args.quiet,
                            **{"tile": args.tile, "seed": args.seed, **settings})
    else:
        m = prepare(args.data, args.out, mpp=args.mpp, source_mpp=args.source_mpp, tile=args.tile,
                    val_fraction=args.val_fraction, seed=args.seed, progress=not args.quiet)
    print(f"prepared {m['tiles']['train']} train tiles ({m['boxes']['train']} nuclei) and {m['tiles']['val']} "
          f"validation tiles from {len(m['images'])} images into {args.out}")
    for name, info in m["sets"].items():
        print(f"  {name}: {len(info['train'])} train / {len(info['val'])} validation images, "
              f"{info['nuclei']['train']} / {info['nuclei']['val']} nuclei")
    return 0


def _cmd_train(args) -> int:
    from .models import load_preset
    from .train import train

    if args.workers < 0:
        raise WsinucleiError(f"--workers {args.workers}: give 0 or more crop workers")
    config = load_preset(args.preset)
    if args.input_channels:
        config.input_channels = args.input_channels
    if not (Path(args.data) / "manifest.json").is_file():
        raise WsinucleiError(f"{args.data}: not a prepared data folder (no manifest.json); run 'wsinuclei prepare'")
    command = "wsinuclei " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    best = train(config, args.data, args.run_dir, steps=args.steps, resume=args.resume, seed=args.seed,
                 device=args.device, threads=args.threads, color_jitter=args.color_jitter, init=args.init,
                 command=command, progress=not args.quiet, workers=args.workers)
    if best.get("step") is None:  # stopped before the first validation: no best model yet
        print(f"no validation yet (stopped before the first); the state is in {args.run_dir}/last.pt: continue "
              "with --resume")
    else:
        key = "val_score" if "val_score" in best else "val_f1"  # a typed run picks by detection and types
        print(f"best validation score {best.get(key, float('nan')):.3f} at step {best.get('step')}; "
              f"model: {args.run_dir}/best.safetensors")
    return 0


def _cmd_export(args) -> int:
    from .checkpoint import load_model, save_model
    from .export import calibrate, set_filter, set_star_nms, single_resolution

    m = load_model(args.model)
    extra = {**m.extra, "exported_from": str(args.model)}
    set_filter(m, args.nested, args.min_area_um2)
    if args.nms is not None:
        set_star_nms(m, args.nms)
    if args.single_resolution:
        single_resolution(m)
    if args.calibrate:
        cal = extra["score_calibration"] = calibrate(m, args.calibrate)
        sets = ", ".join(f"{g} F1 {v['f1']:.3f} (P {v['precision']:.3f}, R {v['recall']:.3f})"
                         for g, v in cal.get("per_set", {}).items())
        print(f"operating point from {len(cal['images'])} validation images: raw score {cal['raw_threshold']:.2f} "
              f"(mean F1@0.5 over sets {cal['validation_f1']:.3f}: {sets}) becomes 0.5 "
              f"(logit shift {cal['logit_shift']:+.3f})")
    if args.int8:
        from .export import make_int8

        extra["int8"] = make_int8(m, args.int8, half=not args.fp32)
        r = extra["int8"]
        print(f"INT8 network from {r['calibration_crops']} training crops: validation score {r['val_score_int8']:.3f} "
              f"(float32 {r['val_score_fp32']:.3f}), {r['agreement_f1']:.3f} agreement with float32's nuclei")
    save_model(m.model, m.config, args.out, target_mu=m.target_mu, target_sigma=m.target_sigma, half=not args.fp32,
               extra=extra, int8=m.int8)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_train_types(args) -> int:
    from .type_training import train_types

    train_types(args.data, args.out, parent=args.model, mpp=args.mpp, held_out=args.held_out, seed=args.seed)
    return 0


def _cmd_regions(args) -> int:
    from .regions import count_run_regions

    path, rows = count_run_regions(args.run, args.regions, args.out, log=print)
    regions = [r for r in rows if r["level"] == "region"]
    classes = [r for r in rows if r["level"] == "class"]
    print(f"{len(regions)} regions ({len(classes)} classes): {sum(r['nuclei'] for r in regions)} nucleus-region "
          f"pairs; {path}")
    for r in rows:
        print(f"  {r['level']:6s} {r['region'][:40]:40s} {r['area_mm2']:9.4f} mm2 {r['nuclei']:8d} nuclei "
              f"{r['nuclei_per_mm2']:10.1f} per mm2")
    return 0


def _cmd_cohort(args) -> int:
    from .cohort import write_cohort

    rows = write_cohort(args.runs, args.out)
    slides = [r for r in rows if r["level"] == "slide"]
    print(f"{len(slides)} slides, {len(rows) - len(slides)} region rows: {args.out}")
    return 0


def _cmd_view(args) -> int:
    from .viewer import resolve_source, serve

    if args.port is not None and not 0 <= args.port <= 65535:
        raise WsinucleiError(f"--port must be from 0 to 65535, got {args.port}")
    serve(resolve_source(args.target, results=args.results, mpp=args.mpp), port=args.port or 0,
          open_browser=not args.no_browser)
    return 0


def _cmd_build_slide(args) -> int:
    from .synth import build_slide

    cols, rows = (int(v) for v in args.grid.lower().split("x"))
    r = build_slide(args.data, args.out, grid=(cols, rows), gap=args.gap, margin=args.margin, mpp=args.mpp,
                    fill=args.fill, compression=args.compression, seed=args.seed)
    print(f"wrote {r['slide']} ({r['size'][0]} x {r['size'][1]} px, {r['images']} images, {r['nuclei']} nuclei); "
          f"truth: {r['truth']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wsinuclei", description="Find every cell nucleus in whole-slide H&E images.")
    p.add_argument("--version", action="version", version=_version_line(),
                   help="print the version and the default model's name, then exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser("detect", help="detect nuclei in slides or image regions",
                        description="Detect nuclei in slides (SVS, NDPI, MIRAX, tiled TIFF, ...) or plain images. "
                        "Writes NAME.csv (x0,y0,x1,y1,score in base pixels: every candidate >= --min-score), "
                        "NAME.geojson (QuPath >= 0.4 detections) and NAME.anot.json (Digital Slide Archive) with the "
                        "nuclei >= --score-cut, NAME.thumbnail.png (tissue, tiles and nuclei), "
                        "NAME.profile.csv (time per tile and stage) and NAME.run.json (run summary).")
    sp.add_argument("slides", nargs="+", metavar="SLIDE_OR_IMAGE")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--mpp", type=float, default=None, help="µm per pixel of the slide's base level; overrides "
                    "the file's metadata and is required when the file has none")
    sp.add_argument("--roi", type=_roi, default=None, help="only this region: x,y,w,h in base pixels")
    sp.add_argument("--regions", default=None, metavar="FILE", help="only inside these drawn regions (a QuPath "
                    "GeoJSON export or a DSA annotation JSON, base-level pixels): the tiles that touch them run, the "
                    "nuclei whose centre is in one are kept, and NAME.regions.csv/.parquet count them per region")
    sp.add_argument("--tile-size", type=int, default=1024, help="largest tile side in model pixels (default 1024); "
                    "tiles are shortened, as many as this size needs, to spread evenly over the slide")
    sp.add_argument("--overlap", type=int, default=None, help="tile overlap in model pixels, at least the largest "
                    "nucleus (default 64; 128 with --norm-statistics slide, where the wider context keeps >= 99 %% of "
                    "nuclei the same across tilings)")
    sp.add_argument("--min-tissue", type=float, default=0.0, help="skip tiles whose core holds this fraction of "
                    "tissue or less (default 0: every tile with any tissue runs, and detections off the tissue "
                    "mask, grown by 20 µm, are dropped)")
    sp.add_argument("--no-tissue-mask", action="store_true", help="run every tile and keep every detection, glass "
                    "included (for images that are all tissue)")
    sp.add_argument("--model", default=None, help="model file, or a shipped model's name from 'wsinuclei models' (default: the shipped default)")
    sp.add_argument("--model-resolution", action="store_true", help="read every slide at the model's own µm/px "
                    "(default: a slide inside the range the model serves, e.g. 0.25-0.5 µm/px, runs at its own)")
    sp.add_argument("--read-mpp", type=float, default=None, metavar="MPP",
                    help="read tiles at this µm/px, inside the range the model serves (e.g. 0.5: a 40x slide read "
                    "at 20x, a quarter of the pixels; BENCHMARKS.md gives the accuracy it costs)")
    sp.add_argument("--min-score", type=float, default=0.1, help="lowest score written to the CSV (default 0.1, "
                    "the study's minimum probability): candidates for precision-recall work")
    sp.add_argument("--score-cut", type=float, default=0.5, help="score from which a box counts as a nucleus: the "
                    "GeoJSON, the DSA file, the thumbnail and the count hold these (default 0.5, the model's "
                    "operating point)")
    sp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    sp.add_argument("--backend", choices=["auto", "torch", "openvino", "openvino-int8"], default="auto",
                    help="what runs the model on the CPU: auto takes a star model's INT8 network on OpenVINO where the "
                    "model file carries one (the shipped model does), else OpenVINO float32 where its outputs equal "
                    "torch's, else torch; openvino = float32 on OpenVINO (pip install openvino) (default auto)")
    sp.add_argument("--norm-statistics", choices=["tile", "slide"], default="tile",
                    help="where the network's GroupNorm statistics come from: tile = each tile's own, as the model was "
                    "trained; slide = measured once per slide on 8 windows of its tissue, so the nuclei do not depend on "
                    "--tile-size, --overlap or --roi (overlap 128 unless given; star models; a slide holding tissue of several patients, such as a "
                    "tissue microarray, gets one set for all) (default tile)")
    sp.add_argument("--batch-size", type=int, default=1, help="tiles per inference batch (GPU: 4-16)")
    sp.add_argument("--readers", type=int, default=2, help="tile reader threads for in-process runs (default 2)")
    sp.add_argument("--workers", type=int, default=0, help="run on a local Dask cluster with N worker processes "
                    "(default 0: in-process)")
    sp.add_argument("--scheduler", default=None, help="run on an existing Dask cluster, e.g. tcp://10.0.0.5:8786")
    sp.add_argument("--cluster", choices=["slurm"], default=None, help="run on a Slurm cluster: each job is a Dask "
                    "worker (dask-jobqueue); run from a login node that can reach the compute nodes")
    sp.add_argument("--jobs", type=int, default=2, help="with --cluster slurm: worker jobs to submit (default 2)")
    sp.add_argument("--queue", default=None, help="with --cluster slurm: partition (default: the cluster's)")
    sp.add_argument("--account", default=None, help="with --cluster slurm: account to charge")
    sp.add_argument("--cores", type=int, default=4, help="with --cluster slurm: cores per job (default 4)")
    sp.add_argument("--memory", default="16GB", help="with --cluster slurm: memory per job (default 16GB)")
    sp.add_argument("--walltime", default="02:00:00", help="with --cluster slurm: time limit per job (default 02:00:00)")
    sp.add_argument("--force", action="store_true", help="recompute every tile instead of resuming")
    sp.add_argument("--dry-run", action="store_true", help="plan each slide (µm/px, tissue, tiles) and print the "
                    "plan; no tile runs and nothing is written")
    sp.add_argument("--gzip", action="store_true", help="write NAME.geojson.gz (QuPath >= 0.4 reads it); the "
                    "DSA file stays plain JSON, which is all the DSA ingests")
    sp.add_argument("--features", action="store_true", help="measure every nucleus at the score cut (HistomicsTK's "
                    "feature definitions): NAME.nuclei.parquet, one row per nucleus, and NAME.bag.parquet, one row per "
                    "tile, for multiple-instance learning")
    sp.add_argument("--feature-families", default="morphometry,fsd,intensity,gradient",
                    help="with --features: which families (default: morphometry,fsd,intensity,gradient; add haralick "
                    "for texture, the costly one)")
    sp.add_argument("--embeddings", action="store_true", help="a learned vector per nucleus (64 float16 values: "
                    "the star head's features averaged over the nucleus' outline) as the 'embedding' column of "
                    "NAME.nuclei.parquet, and each tile's mean in NAME.bag.parquet (the two tables are written with "
                    "or without --features)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=_cmd_detect)

    sp = sub.add_parser("models", help="list the shipped models with their headline figures")
    sp.add_argument("--json", action="store_true", help="print them as JSON")
    sp.set_defaults(func=_cmd_models)

    sp = sub.add_parser("demo", help="fetch the bundled demo slide (CMU-1-Small-Region.svs) and run detection on it")
    sp.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    sp.add_argument("--cache", default=None, help="where the demo slide is kept (default ~/.cache/wsinuclei)")
    sp.add_argument("--model", default=None, help="model file, or a shipped model's name from 'wsinuclei models' (default: the shipped default)")
    sp.add_argument("--workers", type=int, default=0, help="local Dask workers (default 0: in-process)")
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=_cmd_demo)

    sp = sub.add_parser("regions", help="count a finished run's nuclei inside drawn regions (QuPath or DSA polygons)",
                        description="Count the nuclei of a finished 'wsinuclei detect' run inside the polygons of a "
                        "QuPath GeoJSON export or a Digital Slide Archive annotation (base-level pixels): one row per "
                        "region and one per region class, written to NAME.regions.csv and NAME.regions.parquet (the columns the "
                        "cohort table uses). No second detection.")
    sp.add_argument("run", help="the run's output folder, or its NAME.run.json")
    sp.add_argument("--regions", required=True, help="QuPath GeoJSON (annotations) or DSA annotation JSON")
    sp.add_argument("--out", default=None, help="write only this CSV instead (default RUN/NAME.regions.csv and "
                    ".parquet)")
    sp.set_defaults(func=_cmd_regions)

    sp = sub.add_parser("cohort", help="one table over many finished runs (a row per slide, and per region)",
                        description="Gather finished 'wsinuclei detect' runs into one tidy CSV: a row per slide (nuclei, "
                        "per type, per mm2 of tissue with --features), and a row per region and region class where "
                        "'wsinuclei regions' counted them; each row names its model and wsinuclei version.")
    sp.add_argument("runs", nargs="+", help="run output folders (or their NAME.run.json files)")
    sp.add_argument("--out", required=True, help="the table to write (CSV)")
    sp.set_defaults(func=_cmd_cohort)

    sp = sub.add_parser("view", help="show a slide and its nuclei in the browser",
                        description="Serve a slide and the nuclei 'wsinuclei detect' found in it on 127.0.0.1 and "
                        "open it in the browser: zoom and pan, a score slider, counts in view and in total, "
                        "click a nucleus for its score. TARGET is a detect output folder (one run), a NAME.run.json, "
                        "or a slide (add --results for its run).")
    sp.add_argument("target", metavar="OUT_DIR_OR_SLIDE")
    sp.add_argument("--results", default=None, help="with a slide: the output folder or NAME.run.json of its run")
    sp.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    sp.add_argument("--mpp", type=float, default=None, help="µm/px for the scale bar when the file has none")
    sp.add_argument("--no-browser", action="store_true", help="only print the address")
    sp.set_defaults(func=_cmd_view)

    sp = sub.add_parser("info", help="print a slide's metadata: size, levels, µm/px, objective power")
    sp.add_argument("slides", nargs="+", metavar="SLIDE")
    sp.add_argument("--mpp", type=float, default=None, help="µm/px to assume")
    sp.add_argument("--json", action="store_true", help="one JSON object per slide")
    sp.set_defaults(func=_cmd_info)

    sp = sub.add_parser("evaluate", help="match predictions to annotations one-to-one and report metrics",
                        description="Pairs prediction files (CSV/GeoJSON) with truth files (Aperio XML, *_labels.png, "
                        "GeoJSON, CSV) by name; writes metrics.json, per_image.csv, pr_curve.png and overlays "
                        "(TP green, FP blue, FN red). Where NAME_types.csv lies beside the truth (label,type beside "
                        "a label image; x,y,type beside centres) and the predictions have a 'type' column, it also "
                        "scores the types: HoVer-Net's F_t per type, accuracy and a confusion matrix.")
    sp.add_argument("--pred", required=True, help="prediction file or folder")
    sp.add_argument("--truth", required=True, help="annotation file or folder")
    sp.add_argument("--out", required=True, help="report folder")
    sp.add_argument("--score-threshold", type=float, default=0.5, help="operating point for P/R/F1 (default 0.5)")
    sp.add_argument("--iou", type=float, default=0.5, help="IoU for a true positive (default 0.5)")
    sp.add_argument("--radius-um", type=float, default=3.0, help="centroid pairing radius in µm (default 3)")
    sp.add_argument("--mpp", type=float, default=0.25, help="µm/px of the images, for the radius (default 0.25)")
    sp.add_argument("--border", type=int, default=0, help="ignore boxes whose centre is within N px of the border")
    sp.add_argument("--images", default=None, help="folder of the images, for overlays (default: beside the truth)")
    sp.add_argument("--no-overlays", action="store_true", help="skip the overlay images")
    sp.add_argument("--min-precision", type=float, default=None, metavar="P",
                    help="also name the score cut with the highest recall at precision >= P (score_cuts.csv holds "
                    "every cut from 0.10 to 0.90)")
    sp.set_defaults(func=_cmd_evaluate)

    sp = sub.add_parser("prepare", help="cut annotated images into normalised training tiles with boxes")
    sp.add_argument("data", nargs="?", default=None,
                    help="folder of images with annotations (A.png + A_labels.png, or A.tif + A.xml)")
    sp.add_argument("--recipe", default=None,
                    help="a data recipe (TOML) naming several sets, e.g. recipes/contours_data.toml")
    sp.add_argument("--out", required=True, help="output folder for tiles and manifest.json")
    sp.add_argument("--mpp", type=float, default=0.25, help="the model's µm/px (default 0.25, 40x)")
    sp.add_argument("--source-mpp", type=float, default=None,
                    help="µm/px of the images when not 40x (e.g. 0.5 for 20x: upsampled to --mpp)")
    sp.add_argument("--tile", type=int, default=512, help="training tile size in px (default 512)")
    sp.add_argument("--val-fraction", type=float, default=0.1, help="share of images held out (default 0.1)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=_cmd_prepare)

    sp = sub.add_parser("train", help="train a detector preset on prepared tiles (resumable)")
    sp.add_argument("--preset", default="fast", help="preset name (fast, resnet50, resnet101) or TOML path")
    sp.add_argument("--data", required=True, help="folder written by 'wsinuclei prepare'")
    sp.add_argument("--run-dir", required=True, help="folder for checkpoints, log.csv and best.safetensors")
    sp.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    sp.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default="cpu", help="cpu or cuda")
    sp.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sp.add_argument("--workers", type=int, default=0,
                    help="processes drawing training crops ahead of each step (for a GPU: about one per spare "
                         "core; default 0: drawn in the training process, the crop stream of earlier runs)")
    sp.add_argument("--input-channels", choices=["rgb", "hematoxylin"], default=None,
                    help="override the preset's input channels")
    sp.add_argument("--color-jitter", type=float, default=0.0, help="colour jitter strength (default 0: off)")
    sp.add_argument("--init", default=None, metavar="MODEL",
                    help="start from the matching weights of a model file (e.g. the shipped box model)")
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=_cmd_train)

    sp = sub.add_parser("train-types", help="teach a model cell classes of your own from clicked centres (only a "
                        "type head is trained; the nuclei stay the parent model's)",
                        description="Each image comes with NAME_types.csv (x,y,type; pixels of the image) or "
                        "NAME.geojson (QuPath point annotations with their classes) beside it. The images are "
                        "detected with the parent model, each click is paired with the nucleus within 3 µm, a linear "
                        "type head is fitted to the nuclei's embeddings, and its per-class F1 and confusion matrix "
                        "on a held-out part are printed. The output is a model file for 'detect --model'.")
    sp.add_argument("data", nargs="+", help="folders of images with clicks beside them, or image files")
    sp.add_argument("--out", required=True, help="model file to write (NAME.safetensors)")
    sp.add_argument("--model", default=None, help="parent model file (a star model; default: the shipped model)")
    sp.add_argument("--mpp", type=float, default=None, help="µm per pixel of the images (needed where their files "
                    "do not say)")
    sp.add_argument("--held-out", type=float, default=0.2, help="share of the clicks held out and scored: whole "
                    "images where there are at least four, else a share of each class (default 0.2)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the held-out choice (default 0)")
    sp.set_defaults(func=_cmd_train_types)

    sp = sub.add_parser("export", help="write a model file for shipping (fp16 weights by default)")
    sp.add_argument("model", help="model file, e.g. RUN_DIR/best.safetensors")
    sp.add_argument("--out", required=True)
    sp.add_argument("--fp32", action="store_true", help="keep float32 weights")
    sp.add_argument("--nested", type=float, default=None,
                    help="store the filter rule: drop a box with more than this share inside a better one (0 off)")
    sp.add_argument("--min-area-um2", type=float, default=None,
                    help="store the filter rule: drop boxes smaller than this many µm² (0 off)")
    sp.add_argument("--nms", type=float, default=None,
                    help="star models: store the box IoU above which the lower-scoring polygon is dropped")
    sp.add_argument("--single-resolution", action="store_true",
                    help="drop the preset's µm/px range: every slide is read at the model's own µm/px (when the "
                    "model falls short at the range's other end)")
    sp.add_argument("--calibrate", metavar="PREPARED", default=None,
                    help="set the operating point on the validation images of a prepared folder: scores are "
                    "shifted so that 0.5 is the threshold with the best mean F1 over the validation sets (after the model's filter)")
    sp.add_argument("--int8", metavar="PREPARED", default=None,
                    help="star models: store an INT8 network for OpenVINO, calibrated on crops of the prepared folder's "
                    "training images and checked on its validation images (needs NNCF at export: pip install nncf)")
    sp.set_defaults(func=_cmd_export)

    sp = sub.add_parser("build-slide", help="write a pyramidal tiled TIFF test slide from annotated images, "
                        "with the annotations in slide coordinates")
    sp.add_argument("data", help="folder of annotated images (as for prepare)")
    sp.add_argument("--out", required=True, help="TIFF path to write")
    sp.add_argument("--grid", default="2x2", help="COLSxROWS cells (default 2x2)")
    sp.add_argument("--gap", type=int, default=0, help="px between images (default 0)")
    sp.add_argument("--margin", type=int, default=200, help="white margin in px (default 200)")
    sp.add_argument("--fill", type=int, default=None, help="fill only N cells, cycling the images (big slides)")
    sp.add_argument("--mpp", type=float, default=0.25)
    sp.add_argument("--compression", default="jpeg", choices=["jpeg", "zlib", "none"])
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=_cmd_build_slide)
    return p


def _version_line() -> str:
    """``wsinuclei VERSION (default model: NAME, FILE)``, the name read from the default model file's metadata."""
    from . import __version__
    from .checkpoint import DEFAULT_MODEL

    model = "none installed"
    if DEFAULT_MODEL.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(DEFAULT_MODEL), "np") as fh:
                model = f"{json.loads(fh.metadata()['preset'])['name']}, {DEFAULT_MODEL.name}"
        except Exception:  # noqa: BLE001 - a damaged file must not stop --version; loading it says what is wrong
            model = f"unreadable file {DEFAULT_MODEL.name}"
    return f"wsinuclei {__version__} (default model: {model})"


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line on stderr and exit 2, like every other user error."""

    def error(self, message):
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"wsinuclei: error: {where}{message} (see '{self.prog} --help')\n")


def main(argv=None) -> int:
    try:
        argv = _argv_for_argparse(list(sys.argv[1:] if argv is None else argv))
    except WsinucleiError as exc:
        print(f"wsinuclei: error: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WsinucleiError as exc:
        print(f"wsinuclei: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsinuclei: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    except MemoryError:
        print("wsinuclei: error: out of memory", file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout closed early (`wsinuclei ... | head`): stop quietly; a detect run resumes
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return 141  # 128 + SIGPIPE, as a shell reports a command ended by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
