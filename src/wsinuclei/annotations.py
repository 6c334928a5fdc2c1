"""Ground-truth and prediction readers: every format becomes an (N, 4) float array of x0, y0, x1, y1 boxes.

Formats: Aperio/MoNuSeg XML polygons, instance label images (``*_labels.png``, 0 = background),
GeoJSON FeatureCollections (QuPath exports and our own output), and CSV with ``x0,y0,x1,y1[,score]``.
Degenerate shapes (fewer than three vertices, zero width or height) are skipped and counted, never
silently dropped.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import WsinucleiError

TRUTH_SUFFIXES = (".xml", "_labels.png", ".geojson", ".geojson.gz", "_points.csv", ".csv")


@dataclass
class Boxes:
    """Boxes read from one file: ``boxes`` (N, 4) x0, y0, x1, y1; ``scores`` (N,) or None for truth."""

    boxes: np.ndarray
    scores: np.ndarray | None = None
    skipped: int = 0  # degenerate shapes left out
    source: str = ""
    meta: dict = field(default_factory=dict)
    polygons: list | None = None  # outlines (K, 2), one per box, when the file has them
    labels: np.ndarray | None = None  # the instance label image, for label-image annotations
    points: bool = False  # centre-only annotations (boxes are zero-size at the centres)
    types: np.ndarray | None = None  # (N,) type name of each box (a typed model's CSV ``type`` column)

    def __len__(self) -> int:
        return len(self.boxes)


def _empty() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float64)


def polygon_box(points: np.ndarray) -> np.ndarray | None:
    """Bounding box of a polygon, or None when it is degenerate (< 3 points, zero width or height)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or len(pts) < 3:
        return None
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    if x1 <= x0 or y1 <= y0:
        return None
    return np.array([x0, y0, x1, y1])


def read_aperio_xml(path: str | Path) -> Boxes:
    """MoNuSeg / Aperio ImageScope XML: each ``<Region>`` holds ``<Vertex X= Y=>`` points of one nucleus."""
    from defusedxml import ElementTree  # safe against entity-expansion and external-entity attacks

    try:
        root = ElementTree.parse(str(path)).getroot()
    except Exception as exc:  # ParseError, DefusedXmlException
        raise WsinucleiError(f"{path}: not a readable annotation XML ({exc.__class__.__name__}: {exc})") from None
    boxes, polygons, skipped = [], [], 0
    for k, region in enumerate(root.iter("Region")):
        pts = [(_number(v.get("X"), path, f"region {k + 1}: a Vertex's X"),
                _number(v.get("Y"), path, f"region {k + 1}: a Vertex's Y")) for v in region.iter("Vertex")]
        box = polygon_box(np.array(pts)) if pts else None
        if box is None:
            skipped += 1
        else:
            boxes.append(box)
            polygons.append(np.array(pts))
    mpp = root.get("MicronsPerPixel")
    meta = {"mpp": _number(mpp, path, "MicronsPerPixel")} if mpp else {}
    return Boxes(np.array(boxes) if boxes else _empty(), None, skipped, str(path), meta, polygons=polygons)


def _number(text, path, what: str) -> float:
    """A finite number from an annotation file, or a one-line error naming the file and the value."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise WsinucleiError(f"{path}: {what} is {'missing' if text is None else repr(text)}, not a number") from None
    if not np.isfinite(value):
        raise WsinucleiError(f"{path}: {what} is {text}, not a finite number")
    return value


def _finite(arr: np.ndarray, path, what: str) -> np.ndarray:
    """``arr`` when every value is finite; else a one-line error (a NaN box would count as a miss unseen)."""
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(arr), -1).any(1))[0]) if arr.ndim else 0
        raise WsinucleiError(f"{path}: {what} of row {row + 1} is not a finite number")
    return arr


def label_image_boxes(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Boxes of each instance in a label image (0 = background). A box spans the pixels' outer edges,
    so a one-pixel nucleus at column 5 gives x0=5, x1=6. Returns (boxes, skipped)."""
    labels = np.asarray(labels)
    slices = ndimage.find_objects(labels.astype(np.int64))
    boxes = [
        (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop) for sl in slices if sl is not None
    ]
    return (np.array(boxes, dtype=np.float64) if boxes else _empty()), 0


