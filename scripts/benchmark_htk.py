#!/usr/bin/env python
"""wsinuclei against HistomicsTK's classical NucleiDetection CLI, side by side in one run, on the same slides:
a generated 40x slide (real MoNuSeg H&E images at 0.25 µm/px, 4,300 px square by default) and
CMU-1-Small-Region (20x, 0.499 µm/px). After one untimed run of each, the commands alternate (wsinuclei,
HistomicsTK, wsinuclei, ...) so drifts in machine speed hit both. Each tool's median and best (fastest) run are
reported, and the ratio of each: the speed issue asks for the best of 3; the median is the steadier figure.

HistomicsTK runs as the speed issue prescribes: every core in threads (`--scheduler multithreading --num_workers
N`), box output, and at the slide's own magnification on the 40x slide (`--analysis_mag 40`; at its default 20 it
analyses a quarter of the pixels and finds a tenth of the nuclei there). CMU-1-Small-Region is a 20x slide, so
HistomicsTK keeps its default `analysis_mag` 20 on it. `--htk-defaults` runs it with every default instead.
wsinuclei runs with its defaults.

    .venv/bin/python scripts/benchmark_htk.py [--model M] [--repeats 3] [--out out/bench_htk]

HistomicsTK runs from its own environment (../shared/tools/install_histomicstk.sh; default
~/.cache/histomicstk-venv); wsinuclei never imports it. Writes OUT/htk_side_by_side.json and prints a table.
Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_slide import machine  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))


def htk_cli(venv: Path) -> list[str]:
    script = next(venv.glob("lib/python3*/site-packages/histomicstk/cli/NucleiDetection/NucleiDetection.py"), None)
    if script is None:
        sys.exit(f"HistomicsTK is not installed in {venv}: run ../shared/tools/install_histomicstk.sh {venv}")
    return [str(venv / "bin" / "python"), str(script)]


def timed(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return wall


def htk_settings(slide_name: str) -> list[str]:
    """HistomicsTK's options for one benchmark slide: the issue's settings (all cores in threads, boxes; the 40x
    slide analysed at 40x, the 20x CMU slide at HistomicsTK's default 20x)."""
    opts = ["--scheduler", "multithreading", "--num_workers", str(os.cpu_count()), "--nuclei_annotation_format", "bbox"]
    return opts + (["--analysis_mag", "40"] if slide_name == "generated" else [])


def htk_boxes(anot: Path):
    """Boxes (x0, y0, x1, y1, base pixels) of HistomicsTK's nuclei: its polylines' (or rectangles') extents."""
    import numpy as np

    out = []
    for e in json.loads(anot.read_text()).get("elements", []):
        if "points" in e:
            p = np.asarray(e["points"], dtype=float)[:, :2]
            out.append([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])
        elif e.get("type") == "rectangle":
            cx, cy, _ = e["center"]
            out.append([cx - e["width"] / 2, cy - e["height"] / 2, cx + e["width"] / 2, cy + e["height"] / 2])
    return np.asarray(out, dtype=float).reshape(-1, 4)


def accuracy(pred, truth, mpp: float) -> dict:
    """F1@IoU 0.5 and centroid F1 (3 µm) of boxes against the slide's truth, every box counted (score 1)."""
    import numpy as np

    from wsinuclei.evaluate import evaluate_set

    r = evaluate_set([("slide", pred, np.ones(len(pred)), truth)], radius_px=3.0 / mpp)
    return {"f1": round(r["pooled"]["f1"], 4), "precision": round(r["pooled"]["precision"], 4),
            "recall": round(r["pooled"]["recall"], 4), "centroid_f1": round(r["pooled_centroid"]["f1"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="wsinuclei model file (default: the shipped default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="out/bench_htk")
    ap.add_argument("--htk-venv", default=str(Path.home() / ".cache" / "histomicstk-venv"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "monuseg" / "test"),
                    help="images of the generated slide; its truth scores both tools (the MoNuSeg test images: "
                    "a reported figure, nothing is chosen on it)")
    ap.add_argument("--grid", default="4x4", help="generated slide: cells of 1000x1000 px (4x4: 4,300 px square)")
    ap.add_argument("--slides", default="generated,cmu")
    ap.add_argument("--htk-defaults", action="store_true",
                    help="run HistomicsTK with all its defaults (analysis at 20x, its own Dask cluster, outlines)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wsi = str(Path(sys.executable).parent / "wsinuclei")
    htk = htk_cli(Path(args.htk_venv))
    slides = {}
    if "generated" in args.slides:
        gen = out / "htk_bench_slide.tiff"  # with htk_bench_slide.truth.csv beside it
        if not gen.exists():
            subprocess.run([wsi, "build-slide", args.data, "--out", str(gen), "--grid", args.grid, "--margin", "150"],
                           check=True)
        slides["generated"] = gen
    if "cmu" in args.slides:
        from wsinuclei.datasets import cmu_small_region

        slides["cmu"] = cmu_small_region()
    model = ["--model", args.model] if args.model else []
    htk_args = {name: [] if args.htk_defaults else htk_settings(name) for name in slides}
    results = {"machine": machine(), "cores": os.cpu_count(), "model": args.model or "shipped default",
               "histomicstk_args": {name: " ".join(a) or "defaults" for name, a in htk_args.items()}, "slides": {}}
    for name, slide in slides.items():
        times = {"wsinuclei": [], "histomicstk": []}
        counts = {}
        # untimed, once: file caches warm for both, and a model's one-off OpenVINO conversion (done on a
        # machine's first run, then cached: models/ir_cache.py) does not count as detection time
        timed([wsi, "detect", str(slide), "--out", str(out / f"{name}_wsinuclei"), "--force", "--quiet", *model])
        timed([*htk, *htk_args[name], str(slide), str(out / f"{name}_htk.anot")], cwd=out)
        for k in range(args.repeats):
            d = out / f"{name}_wsinuclei"
            times["wsinuclei"].append(timed([wsi, "detect", str(slide), "--out", str(d), "--force", "--quiet", *model]))
            report = json.loads((d / f"{Path(slide).stem}.run.json").read_text())
            counts["wsinuclei"] = report["nuclei"]
            anot = out / f"{name}_htk.anot"
            times["histomicstk"].append(timed([*htk, *htk_args[name], str(slide), str(anot)], cwd=out))
            counts["histomicstk"] = len(htk_boxes(anot))
            print(name, k, {t: round(v[-1], 1) for t, v in times.items()}, flush=True)
        med = {t: statistics.median(v) for t, v in times.items()}
        best = {t: min(v) for t, v in times.items()}
        results["slides"][name] = {
            "slide": str(slide), "wall_s": {t: [round(x, 2) for x in v] for t, v in times.items()},
            "median_s": {t: round(v, 2) for t, v in med.items()}, "nuclei": counts,
            "ratio_wsinuclei_over_htk": round(med["wsinuclei"] / med["histomicstk"], 3),
            "best_s": {t: round(v, 2) for t, v in best.items()},
            "best_ratio_wsinuclei_over_htk": round(best["wsinuclei"] / best["histomicstk"], 3),
            "wsinuclei_read_mpp": report.get("read_mpp"),
        }
        truth_csv = Path(slide).with_suffix(".truth.csv")
        if truth_csv.is_file():  # a generated slide: both tools scored against its truth
            from wsinuclei.annotations import read_boxes

            truth = read_boxes(truth_csv).boxes
            mpp = report["mpp"]
            ours = read_boxes(out / f"{name}_wsinuclei" / f"{Path(slide).stem}.csv")
            at_cut = ours.boxes[ours.scores >= 0.5]
            results["slides"][name]["accuracy"] = {"wsinuclei": accuracy(at_cut, truth, mpp),
                                                   "histomicstk": accuracy(htk_boxes(out / f"{name}_htk.anot"), truth, mpp)}
    (out / "htk_side_by_side.json").write_text(json.dumps(results, indent=1))
    print(f"\nMachine: {results['machine']}; model: {results['model']}; HistomicsTK: {results['histomicstk_args']}\n")
    print("| slide | wsinuclei s (median) | HistomicsTK s (median) | ratio | best of each: ratio | "
          "nuclei wsinuclei / HistomicsTK |")
    print("|---|---|---|---|---|---|")
    for name, r in results["slides"].items():
        print(f"| {name} | {r['median_s']['wsinuclei']} | {r['median_s']['histomicstk']} | "
              f"{r['ratio_wsinuclei_over_htk']} | {r['best_s']['wsinuclei']} / {r['best_s']['histomicstk']}: "
              f"{r['best_ratio_wsinuclei_over_htk']} | {r['nuclei']['wsinuclei']} / {r['nuclei']['histomicstk']} |")
    for name, r in results["slides"].items():
        if "accuracy" in r:
            print(f"\nAccuracy on {name} (its truth): " + "; ".join(
                f"{tool} F1@0.5 {a['f1']} (P {a['precision']}, R {a['recall']}), centroid F1 {a['centroid_f1']}"
                for tool, a in r["accuracy"].items()))


if __name__ == "__main__":
    main()
