"""Nuclei counted inside drawn regions: polygons from a QuPath GeoJSON export or a Digital Slide Archive
annotation, each nucleus assigned to every region that holds its centre, one row per region and one per region
class (all the polygons of one class together), written as ``NAME.regions.csv``.

Coordinates are base-level pixels of the slide, as both tools write them and as wsinuclei's outputs are.
Assignment uses a shapely STRtree over the regions (one vectorised query for all centres, not a loop over
pairs). Counting reads a finished run's files (``NAME.run.json`` and the CSV it names), so a region drawn after
detection needs no second detection.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import WsinucleiError


@dataclass
class Region:
    name: str
    cls: str  # the region's class (QuPath classification, DSA group); "" when none
    geometry: object  # shapely Polygon or MultiPolygon, valid
    repaired: bool = False  # made valid with shapely.make_valid (e.g. a self-intersecting outline)


def _polygon(rings) -> object:
    import shapely

    shell, *holes = [np.asarray(r, np.float64)[:, :2] for r in rings]
    return shapely.Polygon(shell, holes)


def _geojson_geometry(g: dict):
    import shapely

    kind = g.get("type")
    if kind == "Polygon":
        return _polygon(g["coordinates"])
    if kind == "MultiPolygon":
        return shapely.MultiPolygon([_polygon(p) for p in g["coordinates"]])
    return None  # points and lines are not regions


def _dsa_geometry(e: dict):
    import shapely

    kind = e.get("type")
    if kind == "polyline" and e.get("closed", False):
        return shapely.Polygon(np.asarray(e["points"], np.float64)[:, :2])
    if kind == "polyline":
        return None  # an open line encloses nothing
    if kind == "rectangle":
        (cx, cy, *_), w, h = e["center"], float(e["width"]), float(e["height"])
        box = shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        return shapely.affinity.rotate(box, float(e.get("rotation", 0.0)), origin=(cx, cy), use_radians=True)
    return None


def read_regions(path: str | Path) -> list[Region]:
    """The polygons of a QuPath GeoJSON export (a FeatureCollection, a list of features or one feature;
    name from ``properties.name``, class from ``properties.classification.name``) or of a DSA annotation JSON
    (``{"elements": [...]}``, optionally inside ``{"annotation": ...}`` or a list of such; closed polylines and
    rectangles; name from the element's label, class from its group or the annotation's name)."""
    import shapely

    path = Path(path)
    if not path.is_file():
        raise WsinucleiError(f"{path}: no such regions file")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WsinucleiError(f"{path}: not a JSON file of regions ({e})") from None
    found: list[tuple[str, str, object]] = []
    docs = doc if isinstance(doc, list) else [doc]
    for d in docs:
        if not isinstance(d, dict):
            continue
        if "annotation" in d and isinstance(d["annotation"], dict):
            d = d["annotation"]
        if "elements" in d:  # DSA
            for k, e in enumerate(d.get("elements") or []):
                g = _dsa_geometry(e) if isinstance(e, dict) else None
                if g is not None:
                    label = (e.get("label") or {}).get("value") if isinstance(e.get("label"), dict) else None
                    cls = e.get("group") or d.get("name") or ""
                    found.append((label or f"{cls or 'region'} {k + 1}", str(cls), g))
            continue
        feats = d.get("features") if d.get("type") == "FeatureCollection" else [d]
        for k, f in enumerate(feats or []):
            if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
                continue
            g = _geojson_geometry(f["geometry"])
            if g is None:
                continue
            props = f.get("properties") or {}
            cls = (props.get("classification") or {}).get("name", "") if isinstance(props.get("classification"), dict) else ""
            found.append((props.get("name") or f"{cls or 'region'} {k + 1}", str(cls or ""), g))
    if not found:
        raise WsinucleiError(f"{path}: holds no polygon or rectangle (QuPath GeoJSON annotations or a DSA "
                             f"annotation with closed polylines or rectangles)")
    regions = []
    for name, cls, g in found:
        repaired = not shapely.is_valid(g)
        if repaired:
            g = shapely.make_valid(g)
            g = shapely.union_all([p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")])
        if g.is_empty or g.area <= 0:
            raise WsinucleiError(f"{path}: region '{name}' encloses no area")
        regions.append(Region(str(name), cls, g, repaired))
    return regions


def read_nuclei(run: dict, folder: Path) -> dict[str, np.ndarray]:
    """The run's nuclei at its score cut, from its CSV: centres (N, 2), and ``area_um2`` and ``type`` where the
    CSV has them."""
    from .annotations import read_csv_boxes

    csv_path = folder / f"{run['name']}.csv"
    if not csv_path.is_file():
        raise WsinucleiError(f"{csv_path}: the run's CSV is missing")
    b = read_csv_boxes(csv_path)
    if b.scores is None:
        raise WsinucleiError(f"{csv_path}: not a result CSV (no score column)")
    keep = b.scores >= float(run.get("score_cut", 0.5))
    out = {"centres": (b.boxes[keep, :2] + b.boxes[keep, 2:]) / 2}
    if "area_um2" in b.meta:
        out["area_um2"] = b.meta["area_um2"][keep]
    if b.types is not None:
        out["type"] = b.types[keep]
    return out


def region_union(regions: list[Region]):
    """All regions as one geometry (what ``detect --regions`` runs and reports inside)."""
    import shapely

    return shapely.union_all([r.geometry for r in regions])


def _in_units(geoms: list, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point index, unit index) of every point (N, 2) inside or on each geometry: one STRtree query."""
    import shapely

    if not len(xy):
        return np.zeros(0, int), np.zeros(0, int)
    return shapely.STRtree(geoms).query(shapely.points(xy), predicate="intersects")


