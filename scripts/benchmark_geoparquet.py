"""How long a slide's nuclei take to open in geopandas (BENCHMARKS.md): the nuclei table (GeoParquet, the
``geometry`` column of ``NAME.nuclei.parquet``) against the same nuclei's GeoJSON (``NAME.geojson``), both written
by wsinuclei's own writers.

    python scripts/benchmark_geoparquet.py [--nuclei 500000] [--vertices 32] [--repeats 3] [--json OUT]

The nuclei are star-convex outlines (``--vertices`` points, radius 4-12 px, as the star model draws them) spread
over a 40x slide's area (100,000 x 80,000 px). Each file is read ``--repeats`` times with
``geopandas.read_parquet`` and ``geopandas.read_file`` (pyogrio); the best time is reported. Run on a quiet
machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def star_outlines(n: int, vertices: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform([0, 0], [100_000, 80_000], size=(n, 2))
    radius = rng.uniform(4, 12, size=(n, 1)) * rng.uniform(0.8, 1.2, size=(n, vertices))
    angle = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    return np.stack([centres[:, :1] + radius * np.cos(angle), centres[:, 1:] + radius * np.sin(angle)], axis=-1)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nuclei", type=int, default=500_000)
    ap.add_argument("--vertices", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import geopandas as gpd

    from wsinuclei import __version__
    from wsinuclei.features.tables import write_nuclei_table
    from wsinuclei.outputs import write_geojson

    polys = star_outlines(args.nuclei, args.vertices)
    boxes = np.concatenate([polys.min(1), polys.max(1)], axis=1)
    scores = np.random.default_rng(1).uniform(0.3, 1.0, args.nuclei)
    keep = np.arange(args.nuclei)
    # one tile holding every nucleus and no feature columns: the table is the boxes, scores and outlines
    results = {"t": SimpleNamespace(features={}, failed=None)}
    out = {"nuclei": args.nuclei, "vertices": args.vertices, "wsinuclei": __version__}
    with tempfile.TemporaryDirectory() as tmp:
        pq_path, gj_path = Path(tmp) / "bench.nuclei.parquet", Path(tmp) / "bench.geojson"
        t0 = time.perf_counter()
        write_nuclei_table(pq_path, results, boxes, scores, np.full(args.nuclei, "t"), keep, keep, {}, "bench",
                           polygons=polys)
        out["parquet_write_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        with open(gj_path, "wb") as fh:
            write_geojson(fh, boxes, scores, polys)
        out["geojson_write_s"] = round(time.perf_counter() - t0, 2)
        out["parquet_mb"] = round(pq_path.stat().st_size / 1e6, 1)
        out["geojson_mb"] = round(gj_path.stat().st_size / 1e6, 1)
        frames = {}

        def read_parquet():
            frames["parquet"] = gpd.read_parquet(pq_path)

        def read_geojson():
            frames["geojson"] = gpd.read_file(gj_path)

        out["geopandas_read_parquet_s"] = round(best_of(read_parquet, args.repeats), 2)
        out["geopandas_read_geojson_s"] = round(best_of(read_geojson, args.repeats), 2)
        assert len(frames["parquet"]) == len(frames["geojson"]) == args.nuclei
        out["speedup"] = round(out["geopandas_read_geojson_s"] / out["geopandas_read_parquet_s"], 1)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
