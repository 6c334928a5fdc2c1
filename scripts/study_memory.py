#!/usr/bin/env python
"""The original study's memory trade-off (its Figure 6), with wsinuclei's models: detection cap x tile size ->
peak memory of one worker and inference seconds per megapixel; how many workers fit in 12 GB (the study's limit
per worker) and in 24 GB; and how many nuclei each cap loses on the densest tiles.

    .venv/bin/python scripts/study_memory.py --models fast,resnet50 --out docs/study

Models are preset names (their architecture, random weights: memory and time do not depend on the weights,
since the RPN and the RoI heads process a fixed number of proposals whatever the scores) or model files.
Each (model, cap, tile size) runs in its own process, so its peak resident memory (``ru_maxrss``) is its own;
a tile is real H&E (MoNuSeg train images side by side, Reinhard-normalised), one warm-up then the median of
``--repeats``.

Truncation is measured with a trained model (``--count-model``, default the shipped one) on the densest MoNuSeg
test images (reported figures only; nothing is chosen on them): nuclei at the operating point (score >= 0.5)
per tile with no cap, and how many of them a cap of 300/1000/3000 would drop, per tile size (2x2 and 1x1 test
images per 2048/1024 tile; a 512 tile is a quarter image).

Writes OUT/memory.json, OUT/memory.md (tables) and OUT/memory.png. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "monuseg"
GIB = 2 ** 30


def real_tile(size: int, folder: Path) -> np.ndarray:
    """A size x size tile of real H&E: images of ``folder`` side by side (cycled), Reinhard-normalised."""
    from wsinuclei import stain
    from wsinuclei.data import load_image

    files = sorted(folder.glob("*.png")) or sorted(folder.glob("*.tif"))
    files = [f for f in files if not f.stem.endswith("_labels")]
    if not files:
        sys.exit(f"no images in {folder} (../shared missing?)")
    n = -(-size // 1000)
    imgs = [load_image(files[i % len(files)]) for i in range(n * n)]
    rows = [np.concatenate(imgs[r * n:(r + 1) * n], 1) for r in range(n)]
    tile = np.concatenate(rows, 0)[:size, :size]
    mu, sd = stain.lab_mean_std(tile)
    return stain.reinhard(tile, stain.DEFAULT_TARGET_MU, stain.DEFAULT_TARGET_SIGMA, mu, sd)


def _detector(model: str, cap: int):
    import torch

    from wsinuclei.checkpoint import load_model
    from wsinuclei.models import build_detector, load_preset

    if Path(model).is_file():
        m = load_model(model).model
    else:
        torch.manual_seed(0)
        m = build_detector(load_preset(model))
    m.roi_heads.detections_per_img = cap
    return m.eval()


def one(model: str, cap: int, size: int, repeats: int, threads: int) -> dict:
    """Run in a fresh process: peak memory and time of inference on one tile."""
    import torch
    from torchvision.transforms.functional import to_tensor

    torch.set_num_threads(threads)
    det = _detector(model, cap)
    x = to_tensor(real_tile(size, SHARED / "train"))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    with torch.inference_mode():
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            det([x])
            if k:
                times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": model, "cap": cap, "tile": size, "peak_rss_gib": round(peak / GIB, 3),
            "before_inference_gib": round(base / GIB, 3), "s_median": round(statistics.median(times), 3),
            "s_per_megapixel": round(statistics.median(times) / (size * size / 1e6), 3)}


def truncation(count_model: str, caps: list[int], sizes: list[int]) -> dict:
    """Nuclei at score >= 0.5 per tile on the densest test tiles with no cap, and the share each cap drops."""
    import torch

    from wsinuclei import stain
    from wsinuclei.data import load_image
    from wsinuclei.inference import NucleusDetector

    torch.set_num_threads(2)
    det = NucleusDetector.from_file(count_model)
    det.model.roi_heads.detections_per_img = 100000
    files = sorted((SHARED / "test").glob("*.tif"))
    counts = {}
    for f in files:  # per 1000x1000 test image at 0.25 µm/px, padded to a 1024 tile
        img = load_image(f)
        mu, sd = stain.lab_mean_std(img)
        x = stain.reinhard(img, det.loaded.target_mu, det.loaded.target_sigma, mu, sd)
        (_, s), = det.predict([x])
        counts[f.stem] = int((s >= 0.5).sum())
    dense = sorted(counts.values(), reverse=True)
    per_size = {}
    for size in sizes:
        area = (size / 1000) ** 2  # test images' worth of tissue per tile
        n = int(round(sum(dense[:max(1, round(area))]) if area >= 1 else dense[0] * area))
        per_size[size] = {"nuclei_at_cut": n, "lost": {c: max(0, n - c) for c in caps}}
    return {"model": count_model, "per_image_at_cut": counts, "densest_tiles": per_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="fast,resnet50")
    ap.add_argument("--caps", default="300,1000,3000")
    ap.add_argument("--tiles", default="512,1024,2048")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--count-model", default=str(ROOT / "src" / "wsinuclei" / "weights" / "fast_default.safetensors"))
    ap.add_argument("--out", default="docs/study")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "CAP", "TILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), int(args.one[2]), args.repeats, args.threads)))
        return
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmark_slide import machine, markdown_table, write_results

    caps = [int(c) for c in args.caps.split(",")]
    sizes = [int(s) for s in args.tiles.split(",")]
    rows = []
    for model in args.models.split(","):
        for size in sizes:
            for cap in caps:
                res = subprocess.run([sys.executable, __file__, "--one", model, str(cap), str(size), "--repeats",
                                      str(args.repeats), "--threads", str(args.threads)],
                                     capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"{model} cap {cap} tile {size} failed:\n{res.stderr[-2000:]}")
                row = json.loads(res.stdout.strip().splitlines()[-1])
                row["workers_in_12gb"] = int(12e9 // (row["peak_rss_gib"] * GIB))
                row["workers_in_24gb"] = int(24e9 // (row["peak_rss_gib"] * GIB))
                rows.append(row)
                print(row, flush=True)
    trunc = truncation(args.count_model, caps, sizes)
    out = Path(args.out)
    result = {"machine": machine(), "threads": args.threads, "rows": rows, "truncation": trunc,
              "command": "python scripts/study_memory.py " + " ".join(sys.argv[1:])}
    lines = [f"Machine: {result['machine']}, {args.threads} threads. Command: `{result['command']}`", ""]
    lines += markdown_table(
        ["model", "tile", "detection cap", "peak memory per worker (GiB)", "s per tile", "s per megapixel",
         "workers in 12 GB", "in 24 GB"],
        [[r["model"], r["tile"], r["cap"], f"{r['peak_rss_gib']:.2f}", f"{r['s_median']:.2f}",
          f"{r['s_per_megapixel']:.2f}", r["workers_in_12gb"], r["workers_in_24gb"]] for r in rows])
    lines += ["", f"Nuclei at score >= 0.5 on the densest MoNuSeg test tiles ({Path(trunc['model']).name}, no cap), "
              "and how many each cap drops:", ""]
    lines += markdown_table(["tile", "nuclei at the cut"] + [f"lost at cap {c}" for c in caps],
                            [[size, t["nuclei_at_cut"]] + [t["lost"][c] for c in caps]
                             for size, t in trunc["densest_tiles"].items()])
    write_results(out, "memory", result, lines)
    _plot(rows, out / "memory.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        for cap in dict.fromkeys(r["cap"] for r in rows):
            sel = [r for r in rows if r["model"] == model and r["cap"] == cap]
            label = f"{model}, cap {cap}"
            axes[0].plot([r["tile"] for r in sel], [r["peak_rss_gib"] for r in sel], marker="o", label=label)
            axes[1].plot([r["tile"] for r in sel], [r["s_per_megapixel"] for r in sel], marker="o", label=label)
    axes[0].axhline(12, color="grey", ls="--", lw=1)
    axes[0].set(xlabel="tile size (px)", ylabel="peak memory per worker (GiB)", title="memory (dashed: 12 GB)")
    axes[1].set(xlabel="tile size (px)", ylabel="s per megapixel", title="time")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
