#!/usr/bin/env python
"""The original study's variants side by side (experiment 1 of the study issue): per model, on the MoNuSeg
2018 test set (reported figures only): AP@0.1 (the study's headline), AP@0.5, mAP, F1@0.5, centroid F1; seconds
per 1024x1024 tile on this CPU; peak memory of one worker; parameters.

    .venv/bin/python scripts/study_variants.py --model fast=src/wsinuclei/weights/fast_default.safetensors \
        --model resnet50=runs/resnet50/best.safetensors --model resnet101=runs/resnet101/best.safetensors \
        --out docs/study

Accuracy comes from ``scripts/evaluate_monuseg_test.sh`` (``wsinuclei detect`` + ``wsinuclei evaluate``, the
README's reported-figures command); time and memory from ``scripts/study_memory.py``'s single-tile run (its own
process, the model's own detection cap, median of 3 after a warm-up, 2 threads). Writes
OUT/variants.{json,md}. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="NAME=FILE")
    ap.add_argument("--out", default="docs/study")
    ap.add_argument("--work", default="out/study_variants", help="detections and reports per model")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmark_slide import machine, markdown_table, write_results

    from wsinuclei.checkpoint import load_model
    from wsinuclei.models import count_parameters

    rows = []
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            sys.exit(f"--model {spec}: expected NAME=FILE of an existing model file")
        work = Path(args.work) / name
        subprocess.run(["bash", str(ROOT / "scripts" / "evaluate_monuseg_test.sh"), str(work)], check=True,
                       env={**os.environ, "MODEL": path})
        m = json.loads((work / "report" / "metrics.json").read_text())
        loaded = load_model(path)
        cap = int(loaded.config.roi_heads["detections_per_img"])
        res = subprocess.run([sys.executable, str(ROOT / "scripts" / "study_memory.py"), "--one", path, str(cap), "1024",
                              "--repeats", "3"], capture_output=True, text=True, check=True)
        t = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append({"model": name, "file": path, "preset": loaded.config.name, "AP@0.1": m["AP@0.1"],
                     "AP@0.5": m["AP@0.5"], "mAP": m["mAP"], "f1": m["pooled"]["f1"],
                     "centroid_f1": m["pooled_centroid"]["f1"], "s_per_tile": t["s_median"],
                     "peak_rss_gib": t["peak_rss_gib"], "params": count_parameters(loaded.model)})
        print(rows[-1], flush=True)
    result = {"machine": machine(), "rows": rows, "command": "python scripts/study_variants.py " + " ".join(sys.argv[1:])}
    lines = [f"Machine: {result['machine']}, 2 threads. Command: `{result['command']}`", ""] + markdown_table(
        ["model", "AP@0.1", "AP@0.5", "mAP", "F1@0.5", "centroid F1", "s per 1024² tile",
         "peak memory per worker (GiB)", "parameters"],
        [[r["model"], f"{r['AP@0.1']:.3f}", f"{r['AP@0.5']:.3f}", f"{r['mAP']:.3f}", f"{r['f1']:.3f}",
          f"{r['centroid_f1']:.3f}", f"{r['s_per_tile']:.2f}", f"{r['peak_rss_gib']:.2f}",
          f"{r['params'] / 1e6:.1f} M"] for r in rows])
    write_results(Path(args.out), "variants", result, lines)

if __name__ == "__main__":
    main()
