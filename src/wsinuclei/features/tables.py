"""The feature tables of a slide: ``NAME.nuclei.parquet`` (one row per nucleus at the score cut) and
``NAME.bag.parquet`` (one row per tissue tile: the bag of instances a multiple-instance model trains on).

Rows are gathered from the tiles' results a chunk at a time and written as row groups, so the table never
exists as one Python structure; each file is written under a temporary name and renamed when complete.

The nuclei table is also a GeoParquet file (https://geoparquet.org, version 1.1.0): its ``geometry`` column holds
each nucleus' outline (the model's contour, or its box for a box-only model) as WKB, in base-level pixels of the
slide (x right, y down), and the ``geo`` key of the file's metadata says so, so ``geopandas.read_parquet`` gives a
GeoDataFrame directly. Pixels are no coordinate reference system: ``crs`` is null, as the format prescribes for
an undefined one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

CHUNK = 50_000  # nuclei per row group
BAG_STATS = ("mean", "std", "q25", "q50", "q75")


def gather_features(results: dict, tile_of: np.ndarray, row_of: np.ndarray, idx: np.ndarray, columns: list[str]) -> dict:
    out = {c: np.full(len(idx), np.nan, np.float32) for c in columns}
    tiles = tile_of[idx]
    for key in np.unique(tiles):
        sel = np.flatnonzero(tiles == key)
        feats = results[key].features
        rows = row_of[idx[sel]]
        for c in columns:
            out[c][sel] = feats[c][rows]
    return out


def embedding_dim(results: dict) -> int | None:
    """The embeddings' length in a run's tile results (None: the run has none)."""
    return next((r.embeddings.shape[1] for r in results.values() if r.embeddings is not None and r.failed is None),
                None)


def gather_embeddings(results: dict, tile_of: np.ndarray, row_of: np.ndarray, idx: np.ndarray, dim: int) -> np.ndarray:
    """(len(idx), dim) float16: the embeddings of the merged nuclei ``idx``, from the tiles that hold them."""
    out = np.zeros((len(idx), dim), np.float16)
    tiles = tile_of[idx]
    for key in np.unique(tiles):
        sel = np.flatnonzero(tiles == key)
        e = results[key].embeddings
        if e is None or e.shape[1] != dim:
            from ..errors import WsinucleiError

            raise WsinucleiError(f"tile {key} holds no embeddings of length {dim}; rerun with --force")
        out[sel] = e[row_of[idx[sel]]]
    return out


def embedding_array(values: np.ndarray, value_type=None):
    """(N, dim) values as a pyarrow fixed-size list array (one list of ``dim`` per row)."""
    import pyarrow as pa

    n, dim = values.shape
    flat = pa.array(np.ascontiguousarray(values).ravel(), value_type)
    return pa.FixedSizeListArray.from_arrays(flat, dim)


GEOPARQUET_VERSION = "1.1.0"


def geometries_wkb(boxes: np.ndarray, polygons=None) -> list[bytes]:
    """Each nucleus' outline as WKB: its polygon (rows of ``polygons``: an (N, V, 2) array or a list of (V, 2)
    arrays, closed here) or, without polygons, its box."""
    import shapely

    if polygons is None:
        geoms = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], ccw=False)
    elif isinstance(polygons, np.ndarray):
        geoms = shapely.polygons(polygons.astype(np.float64)) if len(polygons) else np.zeros(0, object)
    else:
        geoms = np.array([shapely.Polygon(np.asarray(p, np.float64)) for p in polygons], dtype=object)
    return list(shapely.to_wkb(geoms)) if len(geoms) else []


def geo_metadata(boxes: np.ndarray, polygons, keep: np.ndarray) -> dict:
    """The GeoParquet ``geo`` metadata of the nuclei table: one WKB polygon column in the slide's base-level
    pixel frame (no coordinate reference system), with the bounding box of the rows written."""
    if not len(keep):
        bbox = []
    elif polygons is None:
        b = boxes[keep]
        bbox = [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]
    else:
        pts = (polygons[keep].reshape(-1, 2) if isinstance(polygons, np.ndarray)
               else np.concatenate([np.asarray(polygons[i], np.float64).reshape(-1, 2) for i in keep]))
        bbox = [float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())]
    column = {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": None, "edges": "planar",
              "description": "nucleus outline in base-level pixels of the slide (x right, y down, origin at the "
                             "top-left corner of level 0)"}
    if bbox:
        column["bbox"] = bbox
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry", "columns": {"geometry": column}}


def write_nuclei_table(path: Path, results: dict, boxes, scores, tile_of, row_of, keep: np.ndarray, metadata: dict,
                       model_name: str, areas_um2=None, types=None, polygons=None) -> int:
    """The nuclei ``keep`` (indices into the merged arrays), with their boxes, score, tile, model, for a typed
    model (``types``: ``outputs.Types`` of the merged nuclei) ``type`` and ``p_NAME`` per type, every feature
    column, with embeddings (``--embeddings``) ``embedding`` (a fixed-size list of float16), and last the outline
    (``polygons`` of the merged nuclei, base-level pixels; the box without them) as a GeoParquet ``geometry``
    column. Returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = result_feature_columns(results)
    dim = embedding_dim(results)
    fields = [pa.field(n, pa.float32()) for n in ("x0", "y0", "x1", "y1", "score")]
    if areas_um2 is not None:
        fields.append(pa.field("area_um2", pa.float32()))
    fields += [pa.field("tile", pa.dictionary(pa.int32(), pa.string())), pa.field("model", pa.dictionary(pa.int32(), pa.string()))]
    if types is not None:
        fields.append(pa.field("type", pa.dictionary(pa.int32(), pa.string())))
        fields += [pa.field(f"p_{n}", pa.float32()) for n in types.names]
    fields += [pa.field(c, pa.float32()) for c in columns]
    if dim is not None:
        fields.append(pa.field("embedding", pa.list_(pa.float16(), dim)))
    fields.append(pa.field("geometry", pa.binary()))
    schema = pa.schema(fields, metadata={b"wsinuclei": json.dumps(metadata).encode(),
                                         b"geo": json.dumps(geo_metadata(boxes, polygons, keep)).encode()})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for start in range(0, max(1, len(keep)), CHUNK):
                idx = keep[start:start + CHUNK]
                cols = {n: boxes[idx, i].astype(np.float32) for i, n in enumerate(("x0", "y0", "x1", "y1"))}
                cols["score"] = scores[idx].astype(np.float32)
                if areas_um2 is not None:
                    cols["area_um2"] = np.asarray(areas_um2)[idx].astype(np.float32)
                cols["tile"] = pa.array(tile_of[idx].astype(str)).dictionary_encode()
                cols["model"] = pa.array(np.full(len(idx), model_name)).dictionary_encode()
                if types is not None:
                    cols["type"] = pa.array(np.asarray(types.names, dtype=object)[types.index[idx]],
                                            pa.string()).dictionary_encode()
                    cols.update({f"p_{n}": types.probs[idx, k].astype(np.float32) for k, n in enumerate(types.names)})
                cols.update(gather_features(results, tile_of, row_of, idx, columns))
                if dim is not None:
                    cols["embedding"] = embedding_array(gather_embeddings(results, tile_of, row_of, idx, dim))
                cols["geometry"] = pa.array(geometries_wkb(
                    boxes[idx], None if polygons is None else (polygons[idx] if isinstance(polygons, np.ndarray)
                                                               else [polygons[i] for i in idx])), pa.binary())
                writer.write_table(pa.table([cols[f.name] for f in fields], schema=schema))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(keep)


