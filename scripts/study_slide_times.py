#!/usr/bin/env python
"""The study's whole-slide time tables (its Tables 1 and 2; experiment 3 of the study issue) and its CPU-cluster
against GPU claim (experiment 5). Each model runs ``scripts/benchmark_slide.py`` on one generated slide (the
same slide for every model): in-process, and on a local Dask cluster with 1 and 2 workers. With ``--gpu-time``
(``scripts/study_device_time.py``'s JSON from a GPU) it adds the GPU's seconds per tile and works out how many
CPU workers match one GPU, with the assumptions written next to the numbers.

    .venv/bin/python scripts/study_slide_times.py --model fast=src/wsinuclei/weights/fast_default.safetensors \
        --model resnet50=runs/resnet50/best.safetensors --gpu-time docs/study/gpu_time.json --out docs/study

Writes OUT/slide_times.{json,md}. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_slide import markdown_table, write_results  # noqa: E402


def architecture(path: str) -> tuple[str, int | None]:
    """(preset name, block-3 units or None) of a model file, from its metadata: time per tile depends on the
    architecture, so a GPU row of the 23-unit ResNet-101 cut to 18 units times the 18-unit model too."""
    from safetensors import safe_open

    with safe_open(path, "pt") as fh:
        preset = json.loads(fh.metadata()["preset"])
    units = preset["backbone"].get("num_units") if preset["name"].startswith("resnet") else None
    return preset["name"], units


def gpu_seconds(gpu: dict, preset: str, units: int | None) -> float | None:
    """The GPU's median seconds per tile for an architecture."""
    for row in gpu["rows"]:
        if row["preset"] == preset and row["units"] == units:
            return row["s_per_tile_median"]
    return None


def cluster_match(runs: dict, gpu_s: float) -> dict:
    """How many machines like this one (one Dask worker each, torch on all its cores) deliver one GPU's tiles
    per second.

    A machine's rate is the 1-worker Dask run's (tiles/s); machines are assumed to add up linearly over a
    network (each tile is seconds of work against milliseconds of scheduling: see the scheduler overhead). The
    2-worker run on the same cores is reported as what splitting one machine's cores between two workers gives
    (efficiency = rate(2) / (2 x rate(1))): it is not the cluster's scaling. The GPU's rate is bounded twice: by
    its model time per tile and by the host work every tile also needs (reading, normalising, writing: the CPU
    run's whole-slide seconds per tile minus its inference seconds), which the GPU machine's own cores must do.
    """
    one, two = runs["dask1"], runs["dask2"]
    worker_rate = one["tiles_per_s"]
    efficiency = two["tiles_per_s"] / (2 * worker_rate)
    host_s = max(one["s_per_tile"] - one["inference_s_per_tile"], 0.0)
    return {
        "cpu_worker_tiles_per_s": worker_rate,
        "dask_2_worker_efficiency": efficiency,
        "host_s_per_tile": host_s,
        "gpu_model_s_per_tile": gpu_s,
        "workers_to_match_gpu_model_only": (1 / gpu_s) / worker_rate,
        # with 16 host cores (the lent GPU machine's), one tile's host work per core at this machine's speed
        "gpu_tiles_per_s_16_host_cores": min(1 / gpu_s, 16 / host_s) if host_s > 0 else 1 / gpu_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=FILE")
    ap.add_argument("--gpu-time", help="study_device_time.py JSON measured on a GPU")
    ap.add_argument("--grid", default="10x10", help="benchmark_slide.py --grid (cells of 1000 px)")
    ap.add_argument("--fill", type=int, default=30, help="benchmark_slide.py --fill (cells with tissue)")
    ap.add_argument("--work", default="out/study_slide")
    ap.add_argument("--reuse", action="store_true",
                    help="take a model's results from an earlier run in --work (WORK/NAME/bench_slide.json) when there")
    ap.add_argument("--out", default="docs/study")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"grid": args.grid, "fill": args.fill, "models": {}}
    slide = None
    for spec in args.model:
        name, path = spec.split("=", 1)
        folder = work / name
        folder.mkdir(exist_ok=True)
        if slide is not None and not (folder / "bench_slide.tiff").exists():
            os.link(slide, folder / "bench_slide.tiff")  # the same slide for every model
        if not (args.reuse and (folder / "bench_slide.json").is_file()):
            subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_slide.py"), "--out", str(folder),
                            "--grid", args.grid, "--fill", str(args.fill), "--model", path], check=True)
        slide = slide or folder / "bench_slide.tiff"
        bench = json.loads((folder / "bench_slide.json").read_text())
        results["machine"] = bench["machine"]
        results["models"][name] = {"file": path, "runs": bench["runs"]}
    gpu = json.loads(Path(args.gpu_time).read_text()) if args.gpu_time else None
    if gpu:
        results["gpu"] = {"device_name": gpu["device_name"], "torch": gpu["torch"]}
        for name, m in results["models"].items():
            s = gpu_seconds(gpu, *architecture(m["file"]))
            if s is not None:
                m["gpu_model_s_per_tile"] = s
                m["cluster_match"] = cluster_match(m["runs"], s)
    results["command"] = "python scripts/study_slide_times.py " + " ".join(sys.argv[1:])
    first = next(iter(results["models"].values()))["runs"]
    tiles = first[next(iter(first))]["tiles"]
    lines = [f"CPU: {results['machine']}, quiet. Slide: generated {args.grid} cells of 1000 px, {args.fill} with "
             f"tissue ({tiles} tissue tiles of 1024² at 0.25 µm/px). Command: `{results['command']}`", ""]
    lines += markdown_table(
        ["model", "executor", "whole command s", "s per tile", "inference s per tile (summed over workers)",
         "peak memory GiB (all processes)", "nuclei"],
        [[name, r["executor"], r["wall_s"], r["s_per_tile"], r["inference_s_per_tile"], r["peak_rss_gib"], r["nuclei"]]
         for name, m in results["models"].items() for r in m["runs"].values()])
    if gpu:
        lines += ["", f"GPU: {gpu['device_name']} (torch {gpu['torch']}), the model alone per 1024² tile "
                  "(`scripts/study_device_time.py`; reading, normalising and writing not included).", ""]
        lines += markdown_table(
            ["model", "GPU model s per tile", "tiles/s of this machine (Dask, 1 worker)",
             "2 workers on its 2 cores (efficiency)", "machines like this = one GPU (model only)",
             "host s per tile (CPU)", "GPU tiles/s if 16 host cores feed it"],
            [[name, f"{c['gpu_model_s_per_tile']:.3f}", f"{c['cpu_worker_tiles_per_s']:.3f}",
              f"{c['dask_2_worker_efficiency']:.2f}", f"{c['workers_to_match_gpu_model_only']:.0f}",
              f"{c['host_s_per_tile']:.2f}", f"{c['gpu_tiles_per_s_16_host_cores']:.1f}"]
             for name, m in results["models"].items() if (c := m.get("cluster_match"))])
    write_results(Path(args.out), "slide_times", results, lines)


if __name__ == "__main__":
    main()
