"""Train a type head (epithelial, inflammatory, stromal, other) on the shipped star network's embeddings, from the
typed training sets, with ``wsinuclei train-types``' code: the recipe of a typed model whose nuclei are the
shipped model's bit for bit.

Training points (never a validation or test image):
- CoNSeP train without the 3 originals ``recipes/types_data.toml`` holds out: each typed instance's centroid and
  type, written as clicks (``NAME_types.csv``: x,y,type) into OUT/stage/consep beside links to the images (0.25 µm/px);
- BRCA-M2C train: every cell centre with its type (0.51 µm/px);
- CRCHisto train: the typed three quarters of its centres (0.5 µm/px).

    .venv/bin/python scripts/train_type_head.py --out out/type_head/star_types_head.safetensors
    .venv/bin/python scripts/evaluate_sets.py --model out/type_head/star_types_head.safetensors \
        --recipe recipes/types_data.toml --sets consep_val brca_val crchisto_val --out out/sets/type_head

``--sets`` limits the training sets (e.g. ``--sets consep brca``), to compare mixtures on the validation sets.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from wsinuclei.data import find_samples, group_of, load_recipe, split_by_image
from wsinuclei.nucleus_types import TYPE_NAMES, read_label_types
from wsinuclei.type_training import train_types

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def stage_consep(recipe: Path, folder: Path) -> Path:
    """CoNSeP's training originals (not the recipe's validation ones) as images with typed clicks."""
    from PIL import Image
    from scipy import ndimage

    sources, settings = load_recipe(recipe)
    src = next(s for s in sources if s.name == "consep")
    samples = find_samples(src.path, src.kind)
    groups = sorted({group_of(s.name, src.group) for s in samples})
    _, val = split_by_image(groups, src.val_fraction, int(settings.get("seed", 0)))
    folder.mkdir(parents=True, exist_ok=True)
    for s in samples:
        if group_of(s.name, src.group) in set(val):
            continue
        labels = np.asarray(Image.open(s.truth)).astype(np.int64)
        n = int(labels.max())
        lut = read_label_types(s.truth.with_name(s.truth.name.replace("_labels.png", "_types.csv")), n)
        ids = np.arange(1, n + 1)
        present = np.bincount(labels.ravel(), minlength=n + 1)[1:] > 0
        ids = ids[present]
        cy_cx = ndimage.center_of_mass(np.ones_like(labels), labels, ids) if len(ids) else []
        link = folder / s.image.name
        if not link.exists():
            os.symlink(s.image.resolve(), link)
        with open(folder / f"{s.image.stem}_types.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["x", "y", "type"])
            for i, (cy, cx) in zip(ids, cy_cx):
                if lut[i] >= 0:  # centroid of the pixels, in continuous coordinates (pixel centres at +0.5)
                    w.writerow([f"{cx + 0.5:.2f}", f"{cy + 0.5:.2f}", TYPE_NAMES[lut[i]]])
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default=None, help="parent model (default: the shipped model)")
    ap.add_argument("--sets", nargs="*", default=["consep", "brca", "crchisto"])
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "types_data.toml")
    a = ap.parse_args()
    sources = {"consep": lambda: (stage_consep(a.recipe, a.out.parent / "stage" / "consep"), 0.25),
               "brca": lambda: (SHARED / "brca" / "train", 0.51),
               "crchisto": lambda: (SHARED / "crchisto" / "train", 0.5)}
    paths = [sources[s]() for s in a.sets]
    train_types(paths, a.out, parent=a.model, held_out=0.0, log=lambda m: print(m) if "\n" in m or "clicks in" in m
                or "wrote" in m or "penalty" in m else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
