"""What ``--embeddings`` adds to ``wsinuclei detect`` (BENCHMARKS.md): whole commands with and without it,
alternating, best of ``--repeats``, on each slide given (in-process, the default model unless ``--model``).

    .venv/bin/wsinuclei build-slide ../shared/data/monuseg/train --out out/bench_embeddings/monuseg_4x4.tiff --grid 4x4
    .venv/bin/python scripts/benchmark_embeddings.py --slides ~/.cache/wsinuclei/CMU-1-Small-Region.svs \
        out/bench_embeddings/monuseg_4x4.tiff --repeats 3 --json out/bench_embeddings.json

Also times ``--features`` and ``--features --embeddings`` (the embedding beside the hand-made features), and
reports where the difference goes: each variant's stage totals from ``NAME.run.json`` (the tiles' inference,
which holds the network's extra output and, in decoding, the pooling over each polygon; and post-processing;
seconds summed over tiles, median over the repeats). Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_slide import alternating, print_json  # noqa: E402

VARIANTS = {"detect": [], "--embeddings": ["--embeddings"], "--features": ["--features"],
            "--features --embeddings": ["--features", "--embeddings"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slides", nargs="+", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for slide in a.slides:
            stages = {label: [] for label in VARIANTS}

            def run(label, extra):
                model = ["--model", a.model] if a.model else []

                def once(k):
                    out = Path(tmp) / f"{Path(slide).stem}-{label.replace(' ', '')}{k}"
                    subprocess.run([sys.executable, "-m", "wsinuclei.cli", "detect", slide, "--out", str(out),
                                    "--quiet", *model, *extra], check=True, capture_output=True)
                    stages[label].append(json.loads(next(out.glob("*.run.json")).read_text())["stage_totals_s"])
                return once

            times = alternating({label: run(label, extra) for label, extra in VARIANTS.items()}, a.repeats)
            best = {label: min(v) for label, v in times.items()}
            res[Path(slide).name] = {
                "best_s": {k: round(v, 2) for k, v in best.items()},
                "stage_totals_median_s": {
                    label: {st: round(statistics.median(r[st] for r in rows), 3)
                            for st in ("inference_s", "postprocess_s") if all(st in r for r in rows)}
                    for label, rows in stages.items()},
                "embeddings_add": round(best["--embeddings"] / best["detect"] - 1, 3),
                "embeddings_add_beside_features": round(best["--features --embeddings"] / best["--features"] - 1, 3)}
            print(Path(slide).name, res[Path(slide).name], flush=True)
    print_json(res, a.json)


if __name__ == "__main__":
    main()
