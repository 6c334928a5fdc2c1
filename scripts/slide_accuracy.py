"""Whole-slide accuracy on slides built from real test images, and its independence of the slide's size.

The same 2x2 block of MoNuSeg test images is written twice as a JPEG-tiled pyramidal TIFF: on a small slide
(thumbnail at about 1/1 scale) and in the middle of a 20,000-px slide of glass (thumbnail at about 1/10). Each
is detected with the shipped model and scored against the images' annotations; the Reinhard source statistics
are taken (a) as wsinuclei takes them now (tissue patches at the model's µm/px) and (b) as it used to (the
thumbnail's tissue pixels), to show what the change does. The 14 test images are also scored as one slide.

    .venv/bin/python scripts/slide_accuracy.py --out out/slide_accuracy

Test images only give reported figures: nothing here trains, tunes or selects anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from wsinuclei import stain
from wsinuclei.annotations import read_boxes
from wsinuclei.evaluate import evaluate_set
from wsinuclei.pipeline import RunOptions, run_slide
from wsinuclei.slide import Slide
from wsinuclei.synth import build_slide
from wsinuclei.tissue import tissue_mask

BLOCK = ["TCGA-2Z-A9J9-01A-01-TS1", "TCGA-44-2665-01B-06-BS6", "TCGA-69-7764-01A-01-TS1", "TCGA-A6-6782-01A-01-BS1"]


def thumbnail_stats(path: Path):
    """The old definition: lαβ statistics of the thumbnail's tissue pixels."""
    with Slide(path) as s:
        thumb, _ = s.thumbnail()
        dims = s.dimensions
    return stain.lab_mean_std(thumb[tissue_mask(thumb)].reshape(-1, 1, 3)), thumb.shape, dims


def score(path: Path, out: Path, truth_csv: Path, lab_stats=None, model=None) -> dict:
    opts = RunOptions(min_tissue=0.05, progress=False, lab_stats=lab_stats, model=model, force=True)
    report = run_slide(path, out, opts, log=lambda *_: None)
    pred = read_boxes(out / f"{path.name.split('.')[0]}.csv")
    res = evaluate_set([(path.stem, pred.boxes, pred.scores, read_boxes(truth_csv).boxes)])
    return {"f1": res["pooled"]["f1"], "precision": res["pooled"]["precision"], "recall": res["pooled"]["recall"],
            "centroid_f1": res["pooled_centroid"]["f1"], "ap50": res["AP@0.5"], "tiles": report.tiles_processed,
            "lab_std": report.reinhard_source.get("std")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/monuseg/test")
    ap.add_argument("--out", default="out/slide_accuracy")
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--only", default=None, help="run only the slide whose label starts with this")
    args = ap.parse_args()
    out = Path(args.out)
    slides = {
        "2x2 block, small slide": dict(grid=(2, 2), margin=200, names=BLOCK),
        "2x2 block, 20,000-px slide": dict(grid=(2, 2), margin=9000, names=BLOCK),
        "all 14 test images": dict(grid=(4, 4), gap=200, margin=400),  # 14 of the 16 cells, each image once
    }
    rows = []
    for label, kw in slides.items():
        if args.only and not label.startswith(args.only):
            continue
        stem = label.split(",")[0].replace(" ", "_") + ("_big" if "20,000" in label else "")
        path = out / "slides" / f"{stem}.tiff"
        info = build_slide(args.data, path, compression="jpeg", **kw)
        truth = Path(info["truth"])
        (old_mu, old_sd), thumb_shape, dims = thumbnail_stats(path)
        scale = dims[0] / thumb_shape[1]
        new = score(path, out / "runs" / stem / "now", truth, model=args.model)
        old = score(path, out / "runs" / stem / "thumbnail_stats", truth, lab_stats=(old_mu, old_sd), model=args.model)
        rows.append({"slide": label, "size": dims, "thumbnail_scale": scale, "nuclei": info["nuclei"], "now": new,
                     "thumbnail_stats": old, "thumbnail_lab_std": old_sd.tolist()})
        print(f"{label}: {dims[0]}x{dims[1]}, thumbnail 1/{scale:.1f}; F1@0.5 now {new['f1']:.3f} "
              f"(thumbnail statistics {old['f1']:.3f}); centroid F1 {new['centroid_f1']:.3f} "
              f"({old['centroid_f1']:.3f})", flush=True)
    (out / f"slide_accuracy{'_' + args.only.replace(' ', '_') if args.only else ''}.json").write_text(json.dumps(rows, indent=1))
    print("| slide | size (px) | thumbnail scale | nuclei | F1@0.5 | P | R | centroid F1 | AP@0.5 | "
          "F1@0.5 with thumbnail statistics |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n, o = r["now"], r["thumbnail_stats"]
        print(f"| {r['slide']} | {r['size'][0]:,} x {r['size'][1]:,} | 1/{r['thumbnail_scale']:.1f} | {r['nuclei']:,} | "
              f"{n['f1']:.3f} | {n['precision']:.3f} | {n['recall']:.3f} | {n['centroid_f1']:.3f} | {n['ap50']:.3f} | "
              f"{o['f1']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
