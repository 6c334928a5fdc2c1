"""A model on every annotated set: detection F1, centroid F1, AJI and PQ per set, and seconds per image.

Sets (read from ../shared/data; see recipes/contours_data.toml for the training side):
- monuseg_test: MoNuSeg 2018 test, 14 images, XML outlines (test: reported figures only)
- consep_test: CoNSeP test, 224 tiles of 256 px, instance labels (test: reported figures only)
- nuinsseg_val: the NuInsSeg validation part of the recipe's seeded split (66 images); its masks merge
  touching nuclei, so its instance truth is the watershed split used for training (AJI/PQ there are approximate)
- consep_val / monuseg_val: the recipe's validation parts of the training sets
- crchisto_val: CRCHisto validation, 10 images at 20x with centres only: detected at the slide's own 0.5 µm/px,
  scored by centroid pairing within 3 µm (some nuclei are not annotated: precision is only indicative)
- brca_val: BRCA-M2C validation, 10 breast images at 20x (0.51 µm/px), every cell centre typed
Where the truth has types (CoNSeP, CRCHisto, BRCA-M2C) and the model a type head, HoVer-Net's F_t per type too.

    .venv/bin/python scripts/evaluate_sets.py --out out/sets/fast                        # the shipped model
    .venv/bin/python scripts/evaluate_sets.py --model runs/contours/best.safetensors --out out/sets/contours
    .venv/bin/python scripts/evaluate_sets.py ... --read-mpp 0.5        # every set read at 20x resolution
    .venv/bin/python scripts/evaluate_sets.py ... --norm-statistics slide   # each image's own statistics

Writes OUT/<set>/report/metrics.json (and score_cuts.csv) per set and OUT/sets.json, and prints a Markdown
table; then, for the validation sets only (a test set never chooses anything), the score cuts with the best F1
and with the highest recall at precision >= --min-precision (default 0.75, the "Model 2" issue's target).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wsinuclei.data import find_samples, load_recipe, read_annotation, split_by_image, group_of
from wsinuclei.nucleus_types import types_path
from wsinuclei.pipeline import RunOptions, run_slide
from wsinuclei.report import evaluate_folders

ROOT = Path(__file__).resolve().parents[1]


def _val_samples(recipe: Path, name: str):
    sources, settings = load_recipe(recipe)
    src = next(s for s in sources if s.name == name)
    samples = find_samples(src.path, src.kind)
    groups = sorted({group_of(s.name, src.group) for s in samples})
    _, val = split_by_image(groups, src.val_fraction, int(settings.get("seed", 0)))
    return src, [s for s in samples if group_of(s.name, src.group) in set(val)]


def _stage(samples, folder: Path, kind: str) -> Path:
    """Images and truth side by side in one folder, truth in a format `wsinuclei evaluate` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in samples:
        link = folder / s.image.name
        if not link.exists():
            os.symlink(s.image.resolve(), link)
        if kind == "binary":
            labels = read_annotation(s, "binary")["labels"]
            Image.fromarray(labels.astype(np.uint16)).save(folder / f"{s.name}_labels.png")
        else:
            t = folder / s.truth.name
            if not t.exists():
                os.symlink(s.truth.resolve(), t)
        typed = types_path(s.truth)
        if typed.is_file() and not (folder / typed.name).exists():  # types beside the truth: scored too
            os.symlink(typed.resolve(), folder / typed.name)
    return folder


