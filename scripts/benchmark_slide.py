#!/usr/bin/env python
"""Whole-slide benchmark: a generated >= 20,000 x 20,000 px slide (real MoNuSeg images at 0.25 µm/px, with
tissue and glass) processed in-process and on a local Dask cluster with 1 and 2 workers; plus the Dask
scheduler's per-task overhead on loopback. Prints a Markdown table and writes the raw figures to JSON.

    .venv/bin/python scripts/benchmark_slide.py --out out/bench   # about 30 min on a 2-core machine
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{psutil.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.system()}"


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table's lines: the header, the rule, a line per row (cells as given, str() of each)."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def write_results(out: Path, stem: str, result: dict, lines: list[str]) -> None:
    """A study's outputs: OUT/STEM.json (everything measured) and OUT/STEM.md (the tables), the tables printed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def print_json(result: dict, path: str | None) -> None:
    """Print a result as JSON, and write it to ``path`` too when one is given."""
    print(json.dumps(result, indent=1))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=1))


#: the two real 1024x1024 tiles of CMU-1-Small-Region (base pixels, 20x) the per-tile timings use
DEMO_TILES = ((700, 900), (1000, 1800))


def demo_tiles(slide_path: str, loaded, coords=DEMO_TILES) -> list:
    """Model inputs of 1024x1024 tiles of a slide read at the model's µm/px: Reinhard-normalised, the model's
    channels."""
    from wsinuclei import stain
    from wsinuclei.slide import Slide

    with Slide(slide_path) as s:
        return [stain.model_input(stain.reinhard(s.read_region(x, y, 1024, 1024, loaded.mpp), loaded.target_mu,
                                                 loaded.target_sigma), loaded.input_channels) for x, y in coords]


def alternating(runs: dict, repeats: int) -> dict[object, list[float]]:
    """Seconds of each run, timed in rounds: every run once per round, in the dict's order, ``repeats`` rounds, so
    drifts in the machine's speed hit every run alike. ``runs`` maps a key to a function of the round's index."""
    times = {key: [] for key in runs}
    for k in range(repeats):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn(k)
            times[key].append(time.perf_counter() - t0)
    return times


def peak_tree_rss(proc: subprocess.Popen, stop: threading.Event, out: dict) -> None:
    """Sample the summed RSS of a process and all its children (Dask workers included)."""
    peak = 0
    p = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            procs = [p] + p.children(recursive=True)
            peak = max(peak, sum(c.memory_info().rss for c in procs if c.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    out["peak_rss_gib"] = peak / 2**30


def run(cmd: list[str]) -> dict:
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, mem = threading.Event(), {}
    th = threading.Thread(target=peak_tree_rss, args=(proc, stop, mem))
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return {"wall_s": time.time() - t0, **mem, "stdout": out}


def scheduler_overhead(n: int = 2000) -> float:
    """Seconds of scheduling per task: no-op tasks through a local scheduler and one worker on loopback."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        client.submit(int, 0).result()
        t0 = time.perf_counter()
        futures = client.map(lambda i: i, range(n), pure=False)
        client.gather(futures)
        return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/bench")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "monuseg" / "train"))
    ap.add_argument("--grid", default="20x20", help="cells of 1000x1000 px (default 20x20: 20,400 px square)")
    ap.add_argument("--fill", type=int, default=120, help="cells holding tissue (default 120 of 400)")
    ap.add_argument("--configs", default="inprocess,dask1,dask2")
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wsi = str(Path(sys.executable).parent / "wsinuclei")
    slide = out / "bench_slide.tiff"
    if not slide.exists():
        subprocess.run([wsi, "build-slide", args.data, "--out", str(slide), "--grid", args.grid, "--fill",
                        str(args.fill), "--margin", "200"], check=True)
    configs = {"inprocess": [], "dask1": ["--workers", "1"], "dask2": ["--workers", "2"]}
    results = {"machine": machine(), "slide": str(slide), "model": args.model or "shipped default", "runs": {}}
    for name in args.configs.split(","):
        model = ["--model", args.model] if args.model else []
        res = run([wsi, "detect", str(slide), "--out", str(out / name), "--force", "--quiet", *configs[name], *model])
        report = json.loads((out / name / "bench_slide.run.json").read_text())
        tiles = report["tiles_processed"]
        results["runs"][name] = {
            "executor": report["executor"], "tiles": tiles, "nuclei": report["nuclei"],
            "wall_s": round(res["wall_s"], 1), "run_wall_s": report["wall_s"],
            "tiles_per_s": report["tiles_per_s"], "s_per_tile": round(1 / report["tiles_per_s"], 3),
            "inference_s_per_tile": round(report["stage_totals_s"]["inference_s"] / tiles, 3),
            "stage_totals_s": report["stage_totals_s"], "peak_rss_gib": round(res["peak_rss_gib"], 2),
        }
        print(name, results["runs"][name], flush=True)
    results["scheduler_overhead_ms_per_task"] = round(scheduler_overhead() * 1000, 3)
    (out / "bench_slide.json").write_text(json.dumps(results, indent=1))
    print(f"\nMachine: {results['machine']}")
    print(f"Slide: {slide} ({results['runs'][next(iter(results['runs']))]['tiles']} tissue tiles of 1024x1024 at 0.25 µm/px)\n")
    print("| executor | wall s (whole command) | tiles/s | s per tissue tile | inference s per tile (sum over workers) | peak memory GiB | nuclei |")
    print("|---|---|---|---|---|---|---|")
    for r in results["runs"].values():
        print(f"| {r['executor']} | {r['wall_s']} | {r['tiles_per_s']} | {r['s_per_tile']} | {r['inference_s_per_tile']} | "
              f"{r['peak_rss_gib']} | {r['nuclei']} |")
    print(f"\nDask scheduler overhead on loopback: {results['scheduler_overhead_ms_per_task']} ms per task")


if __name__ == "__main__":
    main()
