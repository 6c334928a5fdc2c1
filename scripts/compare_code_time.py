"""Two versions of wsinuclei's code on the same slides, whole `wsinuclei detect` commands, alternating: what a
code change did to the time a user waits (and whether it changed the output).

    git worktree add /tmp/before <commit>
    .venv/bin/python scripts/compare_code_time.py --before /tmp/before/src --out out/code_time \
        --slides out/bench_htk/htk_bench_slide.tiff cmu --repeats 3

Each slide: one untimed run of each version (file caches, a model's one-off OpenVINO conversion), then
``--repeats`` rounds of before, after; medians. Both versions run with the same interpreter and packages
(this checkout's .venv) and their defaults; `cmu` is CMU-1-Small-Region (fetched once). Also says whether the
two runs' CSVs are byte-identical. Writes OUT/code_time.json and prints a table. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_htk import timed  # noqa: E402
from benchmark_slide import machine  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))

DETECT = "import sys; from wsinuclei.cli import main; sys.exit(main())"


def run(src: Path, slide: Path, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-c", DETECT, "detect", str(slide), "--out", str(out), "--force", "--quiet", *extra]
    return timed(cmd, env={**os.environ, "PYTHONPATH": str(src)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the other version's src folder (a git worktree's src)")
    ap.add_argument("--after", default=str(ROOT / "src"), help="default: this checkout's src")
    ap.add_argument("--slides", nargs="+", required=True, help="slide files, or 'cmu' for CMU-1-Small-Region")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--detect-args", default="", help="more `wsinuclei detect` arguments for both, one string")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    versions = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    for name, src in versions.items():
        if not (src / "wsinuclei" / "cli.py").is_file():
            sys.exit(f"--{name} {src}: not a wsinuclei src folder (no wsinuclei/cli.py)")
    extra = args.detect_args.split()
    results = {"machine": machine(), "versions": {k: str(v) for k, v in versions.items()}, "slides": {}}
    for slide in args.slides:
        if slide == "cmu":
            from wsinuclei.datasets import cmu_small_region

            path = Path(cmu_small_region())
        else:
            path = Path(slide)
        times = {name: [] for name in versions}
        dirs = {name: out / f"{path.stem}_{name}" for name in versions}
        for name, src in versions.items():  # untimed
            run(src, path, dirs[name], extra)
        for _ in range(args.repeats):
            for name, src in versions.items():
                times[name].append(round(run(src, path, dirs[name], extra), 3))
        med = {k: round(statistics.median(v), 3) for k, v in times.items()}
        csv = f"{path.stem}.csv"
        same = filecmp.cmp(dirs["before"] / csv, dirs["after"] / csv, shallow=False)
        nuclei = {k: json.loads((d / f"{path.stem}.run.json").read_text())["nuclei"] for k, d in dirs.items()}
        results["slides"][path.name] = {"times_s": times, "median_s": med, "csv_identical": same, "nuclei": nuclei}
    (out / "code_time.json").write_text(json.dumps(results, indent=1))
    print(f"machine: {results['machine']}")
    print("| slide | before s (median) | after s (median) | after / before | same CSV | nuclei before / after |")
    print("|---|---|---|---|---|---|")
    for name, r in results["slides"].items():
        m = r["median_s"]
        print(f"| {name} | {m['before']} | {m['after']} | {round(m['after'] / m['before'], 3)} | "
              f"{'yes' if r['csv_identical'] else 'no'} | {r['nuclei']['before']} / {r['nuclei']['after']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
