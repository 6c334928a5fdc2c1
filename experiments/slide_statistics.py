#!/usr/bin/env python
"""Slide-level normalisation statistics: a GroupNorm network whose statistics are measured once per slide.

GroupNorm takes its statistics over the whole tile, so a nucleus' outline depends on what else its tile holds
(the tiling changes the nuclei). Statistics fixed over the training data (``norm = "fixed"``) remove that, but
cost detection, most on the sets whose staining differs from the rest (NuInsSeg): the per-image adaptation
was doing work. This tries the middle: the GroupNorm network unchanged, its statistics measured once per
slide, as GroupNorm would measure them on tile-sized windows of that slide's tissue (seeded points spread over
the tissue mask, on a lattice in slide coordinates: independent of the tile size and of an ROI), averaged, and
held for every tile of the slide. An image no larger than a window is normalised by its own statistics, as
GroupNorm normalises it (not bit for bit: a tile also holds the glass of the overlap around the image).

    # a per-slide model file (FixedNorm network, statistics of that slide), then the tiling check with it
    .venv/bin/python experiments/slide_statistics.py calibrate SLIDE --out out/slide_stats/SLIDE.safetensors
    .venv/bin/python scripts/tiling_invariance.py SLIDE --model out/slide_stats/SLIDE.safetensors --out ...
    # accuracy on slides built from validation images: per-tile GroupNorm against slide statistics
    .venv/bin/python experiments/slide_statistics.py mosaics --out out/slide_stats

Float32 through torch only: an INT8 network with per-slide statistics is not built (see experiments/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from wsinuclei.annotations import read_boxes
from wsinuclei.checkpoint import load_model, save_model
from wsinuclei.colour_stats import tissue_lab_stats
from wsinuclei.evaluate import evaluate_set
from wsinuclei.models import DetectorConfig, build_detector
from wsinuclei.models.builder import calibrate_fixed_norms
from wsinuclei.pipeline import RunOptions, run_slide
from wsinuclei.pipeline.plan import norm_windows  # the windows --norm-statistics slide measures on
from wsinuclei.slide import Slide
from wsinuclei.stain import ReinhardTable, model_input
from wsinuclei.synth import build_slide
from wsinuclei.tissue import slide_tissue
from wsinuclei.train import to_tensor

def calibrate(model_path: str | None, slide_path: str, out: str, mpp: float | None = None, windows: int = 8,
              size: int = 1024) -> dict:
    loaded = load_model(model_path)
    cfg = loaded.config.to_dict()
    if cfg["backbone"].get("norm", "group") != "group":
        raise SystemExit(f"{model_path}: not a GroupNorm network")
    cfg["backbone"]["norm"] = "fixed"
    config = DetectorConfig.from_dict(cfg)
    net = build_detector(config)
    missing = net.load_state_dict(loaded.model.state_dict(), strict=False)
    if missing.unexpected_keys or any(not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                                      for k in missing.missing_keys):
        raise SystemExit(f"weights do not fit the fixed-norm network: {missing}")
    net.eval()
    with Slide(slide_path, mpp=mpp) as slide:
        _, ds, mask = slide_tissue(slide)
        stats = tissue_lab_stats(slide, mask, ds, slide.colour_map_mpp(loaded.mpp))  # as pipeline.plan_slide
        table = ReinhardTable(loaded.target_mu, loaded.target_sigma, stats.mean, stats.std)
        wins = norm_windows(slide, mask, ds, loaded.mpp, windows, size)
        crops = [model_input(slide.read_region(x, y, w, h, loaded.mpp, colour_map=table), loaded.input_channels)
                 for x, y, w, h in wins]
    with torch.no_grad():
        layers = calibrate_fixed_norms(net.backbone, net.batch([to_tensor(c) for c in crops]))
    record = {"slide": str(slide_path), "windows": [[round(x, 1), round(y, 1), w, h] for x, y, w, h in wins],
              "layers": layers, "parent": str(loaded.path)}
    save_model(net, config, out, target_mu=loaded.target_mu, target_sigma=loaded.target_sigma, half=False,
               extra={**loaded.extra, "slide_statistics": record})
    return record


def score(slide: Path, truth: Path, out: Path, model: str | None) -> dict:
    opts = RunOptions(progress=False, model=model, force=True, backend="torch")  # float32 both
    run_slide(slide, out, opts, log=lambda *_: None)
    pred = read_boxes(out / f"{slide.name.split('.')[0]}.csv")
    res = evaluate_set([(slide.stem, pred.boxes, pred.scores, read_boxes(truth).boxes)])
    return {"f1": res["pooled"]["f1"], "precision": res["pooled"]["precision"], "recall": res["pooled"]["recall"],
            "centroid_f1": res["pooled_centroid"]["f1"]}


def mosaics(out: Path, model: str | None, windows: int, size: int) -> list[dict]:
    """Slides built from the validation images of the shipped data recipes (never test images), each scored
    with per-tile GroupNorm and with the slide's own statistics."""
    manifest = json.loads(Path("runs/prepared_types/manifest.json").read_text()) \
        if Path("runs/prepared_types/manifest.json").is_file() else None
    val = manifest["val"] if manifest else []
    monuseg = [n.split("__")[1] for n in val if n.startswith("monuseg__")] or \
        ["TCGA-21-5786-01Z-00-DX1", "TCGA-B0-5698-01Z-00-DX1", "TCGA-HE-7130-01Z-00-DX1"]
    consep = [n.split("__")[1] for n in val if n.startswith("consep__")]
    specs = {"MoNuSeg validation, 3 slides in a row": ("../shared/data/monuseg/train", dict(grid=(3, 1), names=monuseg)),
             **{f"MoNuSeg validation, {n} alone": ("../shared/data/monuseg/train", dict(grid=(1, 1), names=[n]))
                for n in monuseg},
             "CoNSeP validation, 48 tiles of 3 originals": ("../shared/data/consep/train",
                                                          dict(grid=(8, 6), names=consep))}
    rows = []
    for label, (data, kw) in specs.items():
        if not kw["names"]:
            continue
        stem = label.split(",")[0].replace(" ", "_").lower() + ("" if len(kw["names"]) > 1 else "_" + kw["names"][0])
        path = out / "mosaics" / f"{stem}.tiff"
        info = build_slide(data, path, compression="jpeg", **kw)
        fixed = out / "mosaics" / f"{stem}.slide_stats_{size}x{windows}.safetensors"
        calibrate(model, str(path), str(fixed), windows=windows, size=size)
        group = out / "runs" / stem / "group"
        row = {"slide": label, "nuclei": info["nuclei"], "windows": windows, "size": size,
               "group_per_tile": json.loads((group / "score.json").read_text()) if (group / "score.json").is_file()
               else score(path, Path(info["truth"]), group, model),
               "slide_statistics": score(path, Path(info["truth"]), out / "runs" / stem / f"slide_{size}x{windows}",
                                         str(fixed))}
        (group / "score.json").write_text(json.dumps(row["group_per_tile"]))
        rows.append(row)
        g, s = row["group_per_tile"], row["slide_statistics"]
        print(f"{label}: F1@0.5 {g['f1']:.3f} -> {s['f1']:.3f}, centroid F1 {g['centroid_f1']:.3f} -> "
              f"{s['centroid_f1']:.3f}", flush=True)
    (out / f"mosaics_{size}x{windows}.json").write_text(json.dumps(rows, indent=1))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate", help="a model file holding one slide's statistics")
    c.add_argument("slide")
    c.add_argument("--out", required=True)
    c.add_argument("--mpp", type=float, default=None)
    m = sub.add_parser("mosaics", help="slides of validation images: per-tile GroupNorm against slide statistics")
    m.add_argument("--out", required=True)
    for p in (c, m):
        p.add_argument("--model", default=None, help="a GroupNorm model file (default: the shipped model)")
        p.add_argument("--windows", type=int, default=8)
        p.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    if a.cmd == "calibrate":
        rec = calibrate(a.model, a.slide, a.out, a.mpp, a.windows, a.size)
        print(f"wrote {a.out}: {rec['layers']} layers from {len(rec['windows'])} windows")
    else:
        mosaics(Path(a.out), a.model, a.windows, a.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
