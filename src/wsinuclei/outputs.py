"""Result files: CSV (the contract), GeoJSON for QuPath, and Digital Slide Archive annotation JSON.

Every file is written to a temporary name in the same folder and renamed into place, so a reader never sees
a half-written file and an interrupted run never leaves one that looks complete.

Files are streamed in chunks of nuclei: a slide's 2 million nuclei never exist as one Python object tree or
one JSON string (building them whole took 1.7 GiB for 500,000 nuclei). Each nucleus is a rectangle, or its
contour when the model draws contours (``polygons``).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CSV_HEADER = ["x0", "y0", "x1", "y1", "score"]
CHUNK = 20_000  # nuclei formatted at a time


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path) as fh:
        fh.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_open(path: str | Path, gzip_level: int | None = None):
    """A binary file handle on a temporary name beside ``path``; renamed into place (after fsync) when the
    block ends normally, removed when it raises. ``gzip_level`` compresses what is written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            if gzip_level is not None:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=gzip_level, mtime=0) as gz:
                    yield gz
            else:
                yield raw
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _chunks(n: int, size: int = CHUNK):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclass(frozen=True)
class Types:
    """Each nucleus' type probabilities (N, K) and the K type names, in the model's order; a nucleus' type is
    its most probable one."""

    probs: np.ndarray
    names: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "probs", np.asarray(self.probs, np.float64).reshape(-1, len(self.names)))

    @property
    def index(self) -> np.ndarray:
        return self.probs.argmax(1) if len(self.probs) else np.zeros(0, int)

    def take(self, keep) -> "Types":
        return Types(self.probs[keep], self.names)

    def counts(self) -> dict[str, int]:
        idx = self.index
        return {n: int((idx == i).sum()) for i, n in enumerate(self.names)}

    def colour(self, i: int) -> tuple[int, int, int]:
        from .nucleus_types import TYPE_COLOURS

        return TYPE_COLOURS.get(self.names[i], _FALLBACK_COLOURS[i % len(_FALLBACK_COLOURS)])


#: colours of type names outside the shipped taxonomy (user-trained classes), in order
_FALLBACK_COLOURS = ((255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75), (23, 190, 207), (188, 189, 34))


def write_csv(fh, boxes: np.ndarray, scores: np.ndarray, areas_um2: np.ndarray | None = None,
              types: Types | None = None) -> None:
    """The columns x0,y0,x1,y1,score[,area_um2] and, for a typed model, ``type`` (the most probable name) and
    ``p_NAME`` per type."""
    header = CSV_HEADER + (["area_um2"] if areas_um2 is not None else [])
    if types is not None:
        header += ["type"] + [f"p_{n}" for n in types.names]
    fh.write((",".join(header) + "\n").encode())
    fmt = "%.1f,%.1f,%.1f,%.1f,%.4f" + (",%.2f" if areas_um2 is not None else "")
    for sl in _chunks(len(scores)):
        cols = [boxes[sl], scores[sl, None]] + ([areas_um2[sl, None]] if areas_um2 is not None else [])
        buf = io.BytesIO()
        np.savetxt(buf, np.hstack(cols), fmt=fmt, delimiter=",")
        if types is not None:
            names = np.asarray(types.names, dtype=object)[types.index[sl]]
            probs = io.BytesIO()
            np.savetxt(probs, types.probs[sl], fmt="%.4f", delimiter=",")
            lines = [f"{a},{n},{b}" for a, n, b in zip(buf.getvalue().decode().splitlines(), names,
                                                       probs.getvalue().decode().splitlines())]
            fh.write(("\n".join(lines) + ("\n" if lines else "")).encode())
        else:
            fh.write(buf.getvalue())


def csv_bytes(boxes: np.ndarray, scores: np.ndarray) -> bytes:
    buf = io.BytesIO()
    write_csv(buf, np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float).reshape(-1))
    return buf.getvalue()


def _ring(box, polygon) -> list[tuple[float, float]]:
    """A closed ring: the polygon's vertices (first repeated at the end), or the box's corners."""
    if polygon is None:
        x0, y0, x1, y1 = box
        pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    else:
        pts = [(float(x), float(y)) for x, y in polygon]
    return pts + [pts[0]]


def _coords(ring) -> str:
    return "[" + ",".join(f"[{x:.1f},{y:.1f}]" for x, y in ring) + "]"


@functools.lru_cache(maxsize=64)
def _points_format(n: int, point: str) -> str:
    """One %-format for ``n`` points: a polygon formatted in one operation, not one per coordinate (GeoJSON
    and DSA files of ~8,000 32-vertex contours took 1.3 s to format point by point)."""
    return ",".join([point] * n)


def _polygon_text(polygon, point: str, close: bool) -> str:
    """A polygon's vertices as ``point`` (e.g. ``[%.1f,%.1f]``) joined by commas, the first repeated at the end
    when ``close``: the same text as formatting each float with the same format."""
    p = np.asarray(polygon, np.float64)
    flat = p.ravel().tolist() + (p[0].tolist() if close else [])
    return _points_format(len(p) + close, point) % tuple(flat)


