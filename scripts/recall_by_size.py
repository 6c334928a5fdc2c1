#!/usr/bin/env python
"""Which annotated nuclei a model finds, by size: for a set that `scripts/evaluate_sets.py` has run (its staged
label images and the model's CSVs), each annotated nucleus counts as found when the centre of at least one
detection box falls inside its mask, and as split when two or more do. Printed per area bin (µm²), nuclei
touching the image edge apart.

    .venv/bin/python scripts/evaluate_sets.py --out out/sets/star_restart_int8 --sets consep_val monuseg_val
    .venv/bin/python scripts/recall_by_size.py out/sets/star_restart_int8 consep_val

Validation sets only (the staged folders of `evaluate_sets.py`); a diagnostic, not a score.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from wsinuclei.annotations import read_csv_boxes
from wsinuclei.evaluate import centres

BINS = [0, 10, 20, 30, 40, 60, 100, float("inf")]


def tally(labels: np.ndarray, points: np.ndarray, mpp: float, rows: dict) -> None:
    """Add one image's nuclei to ``rows``: {(touches the edge, bin): [nuclei, found, split]}."""
    h, w = labels.shape
    cx = np.clip(points[:, 0].astype(np.int64), 0, w - 1)
    cy = np.clip(points[:, 1].astype(np.int64), 0, h - 1)
    area = np.bincount(labels.ravel()) * mpp * mpp
    hits = np.bincount(labels[cy, cx], minlength=len(area))
    edge = np.zeros(len(area), bool)
    for line in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        edge[np.unique(line)] = True
    for i in np.flatnonzero(area[1:] > 0) + 1:
        key = (bool(edge[i]), int(np.searchsorted(BINS, area[i], side="right") - 1))
        r = rows.setdefault(key, [0, 0, 0])
        r[0] += 1
        r[1] += int(hits[i] > 0)
        r[2] += int(hits[i] > 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="an evaluate_sets.py --out folder")
    ap.add_argument("set", help="a set it ran with staged label images, e.g. consep_val")
    ap.add_argument("--mpp", type=float, default=0.25, help="µm/px of the label images")
    args = ap.parse_args()
    staged = args.run / "staged" / args.set
    labels_files = sorted(staged.glob("*_labels.png"))
    if not labels_files:
        ap.error(f"{staged}: no *_labels.png (run scripts/evaluate_sets.py on this set first)")
    rows: dict = {}
    for f in labels_files:
        name = f.name[: -len("_labels.png")]
        boxes = read_csv_boxes(args.run / args.set / "pred" / f"{name}.csv").boxes
        tally(np.array(Image.open(f)).astype(np.int64), centres(boxes), args.mpp, rows)
    print(f"| nuclei | area (µm²) | n | found | split (2+ detections inside) |\n|---|---|---|---|---|")
    for (edge, b), (n, found, split) in sorted(rows.items()):
        hi = "" if np.isinf(BINS[b + 1]) else f"{BINS[b + 1]:g}"
        print(f"| {'at the edge' if edge else 'inside'} | {BINS[b]:g}-{hi} | {n} | {found / n:.2f} | {split / n:.2f} |")
    n = sum(r[0] for r in rows.values())
    print(f"\n{n} nuclei in {len(labels_files)} images; found {sum(r[1] for r in rows.values()) / max(n, 1):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
