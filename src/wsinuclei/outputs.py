"""Result files: CSV (the contract), GeoJSON for QuPath, and Digital Slide Archive annotation JSON.

Every file is written to a temporary name in the same folder and renamed into place, so a reader never sees
a half-written file and an interrupted run never leaves one that looks complete.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path

import numpy as np

CSV_HEADER = ["x0", "y0", "x1", "y1", "score"]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def csv_bytes(boxes: np.ndarray, scores: np.ndarray) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for (x0, y0, x1, y1), s in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(scores).reshape(-1)):
        w.writerow([f"{x0:.1f}", f"{y0:.1f}", f"{x1:.1f}", f"{y1:.1f}", f"{s:.4f}"])
    return buf.getvalue().encode()


def geojson_dict(boxes: np.ndarray, scores: np.ndarray, name: str = "nucleus") -> dict:
    """A FeatureCollection QuPath imports as detection objects with a 'score' measurement."""
    feats = []
    for (x0, y0, x1, y1), s in zip(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float).reshape(-1)):
        ring = [[round(x0, 1), round(y0, 1)], [round(x1, 1), round(y0, 1)], [round(x1, 1), round(y1, 1)],
                [round(x0, 1), round(y1, 1)], [round(x0, 1), round(y0, 1)]]
        feats.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "detection",
                "classification": {"name": "Nucleus", "color": [0, 0, 255]},
                "measurements": {"score": round(float(s), 4)},
                "isLocked": False,
            },
        })
    return {"type": "FeatureCollection", "features": feats}


def dsa_dict(boxes: np.ndarray, scores: np.ndarray, name: str) -> dict:
    """A Digital Slide Archive (HistomicsUI) annotation: one rectangle element per nucleus, as HistomicsTK's
    CLIs write them (centre, width, height, rotation; the score in ``label`` and ``user``)."""
    elements = []
    for (x0, y0, x1, y1), s in zip(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float).reshape(-1)):
        elements.append({
            "type": "rectangle",
            "center": [round((x0 + x1) / 2, 2), round((y0 + y1) / 2, 2), 0],
            "width": round(x1 - x0, 2),
            "height": round(y1 - y0, 2),
            "rotation": 0,
            "lineColor": "rgb(0,0,255)",
            "lineWidth": 2,
            "label": {"value": f"nucleus {float(s):.2f}"},
            "user": {"score": round(float(s), 4)},
        })
    return {"name": f"wsinuclei nuclei: {name}", "description": "nuclei detected by wsinuclei", "elements": elements}


def write_outputs(out_dir: str | Path, name: str, boxes: np.ndarray, scores: np.ndarray, gzip_json: bool = False) -> dict[str, Path]:
    """Write ``name.csv``, ``name.geojson`` and ``name.anot.json`` (``.gz`` added to the JSON with gzip)."""
    out_dir = Path(out_dir)
    paths = {"csv": atomic_write_bytes(out_dir / f"{name}.csv", csv_bytes(boxes, scores))}
    for key, obj, fname in (("geojson", geojson_dict(boxes, scores), f"{name}.geojson"),
                            ("dsa", dsa_dict(boxes, scores, name), f"{name}.anot.json")):
        data = json.dumps(obj, separators=(",", ":")).encode()
        if gzip_json:
            data, fname = gzip.compress(data, mtime=0), fname + ".gz"
        paths[key] = atomic_write_bytes(out_dir / fname, data)
    return paths
