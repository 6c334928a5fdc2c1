"""One tidy table over a cohort of finished runs: a row per slide (its nuclei, per type, and per mm² of the
tissue its tiles held), then a row per region and region class where ``wsinuclei regions``
counted them, each row naming its slide, the model (file, hash) and the wsinuclei version that made it.

Rows are read from each run's files (``NAME.run.json``, with the run's tissue area; ``NAME.bag.parquet`` for the
tissue of a run made before run.json recorded it; ``NAME.regions.csv`` when it had regions); nothing is detected
again.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import WsinucleiError
from .run_files import read_run

SLIDE_COLUMNS = ("level", "slide", "name", "region", "class", "model", "model_sha1", "wsinuclei", "mpp",
                 "score_cut", "tiles_processed", "tiles_failed", "nuclei", "tissue_mm2", "nuclei_per_mm2_tissue",
                 "area_mm2", "nuclei_per_mm2")


def _tissue_mm2(folder: Path, name: str, mpp: float) -> float | None:
    """Tissue area from the bag table (each tile's core area times its tissue fraction), or None without it."""
    bag = folder / f"{name}.bag.parquet"
    if not bag.is_file():
        return None
    import pyarrow.parquet as pq

    t = pq.read_table(bag, columns=["x0", "y0", "x1", "y1", "tissue_fraction"]).to_pydict()
    px = sum((x1 - x0) * (y1 - y0) * (f if f else 1.0)
             for x0, y0, x1, y1, f in zip(t["x0"], t["y0"], t["x1"], t["y1"], t["tissue_fraction"]))
    return px * (mpp / 1000.0) ** 2


def cohort_rows(run_dirs: list[str | Path]) -> list[dict]:
    rows: list[dict] = []
    seen: dict[str, str] = {}
    for run_dir in run_dirs:
        run, folder = read_run(run_dir)
        if run.get("tiles_failed"):
            raise WsinucleiError(f"{run_dir}: {run['tiles_failed']} tiles failed in this run; rerun it before "
                                 f"putting it in a cohort table")
        key = str(Path(run.get("slide", run["name"])))
        if key in seen:
            raise WsinucleiError(f"{run_dir}: slide {key} is already in the table (from {seen[key]})")
        seen[key] = str(run_dir)
        mpp = float(run["mpp"])
        model = run.get("model") or {}
        common = {"slide": run.get("slide", ""), "name": run["name"], "model": Path(model.get("file", "")).name,
                  "model_sha1": model.get("sha1", ""), "wsinuclei": run.get("wsinuclei", ""), "mpp": mpp,
                  "score_cut": run.get("score_cut")}
        tissue = run.get("tissue_mm2") or _tissue_mm2(folder, run["name"], mpp)  # the bag: a run made before run.json held it
        by_type = run.get("nuclei_by_type") or {}
        row = {**common, "level": "slide", "region": "", "class": "", "tiles_processed": run.get("tiles_processed"),
               "tiles_failed": run.get("tiles_failed", 0), "nuclei": run["nuclei"], "tissue_mm2": tissue,
               "nuclei_per_mm2_tissue": run["nuclei"] / tissue if tissue else None}
        for t, c in by_type.items():
            row[f"nuclei_{t}"] = c
            row[f"fraction_{t}"] = c / run["nuclei"] if run["nuclei"] else None
            row[f"{t}_per_mm2_tissue"] = c / tissue if tissue else None
        rows.append(row)
        regions = folder / f"{run['name']}.regions.csv"
        if regions.is_file():
            with open(regions, newline="") as fh:
                for r in csv.DictReader(fh):
                    rows.append({**common, **r, "nuclei": int(r["nuclei"])})
    return rows


def write_cohort(run_dirs: list[str | Path], out: str | Path) -> list[dict]:
    """``wsinuclei cohort``: the table of :func:`cohort_rows` as CSV (columns in a fixed order, then the
    per-type and per-region columns as they first appear; empty where a row has none)."""
    from .outputs import atomic_write_bytes

    if not run_dirs:
        raise WsinucleiError("name at least one run folder")
    rows = cohort_rows(run_dirs)
    columns = list(SLIDE_COLUMNS)
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(out, buf.getvalue().encode())
    return rows