def tissue_pixels(mask: np.ndarray, ds: float) -> np.ndarray:
    """Base-level centres (N, 2) of a tissue mask's pixels (``ds`` base pixels per mask pixel)."""
    r, c = np.nonzero(mask)
    return np.stack([(c + 0.5) * ds, (r + 0.5) * ds], 1)


def count_in_regions(regions: list[Region], nuclei: dict, mpp: float, type_names=(), tissue=None,
                     log=lambda *_: None) -> list[dict]:
    """One row per region, then one per region class (its polygons' union; a nucleus counted once per class):
    name, class, area in mm², nuclei, nuclei per mm², per type its count, fraction and density, and the median
    nucleus area (µm²) where the run has contours. With ``tissue`` (the slide's tissue mask and its downsample),
    also the tissue area inside each region (mask pixels whose centre it holds) and the densities per mm² of
    tissue; a region that holds no tissue is said in ``log``."""
    import shapely

    units = [(r.name, r.cls, r.geometry, "region") for r in regions]
    classes = sorted({r.cls for r in regions if r.cls})
    units += [(c, c, shapely.union_all([r.geometry for r in regions if r.cls == c]), "class") for c in classes]
    geoms = [u[2] for u in units]
    pt_idx, unit_idx = _in_units(geoms, nuclei["centres"])
    tissue_mm2 = None
    if tissue is not None:
        mask, ds = tissue
        t_idx, t_unit = _in_units(geoms, tissue_pixels(mask, ds))
        tissue_mm2 = np.bincount(t_unit, minlength=len(units)) * (ds * mpp / 1000.0) ** 2
    rows = []
    for k, (name, cls, geom, level) in enumerate(units):
        inside = np.unique(pt_idx[unit_idx == k])
        area_mm2 = geom.area * (mpp / 1000.0) ** 2
        row = {"level": level, "region": name, "class": cls, "area_mm2": area_mm2, "nuclei": len(inside),
               "nuclei_per_mm2": len(inside) / area_mm2 if area_mm2 else np.nan}
        tis = None
        if tissue_mm2 is not None:
            tis = float(tissue_mm2[k])
            row["tissue_mm2"] = tis
            row["nuclei_per_mm2_tissue"] = len(inside) / tis if tis else np.nan
            if not tis and level == "region":
                log(f"region '{name}' holds no tissue: its densities per mm² of tissue are left empty")
        if "type" in nuclei:
            types = nuclei["type"][inside]
            for t in type_names:
                c = int((types == t).sum())
                row[f"nuclei_{t}"] = c
                row[f"fraction_{t}"] = c / len(inside) if len(inside) else np.nan
                row[f"{t}_per_mm2"] = c / area_mm2 if area_mm2 else np.nan
                if tis is not None:
                    row[f"{t}_per_mm2_tissue"] = c / tis if tis else np.nan
        if "area_um2" in nuclei:
            row["median_area_um2"] = float(np.median(nuclei["area_um2"][inside])) if len(inside) else np.nan
        rows.append(row)
    return rows


def write_region_tables(folder: Path, name: str, rows: list[dict]) -> dict[str, Path]:
    """``NAME.regions.csv`` and the same table as ``NAME.regions.parquet`` (pyarrow), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .outputs import atomic_write_bytes

    csv_path, pq_path = folder / f"{name}.regions.csv", folder / f"{name}.regions.parquet"
    atomic_write_bytes(csv_path, regions_csv(rows))
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    atomic_write_bytes(pq_path, buf.getvalue().to_pybytes())
    return {"regions": csv_path, "regions_parquet": pq_path}


def regions_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue().encode()


def count_run_regions(run_dir: str | Path, regions_file: str | Path, out: str | Path | None = None,
                      log=lambda *_: None) -> tuple[Path, list[dict]]:
    """``wsinuclei regions``: a finished run's nuclei counted in the regions of ``regions_file``; writes
    ``NAME.regions.csv`` into the run's folder (or ``out``) and returns its path and rows."""
    from .outputs import atomic_write_bytes

    from .run_files import read_run

    run, folder = read_run(run_dir)
    regions = read_regions(regions_file)
    report_repairs(regions, log)
    tissue = None
    slide = Path(run.get("slide", ""))
    if slide.is_file():  # the slide is at hand: regions checked against its frame, its tissue mask as detect finds it
        from .slide import Slide
        from .tissue import slide_tissue

        with Slide(slide, mpp=run.get("mpp")) as s:
            check_regions_frame(regions, s.info().dimensions, regions_file)
            _, ds, mask = slide_tissue(s)
        tissue = (mask, ds)
    nuclei = read_nuclei(run, folder)
    names = list(run.get("nuclei_by_type") or {})
    rows = count_in_regions(regions, nuclei, float(run["mpp"]), names, tissue=tissue, log=log)
    if out:
        atomic_write_bytes(Path(out), regions_csv(rows))
        return Path(out), rows
    return write_region_tables(folder, run["name"], rows)["regions"], rows


def report_repairs(regions: list[Region], log) -> None:
    for r in regions:
        if r.repaired:
            log(f"region '{r.name}': its outline crosses itself; counted in its valid form (shapely.make_valid)")


def check_regions_frame(regions: list[Region], size: tuple[int, int], source) -> None:
    """Refuse regions that lie wholly outside a slide of ``size`` (another slide's, or another frame)."""
    import shapely

    w, h = size
    frame = shapely.box(0, 0, w, h)
    for r in regions:
        if not r.geometry.intersects(frame):
            b = [round(v) for v in r.geometry.bounds]
            raise WsinucleiError(f"{source}: region '{r.name}' (bounds {b}) lies outside the slide ({w} x {h} px "
                                 f"at base level); regions must be in the slide's base-level pixels")