def read_label_image(path: str | Path) -> Boxes:
    from PIL import Image

    try:
        labels = np.array(Image.open(path))
    except Exception as exc:
        raise WsinucleiError(f"{path}: not a readable label image ({exc})") from None
    if labels.ndim != 2:
        raise WsinucleiError(f"{path}: a label image must have one channel, found shape {labels.shape}")
    boxes, skipped = label_image_boxes(labels)
    return Boxes(boxes, None, skipped, str(path), labels=labels)


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_geojson(path: str | Path) -> Boxes:
    """GeoJSON FeatureCollection (or a bare list of features, as QuPath exports): the bounding box of each
    Polygon / MultiPolygon; a score from ``properties.measurements`` (name "score" or "Detection probability")
    when present."""
    path = Path(path)
    try:
        with _open_text(path) as fh:
            data = json.load(fh)
    except Exception as exc:
        raise WsinucleiError(f"{path}: not readable GeoJSON ({exc})") from None
    features = data.get("features", []) if isinstance(data, dict) else data
    boxes, scores, polygons, skipped = [], [], [], 0
    for feat in features:
        geom = (feat or {}).get("geometry") or {}
        coords = geom.get("coordinates")
        if geom.get("type") == "Polygon" and coords:
            rings = [coords[0]]
        elif geom.get("type") == "MultiPolygon" and coords:
            rings = [poly[0] for poly in coords if poly]
        else:
            skipped += 1
            continue
        try:
            pts = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in rings])
        except (TypeError, ValueError):
            raise WsinucleiError(f"{path}: feature {len(boxes) + skipped + 1}: coordinates are not pairs of "
                                 "numbers") from None
        _finite(pts, path, f"feature {len(boxes) + skipped + 1}: a coordinate")
        box = polygon_box(pts)
        if box is None:
            skipped += 1
            continue
        boxes.append(box)
        try:
            score = _feature_score(feat)
        except (TypeError, ValueError, AttributeError):
            raise WsinucleiError(f"{path}: feature {len(boxes) + skipped}: its score is not a number") from None
        if score is not None and not np.isfinite(score):
            raise WsinucleiError(f"{path}: feature {len(boxes) + skipped}: its score is not a finite number")
        scores.append(score)
        ring = max((np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in rings), key=len)
        polygons.append(ring[:-1] if len(ring) > 3 and np.allclose(ring[0], ring[-1]) else ring)
    has_scores = any(s is not None for s in scores)
    return Boxes(
        np.array(boxes) if boxes else _empty(),
        np.array([1.0 if s is None else s for s in scores]) if has_scores else None,
        skipped,
        str(path),
        polygons=polygons,
    )


def _feature_score(feat: dict) -> float | None:
    props = feat.get("properties") or {}
    meas = props.get("measurements")
    if isinstance(meas, dict):
        for key in ("score", "Detection probability"):
            if key in meas:
                return float(meas[key])
    if isinstance(meas, list):
        for m in meas:
            if m.get("name") in ("score", "Detection probability"):
                return float(m["value"])
    if "score" in props:
        return float(props["score"])
    return None