def write_geojson(fh, boxes: np.ndarray, scores: np.ndarray, polygons=None, areas_um2=None,
                  measurements: dict | None = None, types: Types | None = None) -> None:
    """A FeatureCollection QuPath imports as detection objects (File > Import objects) with a 'score'
    measurement (and 'Area µm^2' for contours, and any ``measurements``: name -> values, NaN left out). Each
    object's classification is its type (name and colour, so QuPath lists the classes with their counts) for a
    typed model, with one 'Probability NAME' measurement per type; 'Nucleus' otherwise."""
    import json

    fh.write(b'{"type":"FeatureCollection","features":[')
    plain = '"classification":{"name":"Nucleus","color":[0,0,255]}'
    classes = [] if types is None else [
        '"classification":' + json.dumps({"name": n, "color": list(types.colour(i))}, separators=(",", ":"))
        for i, n in enumerate(types.names)]
    type_idx = None if types is None else types.index
    for sl in _chunks(len(scores)):
        feats = []
        for i in range(sl.start, sl.stop):
            meas = f'"score":{scores[i]:.4f}'
            if areas_um2 is not None:
                meas += f',"Area \\u00b5m^2":{areas_um2[i]:.2f}'
            if types is not None:
                meas += "".join(f',"Probability {n}":{types.probs[i, k]:.4f}' for k, n in enumerate(types.names))
            for name, values in (measurements or {}).items():
                if np.isfinite(values[i]):
                    meas += f',"{name}":{values[i]:.4g}'
            feats.append(
                '{"type":"Feature","geometry":{"type":"Polygon","coordinates":['
                + (_coords(_ring(boxes[i], None)) if polygons is None
                   else "[" + _polygon_text(polygons[i], "[%.1f,%.1f]", close=True) + "]")
                + ']},"properties":{"objectType":"detection",'
                + (plain if types is None else classes[type_idx[i]]) + ','
                + '"measurements":{' + meas + '},"isLocked":false}}')
        fh.write((("," if sl.start else "") + ",".join(feats)).encode())
    fh.write(b"]}")


def write_dsa(fh, boxes: np.ndarray, scores: np.ndarray, name: str, polygons=None, attributes=None,
              types: Types | None = None) -> None:
    """A Digital Slide Archive (HistomicsUI) annotation: a rectangle element per nucleus, as HistomicsTK's
    CLIs write them (centre, width, height, rotation), or a closed polyline for a contour; the score in
    ``label`` and ``user``; ``attributes`` (how the file was made) at the top. For a typed model each element
    belongs to its type's ``group`` (HistomicsUI lists and toggles groups) in the type's colour, with the type
    probabilities in ``user``. Always plain JSON: the DSA ingests nothing else."""
    import json

    head = {"name": f"wsinuclei nuclei: {name}", "description": "nuclei detected by wsinuclei"}
    if attributes:
        head["attributes"] = attributes
    fh.write(json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"elements":[')
    type_idx = None if types is None else types.index
    styles = [] if types is None else [
        f',"group":{json.dumps(n)},"lineColor":"rgb({",".join(str(c) for c in types.colour(k))})"'
        for k, n in enumerate(types.names)]
    for sl in _chunks(len(scores)):
        els = []
        for i in range(sl.start, sl.stop):
            s = float(scores[i])
            if types is None:
                tail = (f',"lineColor":"rgb(0,0,255)","lineWidth":2,"label":{{"value":"nucleus {s:.2f}"}},'
                        f'"user":{{"score":{s:.4f}}}}}')
            else:
                k = int(type_idx[i])
                probs = ",".join(f'"p_{n}":{types.probs[i, j]:.4f}' for j, n in enumerate(types.names))
                tail = (styles[k] + f',"lineWidth":2,"label":{{"value":"{types.names[k]} {s:.2f}"}},'
                        f'"user":{{"score":{s:.4f},{probs}}}}}')
            if polygons is None:
                x0, y0, x1, y1 = (float(v) for v in boxes[i])
                els.append(f'{{"type":"rectangle","center":[{(x0 + x1) / 2:.2f},{(y0 + y1) / 2:.2f},0],'
                           f'"width":{x1 - x0:.2f},"height":{y1 - y0:.2f},"rotation":0' + tail)
            else:
                pts = _polygon_text(polygons[i], "[%.1f,%.1f,0]", close=False)
                els.append(f'{{"type":"polyline","closed":true,"points":[{pts}]' + tail)
        fh.write((("," if sl.start else "") + ",".join(els)).encode())
    fh.write(b"]}")


def write_outputs(out_dir: str | Path, name: str, boxes: np.ndarray, scores: np.ndarray, gzip_json: bool = False,
                  polygons=None, areas_um2=None, score_cut: float = 0.0, attributes=None,
                  measurements: dict | None = None, types: Types | None = None) -> dict[str, Path]:
    """Write ``name.csv`` (every box given), and ``name.geojson`` (``.geojson.gz`` with ``gzip_json``) and
    ``name.anot.json`` with the nuclei scoring at least ``score_cut``: the CSV serves precision-recall work,
    the other two are what QuPath and the DSA show as nuclei."""
    out_dir = Path(out_dir)
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    scores = np.asarray(scores, float).reshape(-1)
    paths = {"csv": out_dir / f"{name}.csv", "geojson": out_dir / f"{name}.geojson{'.gz' if gzip_json else ''}",
             "dsa": out_dir / f"{name}.anot.json"}
    with atomic_open(paths["csv"]) as fh:
        write_csv(fh, boxes, scores, areas_um2, types)
    keep = np.flatnonzero(scores >= score_cut)
    boxes, scores = boxes[keep], scores[keep]
    types = None if types is None else types.take(keep)
    if polygons is not None:
        polygons = polygons[keep] if isinstance(polygons, np.ndarray) else [polygons[i] for i in keep]
    areas_um2 = None if areas_um2 is None else np.asarray(areas_um2)[keep]
    measurements = {k: np.asarray(v)[keep] for k, v in (measurements or {}).items()}
    with atomic_open(paths["geojson"], gzip_level=6 if gzip_json else None) as fh:
        write_geojson(fh, boxes, scores, polygons, areas_um2, measurements, types)
    with atomic_open(paths["dsa"]) as fh:
        write_dsa(fh, boxes, scores, name, polygons, attributes, types)
    return paths