def run_set(name: str, images: list[Path], truth: Path, out: Path, mpp: float, model: str | None,
            read_mpp: float | None, model_resolution: bool, min_precision: float, norm_statistics: str = "tile") -> dict:
    pred = out / name / "pred"
    opts = RunOptions(mpp=mpp, tissue_mask=False, model=model, progress=False, read_mpp=read_mpp,
                      native_resolution=not model_resolution, norm_statistics=norm_statistics)
    t0 = time.perf_counter()
    for img in images:
        run_slide(img, pred, opts, log=lambda *_: None)
    seconds = (time.perf_counter() - t0) / max(1, len(images))
    res = evaluate_folders(pred, truth, out / name / "report", mpp=mpp, overlays=False, min_precision=min_precision)
    m = res["metrics"]
    row = {"set": name, "images": len(images), "s_per_image": seconds, "mpp": mpp,
           "centroid": m["pooled_centroid"], "operating_points": m["operating_points"]}
    if "pooled" in m:
        row["boxes"] = m["pooled"]
        row["ap50"] = m["AP@0.5"]
    if "segmentation" in m:
        row["segmentation"] = m["segmentation"]
    if m.get("types", {}).get("images"):
        row["types"] = m["types"]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "contours_data.toml"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--sets", nargs="*", default=None, help="only these sets")
    ap.add_argument("--read-mpp", type=float, default=None,
                    help="read every image at this µm/px (e.g. 0.5: the 40x sets at a 20x slide's resolution)")
    ap.add_argument("--model-resolution", action="store_true",
                    help="read every image at the model's own µm/px (CRCHisto upsampled to 0.25)")
    ap.add_argument("--norm-statistics", choices=["tile", "slide"], default="tile",
                    help="where GroupNorm's statistics come from (wsinuclei detect --norm-statistics); each image is a slide")
    ap.add_argument("--min-precision", type=float, default=0.75,
                    help="the validation table's precision floor (default 0.75)")
    args = ap.parse_args()
    data, out, recipe = Path(args.shared) / "data", Path(args.out), Path(args.recipe)
    staged = out / "staged"
    plan = {}
    plan["monuseg_test"] = (sorted((data / "monuseg/test").glob("*.tif")), data / "monuseg/test", 0.25)
    consep_test = find_samples(data / "consep/test", "labels")
    plan["consep_test"] = ([s.image for s in consep_test], data / "consep/test", 0.25)
    for set_name, src_name in (("monuseg_val", "monuseg"), ("nuinsseg_val", "nuinsseg"), ("consep_val", "consep")):
        src, val = _val_samples(recipe, src_name)
        folder = _stage(val, staged / set_name, src.kind)
        plan[set_name] = ([folder / s.image.name for s in val], folder, src.mpp)
    crc = find_samples(data / "crchisto/validation", "points")
    plan["crchisto_val"] = ([s.image for s in crc], data / "crchisto/validation", 0.5)
    brca = find_samples(data / "brca/validation", "points")
    plan["brca_val"] = ([s.image for s in brca], data / "brca/validation", 0.51)

    rows = []
    for name, (images, truth, mpp) in plan.items():
        if args.sets and name not in args.sets:
            continue
        row = run_set(name, images, truth, out, mpp, args.model, args.read_mpp, args.model_resolution,
                      args.min_precision, args.norm_statistics)
        row["norm_statistics"] = args.norm_statistics
        row["read_mpp"] = args.read_mpp or ("model" if args.model_resolution else "native")
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("set", "images", "s_per_image")}), flush=True)
    (out / "sets.json").write_text(json.dumps(rows, indent=1))
    print("| set | images | F1@0.5 | P | R | centroid F1 | AJI | PQ | s per image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, c, sg = r.get("boxes"), r["centroid"], r.get("segmentation", {}).get("pooled")
        print(f"| {r['set']} | {r['images']} | " + (f"{b['f1']:.3f} | {b['precision']:.3f} | {b['recall']:.3f}" if b else
              f"– | {c['precision']:.3f} | {c['recall']:.3f}") + f" | {c['f1']:.3f} | "
              + (f"{sg['aji']:.3f} | {sg['pq']:.3f}" if sg else "– | –") + f" | {r['s_per_image']:.2f} |")
    print_cuts([r for r in rows if r["set"].endswith("_val")], args.min_precision)
    print_types([r for r in rows if "types" in r])
    return 0


def print_types(rows: list[dict]) -> None:
    """Sets with typed truth: HoVer-Net's F_d and F_t per type (centres within 3 µm), accuracy among paired."""
    if not rows:
        return
    names = rows[0]["types"]["types"][:4]
    print("\n| set | F_d | " + " | ".join(f"F_t {n}" for n in names) + " | accuracy |")
    print("|---|---|" + "---|" * len(names) + "---|")
    for r in rows:
        t = r["types"]
        cells = " | ".join("–" if t[f"f_t_{n}"] != t[f"f_t_{n}"] else f"{t[f'f_t_{n}']:.3f}" for n in names)
        print(f"| {r['set']} | {t['f_d']:.3f} | {cells} | {t['type_accuracy']:.3f} |")


def print_cuts(rows: list[dict], min_precision: float) -> None:
    """Validation sets: the best-F1 cut, and the highest recall at the precision floor, per pairing."""
    if not rows:
        return
    print(f"\n| set | pairing | best F1 (cut) | P | R | highest R with P >= {min_precision:g} (cut) | P |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ops = r["operating_points"]
        for pairing, label in (("boxes", "IoU 0.5"), ("centroid", "centroid 3 µm")):
            if pairing not in ops:
                continue
            b, h = ops[pairing]["best_f1"], ops[pairing]["highest_recall"]
            best = f"{b[pairing]['f1']:.3f} ({b['score']:.2f}) | {b[pairing]['precision']:.3f} | {b[pairing]['recall']:.3f}"
            high = "none reaches it | –" if h is None else \
                f"{h[pairing]['recall']:.3f} ({h['score']:.2f}) | {h[pairing]['precision']:.3f}"
            print(f"| {r['set']} | {label} | {best} | {high} |")


if __name__ == "__main__":
    raise SystemExit(main())
