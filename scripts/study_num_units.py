#!/usr/bin/env python
"""The original study's num_units experiment (its Figure 9): a trained ResNet-101 detector with block 3 cut to
6/12/15/18/20/23 units at inference (no retraining), each scored on the MoNuSeg 2018 test images (reported
figures only) and timed; a plot of accuracy and time against units and the same region overlaid for each.

    .venv/bin/python scripts/study_num_units.py --model runs/resnet101/best.safetensors --out docs/study

Each test image (1000x1000, 0.25 µm/px) is Reinhard-normalised from its tissue's statistics, as ``wsinuclei
detect`` normalises a slide (``colour_stats``), and run whole, with the PyTorch backend (units are cut in the
PyTorch model). Scores: AP@0.1 (the study's headline), AP@0.5, mAP, F1@0.5 and centroid F1
(3 µm) at score 0.5. Seconds: median per image, 2 threads. Writes OUT/num_units.{json,md,png} and
OUT/num_units_overlay.png. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT.parent / "shared" / "data" / "monuseg" / "test"


def main() -> None:
    import torch

    from wsinuclei import stain
    from wsinuclei.data import find_samples, image_tissue_stats, load_image, read_annotation
    from wsinuclei.evaluate import evaluate_set
    from wsinuclei.inference import NucleusDetector
    from wsinuclei.models import count_parameters, set_num_units

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a trained resnet101 model file (23 units)")
    ap.add_argument("--data", default=str(TEST), help="annotated images (default: the MoNuSeg 2018 test set)")
    ap.add_argument("--units", default="6,12,15,18,20,23")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/study")
    ap.add_argument("--region", default="TCGA-2Z-A9J9-01A-01-TS1:350:350:300",
                    help="IMAGE:ROW:COL:SIZE of the overlay region")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmark_slide import machine, markdown_table, write_results

    torch.set_num_threads(args.threads)
    det = NucleusDetector.from_file(args.model, backend="torch")
    full = det.model
    samples = find_samples(args.data)
    if not samples:
        sys.exit(f"no annotated images in {args.data}")
    images, truths = {}, {}
    for s in samples:
        img = load_image(s.image)
        stats = image_tissue_stats(s.image, det.loaded.config.mpp, det.loaded.config.mpp)
        images[s.name] = stain.reinhard(img, det.loaded.target_mu, det.loaded.target_sigma, stats.mean, stats.std)
        truths[s.name] = read_annotation(s)["boxes"]
    rows, region_preds = [], {}
    for units in [int(u) for u in args.units.split(",")]:
        det.model = set_num_units(full, units).eval()
        det.predict([next(iter(images.values()))])  # warm-up
        items, times = [], []
        for name, img in images.items():
            t0 = time.perf_counter()
            (b, s), = det.predict([img])
            times.append(time.perf_counter() - t0)
            items.append((name, b, s, truths[name]))
            if name == args.region.split(":")[0]:
                region_preds[units] = (b, s)
        r = evaluate_set(items)
        row = {"units": units, "AP@0.1": r["AP@0.1"], "AP@0.5": r["AP@0.5"], "mAP": r["mAP"],
               "f1": r["pooled"]["f1"], "centroid_f1": r["pooled_centroid"]["f1"],
               "s_per_image": statistics.median(times), "params": count_parameters(det.model)}
        rows.append(row)
        print(row, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "model": args.model, "threads": args.threads, "rows": rows,
              "command": "python scripts/study_num_units.py " + " ".join(sys.argv[1:])}
    lines = [f"Machine: {result['machine']}, {args.threads} threads. Model: `{args.model}`. "
             f"Command: `{result['command']}`", ""] + markdown_table(
        ["block-3 units", "AP@0.1", "AP@0.5", "mAP", "F1@0.5", "centroid F1", "s per 1000² image", "parameters"],
        [[r["units"], f"{r['AP@0.1']:.3f}", f"{r['AP@0.5']:.3f}", f"{r['mAP']:.3f}", f"{r['f1']:.3f}",
          f"{r['centroid_f1']:.3f}", f"{r['s_per_image']:.2f}", f"{r['params'] / 1e6:.1f} M"] for r in rows])
    write_results(out, "num_units", result, lines)
    _plot(rows, out / "num_units.png")
    _overlay(images, region_preds, args.region, out / "num_units_overlay.png")


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = [r["units"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("AP@0.1", "AP@0.1"), ("AP@0.5", "AP@0.5"), ("f1", "F1@0.5"), ("centroid_f1", "centroid F1")):
        ax.plot(u, [r[key] for r in rows], marker="o", label=label)
    ax.set(xlabel="block-3 units at inference", ylabel="score (MoNuSeg test)")
    ax2 = ax.twinx()
    ax2.plot(u, [r["s_per_image"] for r in rows], color="black", ls="--", marker="s", label="s per image")
    ax2.set_ylabel("s per 1000² image (dashed)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _overlay(images, preds, region: str, path: Path) -> None:
    from PIL import Image, ImageDraw

    name, r0, c0, size = region.split(":")
    r0, c0, size = int(r0), int(c0), int(size)
    panels = []
    for units, (b, s) in preds.items():
        crop = Image.fromarray(images[name][r0:r0 + size, c0:c0 + size]).convert("RGB")
        d = ImageDraw.Draw(crop)
        for (x0, y0, x1, y1), sc in zip(b, s):
            if sc >= 0.5 and x1 > c0 and x0 < c0 + size and y1 > r0 and y0 < r0 + size:
                d.rectangle([x0 - c0, y0 - r0, x1 - c0, y1 - r0], outline=(0, 200, 0))
        d.rectangle([0, 0, 80, 14], fill=(255, 255, 255))
        d.text((2, 1), f"{units} units", fill=(0, 0, 0))
        panels.append(crop)
    if not panels:
        return
    sheet = Image.new("RGB", (size * len(panels), size), "white")
    for k, p in enumerate(panels):
        sheet.paste(p, (k * size, 0))
    sheet.save(path)


if __name__ == "__main__":
    main()