def result_feature_columns(results: dict) -> list[str]:
    for r in results.values():
        if r.features is not None and r.failed is None:
            return list(r.features)
    return []


def write_bag_table(path: Path, plan, results: dict, tile_of, row_of, keep: np.ndarray, metadata: dict,
                    types=None) -> int:
    """One row per tissue tile: where it is, its tissue, its nuclei (count, per mm² of tissue), for a typed
    model per type its count ``nuclei_NAME``, share ``fraction_NAME`` and density ``NAME_per_mm2_tissue`` (the
    inflammatory density is the TIL density), per feature, the mean, standard deviation and quartiles over
    its nuclei, and with embeddings ``embedding_mean``, the mean of its nuclei's embeddings (float32; NaN for a
    tile without nuclei)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = result_feature_columns(results)
    dim = embedding_dim(results)
    means = []
    by_tile = {}
    tiles_kept = tile_of[keep]
    for key in np.unique(tiles_kept):
        by_tile[key] = keep[tiles_kept == key]
    rows = {n: [] for n in ("tile", "x0", "y0", "x1", "y1", "tissue_fraction", "nuclei", "nuclei_per_mm2_tissue")}
    stats = {f"{c}.{s}": [] for c in columns for s in BAG_STATS}
    names = () if types is None else types.names
    typed = {f"{kind}{n}{tail}": [] for n in names
             for kind, tail in (("nuclei_", ""), ("fraction_", ""), ("", "_per_mm2_tissue"))}
    type_idx = None if types is None else types.index
    for t in plan.tiles:
        x0, y0, x1, y1 = plan.grid.clipped_core(t)
        frac = plan.tissue.get(t.key, (None, 0.0))[0]
        idx = by_tile.get(t.key, np.zeros(0, int))
        tissue_mm2 = plan.tile_tissue_mm2(t)
        for n, v in zip(rows, (t.key, x0, y0, x1, y1, frac, len(idx), len(idx) / tissue_mm2 if tissue_mm2 else np.nan)):
            rows[n].append(v)
        for k, n in enumerate(names):
            c = int((type_idx[idx] == k).sum())
            typed[f"nuclei_{n}"].append(c)
            typed[f"fraction_{n}"].append(c / len(idx) if len(idx) else np.nan)
            typed[f"{n}_per_mm2_tissue"].append(c / tissue_mm2 if tissue_mm2 else np.nan)
        vals = gather_features(results, tile_of, row_of, idx, columns) if len(idx) else {c: np.zeros(0, np.float32) for c in columns}
        for c in columns:
            v = vals[c][np.isfinite(vals[c])].astype(np.float64)
            q = np.percentile(v, [25, 50, 75]) if len(v) else [np.nan] * 3
            for s, value in zip(BAG_STATS, (v.mean() if len(v) else np.nan, v.std() if len(v) else np.nan, *q)):
                stats[f"{c}.{s}"].append(value)
        if dim is not None:
            e = gather_embeddings(results, tile_of, row_of, idx, dim).astype(np.float64)
            means.append(e.mean(0) if len(idx) else np.full(dim, np.nan))
    table = {"tile": pa.array(rows["tile"], pa.string())}
    for n in ("x0", "y0", "x1", "y1", "tissue_fraction", "nuclei_per_mm2_tissue"):
        table[n] = pa.array(rows[n], pa.float64())
    table["nuclei"] = pa.array(rows["nuclei"], pa.int32())
    for n, v in typed.items():
        table[n] = pa.array(v, pa.int32() if n.startswith("nuclei_") else pa.float64())
    for n, v in stats.items():
        table[n] = pa.array(np.asarray(v, np.float32))
    if dim is not None:
        table["embedding_mean"] = embedding_array(np.asarray(means, np.float32).reshape(-1, dim))
    tbl = pa.table(table).replace_schema_metadata({b"wsinuclei": json.dumps(metadata).encode()})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        pq.write_table(tbl, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(plan.tiles)