def read_csv_boxes(path: str | Path) -> Boxes:
    """CSV with a header naming ``x0,y0,x1,y1`` and optionally ``score``."""
    path = Path(path)
    try:
        with _open_text(path) as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            if not {"x0", "y0", "x1", "y1"} <= set(cols):
                raise WsinucleiError(f"{path}: a box CSV needs the columns x0,y0,x1,y1 (found {cols})")
            rows = list(reader)
    except WsinucleiError:
        raise
    except Exception as exc:
        raise WsinucleiError(f"{path}: not a readable CSV ({exc})") from None
    try:
        arr = np.array([[float(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows], dtype=np.float64)
        scores = np.array([float(r["score"]) for r in rows]) if "score" in cols else None
    except (TypeError, ValueError) as exc:
        raise WsinucleiError(f"{path}: a box CSV row is not numeric ({exc})") from None
    arr = _finite(arr.reshape(-1, 4), path, "a box")
    if scores is not None:
        _finite(scores, path, "the score")
    types = np.array([r["type"] or "" for r in rows], dtype=object) if "type" in cols else None
    keep = (arr[:, 2] > arr[:, 0]) & (arr[:, 3] > arr[:, 1])
    meta = {}
    if "area_um2" in cols:  # a contour model's result CSV: each nucleus' area
        try:
            meta["area_um2"] = np.array([float(r["area_um2"]) for r in rows]).reshape(-1)[keep]
        except (TypeError, ValueError) as exc:
            raise WsinucleiError(f"{path}: an area_um2 value is not numeric ({exc})") from None
    return Boxes(arr[keep], None if scores is None else scores[keep], int((~keep).sum()), str(path), meta=meta,
                 types=None if types is None else types[keep])


def read_points_csv(path: str | Path) -> Boxes:
    """Centre annotations (``x,y`` per row, a header allowed), as zero-size boxes at the centres."""
    path = Path(path)
    rows = []
    try:
        with _open_text(path) as fh:
            for row in csv.reader(fh):
                try:
                    rows.append((float(row[0]), float(row[1])))
                except (ValueError, IndexError):
                    continue  # the header, or a blank line
    except OSError as exc:
        raise WsinucleiError(f"{path}: not a readable CSV ({exc})") from None
    pts = _finite(np.array(rows, dtype=np.float64).reshape(-1, 2), path, "a centre")
    return Boxes(np.hstack([pts, pts]), None, 0, str(path), points=True)


def read_boxes(path: str | Path) -> Boxes:
    """Read boxes from any supported format, chosen by file name."""
    path = Path(path)
    if not path.is_file():
        raise WsinucleiError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith("_points.csv"):
        return read_points_csv(path)
    if name.endswith(".xml"):
        return read_aperio_xml(path)
    if name.endswith("_labels.png") or name.endswith("_labels.tif"):
        return read_label_image(path)
    if name.endswith(".geojson") or name.endswith(".geojson.gz") or name.endswith(".json"):
        return read_geojson(path)
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return read_csv_boxes(path)
    raise WsinucleiError(f"{path}: unknown box format (expected .xml, _labels.png, .geojson or .csv)")


def stem_of(path: str | Path) -> str:
    """The name that pairs an image, its annotations and its predictions: ``A_labels.png``, ``A.xml``,
    ``A.csv``, ``A.geojson.gz`` all give ``A``."""
    name = Path(path).name
    for suffix in ("_labels.png", "_labels.tif", "_points.csv", ".geojson.gz", ".csv.gz", ".anot.json", ".geojson",
                   ".csv", ".xml"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def collect_box_files(path: str | Path, suffixes=TRUTH_SUFFIXES) -> dict[str, Path]:
    """A file or a folder -> {stem: file}. In a folder, files of the given formats are taken; where one stem
    has several (a run writes NAME.csv and NAME.geojson), the format listed first in ``suffixes`` wins."""
    path = Path(path)
    if path.is_file():
        return {stem_of(path): path}
    if not path.is_dir():
        raise WsinucleiError(f"{path}: no such file or folder")
    found: dict[str, tuple[int, Path]] = {}
    for f in sorted(path.iterdir()):
        n = f.name.lower()
        rank = next((i for i, suf in enumerate(suffixes) if n.endswith(suf)), None)
        if not f.is_file() or rank is None or n.endswith((".profile.csv", "_types.csv")) or n.startswith("per_image"):
            continue
        stem = stem_of(f)
        if stem not in found or rank < found[stem][0]:
            found[stem] = (rank, f)
    if not found:
        raise WsinucleiError(f"{path}: no box files ({', '.join(suffixes)}) in this folder")
    return {stem: f for stem, (_, f) in found.items()}
