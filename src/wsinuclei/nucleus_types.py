"""Nucleus types: the taxonomy, its colours, and the readers of typed annotations.

The taxonomy is HoVer-Net's merged CoNSeP classes, onto which the other typed sets are mapped
(``../shared/README.md``, "Nucleus types"): ``epithelial``, ``inflammatory``, ``stromal``, ``other``. A type is
stored as its index in :data:`TYPE_NAMES`; ``-1`` means "not typed" (a set without types, or a centre its set
left untyped), which trains and scores nothing.

Typed annotations sit beside the image they describe:

- ``NAME_types.csv`` with ``label,type`` beside an instance label image (one row per instance), or
- ``NAME_types.csv`` with ``x,y,type`` beside a centres file ``NAME_points.csv`` (a typed centre is also a centre).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .errors import WsinucleiError

#: the four types, in the order of a model's type outputs
TYPE_NAMES = ("epithelial", "inflammatory", "stromal", "other")
#: display colours (RGB), the same in every output: GeoJSON classification, DSA groups, viewer, thumbnail
TYPE_COLOURS = {"epithelial": (220, 50, 47), "inflammatory": (38, 139, 210), "stromal": (133, 153, 0),
                "other": (211, 54, 130)}
UNTYPED = -1


def model_type_names(config) -> tuple[str, ...] | None:
    """The type names of a model (a ``DetectorConfig``), in the order of its type outputs: the preset's
    ``[star_head] type_names`` (a model trained on classes of one's own), else the first ``n_types`` of
    :data:`TYPE_NAMES`; None for a model without a type head."""
    trained = (getattr(config, "raw", None) or {}).get("type_head")
    if trained:  # a type head on the frozen network (``wsinuclei train-types``): its classes, whatever the network's
        return tuple(str(x) for x in trained["names"])
    head = getattr(config, "star_head", None) or {}
    n = int(head.get("n_types", 0))
    if not n:
        return None
    return tuple(str(x) for x in head.get("type_names", TYPE_NAMES[:n]))


def type_index(name: str, names=TYPE_NAMES) -> int:
    """The index of a type name (case and surrounding spaces ignored); -1 for an empty name."""
    key = name.strip().lower()
    if not key:
        return UNTYPED
    lowered = [n.lower() for n in names]
    if key not in lowered:
        raise WsinucleiError(f"unknown nucleus type '{name}' (known: {', '.join(names)})")
    return lowered.index(key)


def types_path(image_or_truth: str | Path) -> Path:
    """``NAME_types.csv`` beside ``NAME.png`` / ``NAME_labels.png`` / ``NAME_points.csv``."""
    p = Path(image_or_truth)
    stem = p.name
    for suffix in ("_labels.png", "_points.csv", "_mask.png"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = p.stem
    return p.with_name(f"{stem}_types.csv")


def _rows(path: Path, columns: tuple[str, ...]) -> list[dict]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or any(c not in reader.fieldnames for c in columns):
                raise WsinucleiError(f"{path}: a types file needs the columns {', '.join(columns)}")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise WsinucleiError(f"{path}: not a readable types file ({exc})") from None


def read_label_types(path: str | Path, n_labels: int, names=TYPE_NAMES) -> np.ndarray:
    """``label,type`` rows -> a look-up table ``lut`` of ``n_labels + 1`` int8 entries: ``lut[label]`` is the
    label's type index (-1 for background and labels the file does not type)."""
    path = Path(path)
    lut = np.full(int(n_labels) + 1, UNTYPED, np.int8)
    for i, row in enumerate(_rows(path, ("label", "type"))):
        try:
            label = int(row["label"])
        except (TypeError, ValueError):
            raise WsinucleiError(f"{path}: row {i + 2}: label '{row['label']}' is not a whole number") from None
        if not 1 <= label <= n_labels:
            raise WsinucleiError(f"{path}: row {i + 2}: label {label} is not in the label image (1-{n_labels})")
        lut[label] = type_index(row["type"] or "", names)
    return lut


def read_point_types(path: str | Path, names=TYPE_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """``x,y,type`` rows -> (N, 2) float64 centres and (N,) int8 type indices."""
    path = Path(path)
    xy, types = [], []
    for i, row in enumerate(_rows(path, ("x", "y", "type"))):
        try:
            x, y = float(row["x"]), float(row["y"])
        except (TypeError, ValueError):
            raise WsinucleiError(f"{path}: row {i + 2}: x, y must be numbers") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise WsinucleiError(f"{path}: row {i + 2}: x, y must be finite")
        xy.append((x, y))
        types.append(type_index(row["type"] or "", names))
    return np.array(xy, np.float64).reshape(-1, 2), np.array(types, np.int8)


def types_of_points(points: np.ndarray, typed_xy: np.ndarray, typed: np.ndarray, tol: float = 0.01) -> np.ndarray:
    """The type of each of ``points`` (N, 2): that of the typed centre at the same place (within ``tol`` px),
    -1 where none is. Sets type a subset of their centres (CRCHisto about three quarters)."""
    out = np.full(len(points), UNTYPED, np.int8)
    if len(points) == 0 or len(typed_xy) == 0:
        return out
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(typed_xy).query(np.asarray(points, np.float64), distance_upper_bound=tol)
    hit = np.isfinite(dist)
    out[hit] = typed[idx[hit]]
    return out


def truth_types(truth_file: str | Path, truth) -> np.ndarray | None:
    """The type name of each box of a truth file read by ``annotations.read_boxes`` (``truth``), from the
    ``NAME_types.csv`` beside it; None where there is none. Label images type their instances in label order
    (the order of their boxes); centres are matched by place, '' where a centre is untyped."""
    path = types_path(truth_file)
    if not path.is_file():
        return None
    names = np.array(("",) + TYPE_NAMES, dtype=object)  # index -1 -> ''
    if truth.labels is not None:
        from scipy import ndimage

        labels = np.asarray(truth.labels)
        lut = read_label_types(path, int(labels.max()))
        ids = [i + 1 for i, sl in enumerate(ndimage.find_objects(labels.astype(np.int64))) if sl is not None]
        return names[lut[ids].astype(int) + 1]
    if truth.points:
        return names[types_of_points(truth.boxes[:, :2], *read_point_types(path)).astype(int) + 1]
    raise WsinucleiError(f"{path}: types are read beside label images (label,type) and centres (x,y,type), "
                         f"not beside {Path(truth_file).name}")
