#!/usr/bin/env python
"""The same nuclei whatever the tiling: one slide detected with the default tiling (1024-px tiles, overlap 64,
or ``--overlap``) as the reference, then with other tile sizes, four times the overlap and an ROI at an origin
off the 32-px lattice.
For each run: the share of the reference's nuclei (score >= the cut, centres inside the run's area) that have a
counterpart at box IoU >= 0.9 (and, for a typed model, of the same type), and the difference in counts.

    .venv/bin/python scripts/tiling_invariance.py SLIDE --mpp 0.25 --model MODEL --out out/tiling
    .venv/bin/python scripts/tiling_invariance.py SLIDE --norm-statistics slide --out out/tiling_slide_stats
    # the figures of BENCHMARKS.md: ../shared/data/slides/tcga-cr-7395-01a-01-ts1.svs (no µm/px: --mpp 0.25)

Prints a Markdown table and writes the figures to OUT/tiling.json. Accuracy only: no timing.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from wsinuclei.evaluate import box_iou
from wsinuclei.pipeline import RunOptions, run_slide


def read_nuclei(path: Path, cut: float):
    with open(path) as fh:
        rows = [r for r in csv.DictReader(fh) if float(r["score"]) >= cut]
    boxes = np.array([[float(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows]).reshape(-1, 4)
    types = np.array([r.get("type", "") for r in rows], dtype=object)
    return boxes, types


def inside(boxes, roi):
    x, y, w, h = roi
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h)


def compare(ref, other, roi=None, iou_min=0.9) -> dict:
    """Kept share of ``ref``'s nuclei in ``other`` (a counterpart at IoU >= iou_min; with the same type too)."""
    (rb, rt), (ob, ot) = ref, other
    if roi is not None:
        rk, ok = inside(rb, roi), inside(ob, roi)
        rb, rt, ob, ot = rb[rk], rt[rk], ob[ok], ot[ok]
    kept = same_type = 0
    for s in range(0, len(rb), 2000):  # bounded memory: 2,000 reference nuclei at a time
        iou = box_iou(rb[s : s + 2000], ob) if len(ob) else np.zeros((min(2000, len(rb) - s), 0))
        best = iou.argmax(1) if iou.shape[1] else np.zeros(len(iou), int)
        ok = iou.max(1) >= iou_min if iou.shape[1] else np.zeros(len(iou), bool)
        kept += int(ok.sum())
        same_type += int((ok & (ot[best] == rt[s : s + 2000] if len(ob) else ok)).sum())
    n = max(1, len(rb))
    return {"reference": len(rb), "other": len(ob), "kept": kept / n, "kept_same_type": same_type / n,
            "count_diff": (len(ob) - len(rb)) / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide")
    ap.add_argument("--mpp", type=float, default=None, help="the slide's µm/px where its file has none")
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--roi", default="333,217,2048,2048", help="x,y,w,h of the ROI run, off the 32-px lattice")
    ap.add_argument("--norm-statistics", choices=["tile", "slide"], default="tile",
                    help="where GroupNorm's statistics come from in every run (wsinuclei detect --norm-statistics)")
    ap.add_argument("--overlap", type=int, default=64,
                    help="the overlap of every run but the larger-overlap one, which has four times it (default 64)")
    a = ap.parse_args()
    out = Path(a.out)
    roi = tuple(int(v) for v in a.roi.split(","))
    ov = {"overlap": a.overlap, "norm_statistics": a.norm_statistics}
    runs = {f"reference (tile 1024, overlap {a.overlap})": ov, "tile 768": {**ov, "tile_size": 768},
            "tile 512": {**ov, "tile_size": 512}, f"overlap {4 * a.overlap}": {**ov, "overlap": 4 * a.overlap},
            f"ROI at ({roi[0]}, {roi[1]})": {**ov, "roi": roi}}
    results = {}
    for i, (label, kw) in enumerate(runs.items()):
        opts = RunOptions(mpp=a.mpp, model=a.model, progress=False, force=True, **kw)
        report = run_slide(a.slide, out / f"run{i}", opts, log=lambda *_: None)
        results[label] = (read_nuclei(Path(report.outputs["csv"]), opts.score_cut), kw.get("roi"))
    ref = results.pop(next(iter(runs)))[0]
    rows = {label: compare(ref, nuclei, r) for label, (nuclei, r) in results.items()}
    (out / "tiling.json").write_text(json.dumps({"slide": a.slide, "model": a.model or "shipped",
                                                 "norm_statistics": a.norm_statistics, "overlap": a.overlap, "runs": rows},
                                                indent=1))
    print("| run | reference nuclei | kept at IoU >= 0.9 | kept with the same type | count difference |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['reference']:,} | {r['kept']:.1%} | {r['kept_same_type']:.1%} | {r['count_diff']:+.2%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
