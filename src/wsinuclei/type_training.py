"""``wsinuclei train-types``: cell classes of one's own, from clicked centres, on a frozen network.

Each image (or region cut from a slide) comes with the centres a user clicked and the class of each:

- ``NAME_types.csv`` or ``NAME_points.csv`` with the columns ``x,y,type`` (pixels of the image), or
- ``NAME.geojson`` / ``NAME_points.geojson``: QuPath's export of point annotations (Point or MultiPoint geometries,
  the class in ``properties.classification.name``), in the image's pixels as QuPath writes them.

Every image is detected once with the parent model and ``--embeddings`` (a large one, such as a whole slide
with clicks in base-level pixels, only in the tiles near its clicks); each click is paired with the detected
nucleus at the score cut nearest to it within 3 µm (HoVer-Net's pairing, ``type_metrics.pair_centres``), and a
type head (``models/type_head.py``) is fitted to the paired nuclei's embeddings. A part of the clicks is held out
(whole images where there are at least four, else a stratified share of the points) and scored: per-class F1
and the confusion matrix. The head trained on the rest is written with its parent into a new model file, whose
nuclei are the parent's bit for bit.
"""

from __future__ import annotations

import csv
import datetime
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NoTissue, WsinucleiError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".bif")
#: clicks at most this far from a detected nucleus' centre are its class (HoVer-Net pairs within 3 µm)
PAIR_RADIUS_UM = 3.0


def read_clicks(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """(N, 2) float64 x, y and the N class names of a clicks file (CSV ``x,y,type`` or QuPath point GeoJSON)."""
    path = Path(path)
    if path.suffix.lower() in (".geojson", ".json"):
        return _read_geojson_points(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"x", "y", "type"} <= set(reader.fieldnames):
                raise WsinucleiError(f"{path}: a clicks file needs the columns x,y,type")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise WsinucleiError(f"{path}: not a readable clicks file ({exc})") from None
    xy, names = [], []
    for i, row in enumerate(rows):
        try:
            x, y = float(row["x"]), float(row["y"])
        except (TypeError, ValueError):
            raise WsinucleiError(f"{path}: row {i + 2}: x, y must be numbers") from None
        name = (row["type"] or "").strip()
        if not (np.isfinite(x) and np.isfinite(y)):
            raise WsinucleiError(f"{path}: row {i + 2}: x, y must be finite")
        if name:  # an unclassified click says nothing about a class
            xy.append((x, y))
            names.append(name)
    return np.array(xy, np.float64).reshape(-1, 2), names


def _read_geojson_points(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WsinucleiError(f"{path}: not a readable GeoJSON file ({exc})") from None
    feats = doc.get("features", []) if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else \
        doc if isinstance(doc, list) else [doc]
    xy, names = [], []
    for f in feats:
        if not isinstance(f, dict):
            continue
        geom = f.get("geometry") or {}
        props = f.get("properties") or {}
        cls = props.get("classification") or {}
        name = str(cls.get("name", "") if isinstance(cls, dict) else cls).strip()
        if geom.get("type") == "Point":
            pts = [geom.get("coordinates")]
        elif geom.get("type") == "MultiPoint":
            pts = geom.get("coordinates") or []
        else:
            continue  # polygons and the like are regions, not clicks
        if not name:
            continue
        for p in pts:
            try:
                x, y = float(p[0]), float(p[1])
            except (TypeError, ValueError, IndexError):
                raise WsinucleiError(f"{path}: a point without two numeric coordinates ({p!r})") from None
            xy.append((x, y))
            names.append(name)
    return np.array(xy, np.float64).reshape(-1, 2), names


def clicks_file(image: Path) -> Path | None:
    """The clicks beside an image, by name (see the module's docstring), or None."""
    stem = image.name[: -len(image.suffix)]
    for name in (f"{stem}_types.csv", f"{stem}_points.csv", f"{stem}.geojson", f"{stem}_points.geojson"):
        p = image.with_name(name)
        if not p.is_file():
            continue
        if p.suffix == ".csv":
            with open(p, newline="") as fh:
                header = next(csv.reader(fh), [])
            if "type" not in header:
                continue  # centres without classes (an evaluation file): not clicks
        return p
    return None


def find_clicked_images(paths) -> list[tuple[Path, Path]]:
    """(image, clicks file) for every image in the given folders (or image files) that has clicks beside it."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            images = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            images = [p]
        else:
            raise WsinucleiError(f"{p}: no such folder or image")
        for img in images:
            c = clicks_file(img)
            if c is not None:
                out.append((img, c))
    if not out:
        raise WsinucleiError("no image with clicked centres found: put NAME_types.csv (x,y,type) or NAME.geojson "
                             "(QuPath points) beside each image NAME.png/.jpg/.tif")
    return out


@dataclass
class ClickedNuclei:
    """The paired clicks of all images: embeddings (N, C), class index (N,), image index (N,)."""

    names: tuple[str, ...]
    embeddings: np.ndarray
    labels: np.ndarray
    image: np.ndarray
    images: list[str] = field(default_factory=list)
    clicks: int = 0  # clicks read (classified ones)
    unpaired: int = 0  # clicks with no detected nucleus within PAIR_RADIUS_UM
    #: a typed parent's own type of each paired nucleus, as an index into ``names`` (-1: a type not among them);
    #: None for an untyped parent
    parent_types: np.ndarray | None = None


#: an image with more base pixels than this (four 1024² tiles) is run only around its clicks, as a slide
#: whose few clicked regions are all that is needed: the tiles that touch a square of CLICK_REGION_UM around a click
CLICK_REGIONS_MIN_PX = 4 * 1024 ** 2
CLICK_REGION_UM = 64.0


def _click_regions(image: Path, xy: np.ndarray, mpp, path: Path) -> str | None:
    """For a large image (a whole slide), a regions file (one GeoJSON feature: the union of a square around every
    click) so that only the tiles near the clicks run; None for a small image, which runs whole."""
    import shapely

    from .slide import Slide

    with Slide(image, mpp) as slide:
        (w, h), um = slide.dimensions, slide.mpp
    if w * h <= CLICK_REGIONS_MIN_PX or not len(xy):
        return None
    if um is None:
        raise WsinucleiError(f"{image}: its µm/px is not in the file: give --mpp")
    xy = xy[(xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < w) & (xy[:, 1] < h)]
    if not len(xy):
        raise WsinucleiError(f"{image}: no click lies inside its {w}x{h} pixels: are the clicks in base-level "
                             "pixels (x right, y down)?")
    half = CLICK_REGION_UM / 2 / um
    lo, hi = np.clip(xy - half, 0, None), np.minimum(xy + half, (w, h))
    area = shapely.union_all(shapely.box(lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": shapely.geometry.mapping(area),
        "properties": {"name": "clicks", "objectType": "annotation"}}]}))
    return str(path)


def embed_clicks(pairs: list[tuple[Path, Path]], parent: str | None, mpp, work: Path,
                 log=print) -> ClickedNuclei:
    """Detect each image with the parent model and embeddings, and pair its clicks with the nuclei found.
    ``mpp``: the images' µm/px where their files do not say (one value, or one per pair)."""
    import pyarrow.parquet as pq

    from .pipeline import RunOptions, run_slide
    from .type_metrics import pair_centres

    per_image, all_names = [], set()
    for img, cfile in pairs:
        xy, names = read_clicks(cfile)
        all_names.update(names)
        per_image.append((img, xy, names))
    from .nucleus_types import TYPE_NAMES

    # the shipped taxonomy keeps its order (the columns of every typed output); other classes go alphabetically
    names = tuple(n for n in TYPE_NAMES if n in all_names) if all_names <= set(TYPE_NAMES) else tuple(sorted(all_names))
    if len(names) < 2:
        raise WsinucleiError(f"clicks of {len(names)} class{'es' if len(names) != 1 else ''} "
                             f"({', '.join(names) or 'none'}): a type head needs at least two")
    emb, lab, img_of, own, clicks, unpaired = [], [], [], [], 0, 0
    mpps = list(mpp) if isinstance(mpp, (list, tuple)) else [mpp] * len(pairs)
    for k, (img, xy, cls) in enumerate(per_image):
        regions = _click_regions(img, xy, mpps[k], work / f"{k}.clicks.geojson")
        opts = RunOptions(mpp=mpps[k], tissue_mask=False, model=parent, progress=False, embeddings=True,
                          tables_only=True, regions=regions)
        try:
            report = run_slide(img, work / str(k), opts, log=lambda *_: None)  # a folder each: names may repeat
        except NoTissue as exc:
            log(f"{img.name}: skipped ({exc})")  # glass alone: nothing to type
            clicks += len(xy)
            unpaired += len(xy)
            continue
        t = pq.read_table(work / str(k) / f"{report.name}.nuclei.parquet")
        px = np.stack([(t["x0"].to_numpy() + t["x1"].to_numpy()) / 2,
                       (t["y0"].to_numpy() + t["y1"].to_numpy()) / 2], 1) if t.num_rows else np.zeros((0, 2))
        pi, ci = pair_centres(px, xy, PAIR_RADIUS_UM / report.mpp)
        clicks += len(xy)
        unpaired += len(xy) - len(ci)
        if len(pi):
            e = np.stack(t["embedding"].to_numpy(zero_copy_only=False))
            emb.append(e[pi].astype(np.float32))
            lab.append(np.array([names.index(cls[i]) for i in ci], int))
            img_of.append(np.full(len(pi), k))
            if "type" in t.column_names:  # a typed parent: what it says of the clicked nuclei itself
                said = t["type"].to_numpy(zero_copy_only=False)[pi]
                own.append(np.array([names.index(n) if n in names else -1 for n in said], int))
        log(f"{img.name}: {len(xy)} clicks, {len(pi)} on a detected nucleus ({report.nuclei} nuclei)")
    if not emb:
        raise WsinucleiError("no click lies within 3 µm of a detected nucleus: are the clicks in the images' "
                             "pixels (x right, y down), and is --mpp right?")
    return ClickedNuclei(names, np.concatenate(emb), np.concatenate(lab), np.concatenate(img_of),
                         [str(i) for i, _, _ in per_image], clicks, unpaired,
                         np.concatenate(own) if len(own) == len(emb) else None)


def held_out_split(data: ClickedNuclei, fraction: float, seed: int) -> tuple[np.ndarray, str]:
    """A boolean mask of the held-out nuclei and how they were chosen: whole images when there are at least four
    images with clicks, else a share of each class's points."""
    rng = np.random.default_rng(seed)
    n_img = len(np.unique(data.image))
    if fraction <= 0:
        return np.zeros(len(data.labels), bool), "nothing"
    if n_img >= 4:
        k = max(1, int(round(n_img * fraction)))
        held = rng.permutation(np.unique(data.image))[:k]
        return np.isin(data.image, held), f"{k} of {n_img} images"
    mask = np.zeros(len(data.labels), bool)
    for c in range(len(data.names)):
        idx = np.flatnonzero(data.labels == c)
        k = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        mask[rng.permutation(idx)[:k]] = True
    return mask, f"{fraction:.0%} of each class's points (fewer than four images)"


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, names) -> dict:
    """Per-class precision, recall, F1 and support, accuracy and the confusion matrix (rows: truth). A prediction
    of -1 (a class outside ``names``, e.g. a typed parent's own ``other``) is wrong for its nucleus and falls in no
    column."""
    k = len(names)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.zeros((k, k), int)
    said = y_pred >= 0
    np.add.at(cm, (y_true[said], y_pred[said]), 1)
    support = np.bincount(y_true, minlength=k)
    classes = {}
    for i, n in enumerate(names):
        tp = cm[i, i]
        p = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        r = tp / support[i] if support[i] else 0.0
        classes[n] = {"precision": float(p), "recall": float(r), "f1": float(2 * p * r / (p + r)) if p + r else 0.0,
                      "support": int(support[i])}
    return {"accuracy": float(np.trace(cm) / max(1, len(y_true))), "classes": classes, "confusion": cm.tolist()}


def format_report(rep: dict, names) -> str:
    lines = [f"held-out accuracy {rep['accuracy']:.3f}",
             f"  {'class':20s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'points':>7s}"]
    for n in names:
        c = rep["classes"][n]
        lines.append(f"  {n[:20]:20s} {c['precision']:9.3f} {c['recall']:7.3f} {c['f1']:6.3f} {c['support']:7d}")
    width = max(8, max(len(n) for n in names) + 1)
    lines.append("  confusion (rows: clicked class, columns: predicted)")
    lines.append("  " + " " * width + "".join(f"{n[:width - 1]:>{width}s}" for n in names))
    for n, row in zip(names, rep["confusion"]):
        lines.append(f"  {n[:width - 1]:{width}s}" + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


def train_types(paths, out: str | Path, parent: str | None = None, mpp: float | None = None,
                held_out: float = 0.2, seed: int = 0, log=print, work_dir: str | Path | None = None) -> dict:
    """Fit a type head to the clicks of ``paths`` and write ``out`` (the parent model with the head). Returns the
    record stored in the model file (classes, points, penalty, held-out figures). ``paths``: folders or images;
    an entry may be a (path, µm/px) pair, for sets of several resolutions (``mpp`` is then the rest's)."""
    from .checkpoint import DEFAULT_MODEL, read_model_file, save_with_type_head
    from .models import type_head as heads

    if not 0.0 <= held_out < 1.0:
        raise WsinucleiError(f"--held-out must be a fraction from 0 to below 1, got {held_out}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise WsinucleiError(f"{out}: a model file is written as NAME.safetensors")
    loaded, _ = read_model_file(parent)
    if not loaded.config.is_star:
        raise WsinucleiError(f"{loaded.path}: train-types needs a star model (the head reads its embeddings)")
    pairs, mpps = [], []
    for p in paths:
        path, res = (p if isinstance(p, tuple) else (p, mpp))
        found = find_clicked_images([path])
        pairs += found
        mpps += [res] * len(found)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        data = embed_clicks(pairs, parent, mpps, Path(tmp), log)
    held, how = held_out_split(data, held_out, seed)
    train = ~held
    missing = [n for c, n in enumerate(data.names) if not (data.labels[train] == c).any()]
    if missing:
        raise WsinucleiError(f"no training point of {', '.join(missing)} once the held-out part is set aside; "
                             "click more of them (or lower --held-out)")
    lam = heads.choose_penalty(data.embeddings[train], data.labels[train], data.names, data.image[train])
    head = heads.fit(data.embeddings[train], data.labels[train], data.names, lam)
    rep = per_class_report(data.labels[held], head.probabilities(data.embeddings[held]).argmax(1), data.names) \
        if held.any() else None
    parent_rep = per_class_report(data.labels[held], data.parent_types[held], data.names) \
        if held.any() and data.parent_types is not None else None
    record = {"classes": list(data.names), "parent": {"file": Path(str(loaded.path)).name, "sha1": loaded.digest[:12]},
              "images": len(pairs), "clicks": data.clicks, "unpaired_clicks": data.unpaired,
              "points": {n: {"train": int((data.labels[train] == c).sum()), "held_out": int((data.labels[held] == c).sum())}
                         for c, n in enumerate(data.names)},
              "held_out_by": how, "l2_penalty": lam, "held_out": rep, "parent_held_out": parent_rep, "seed": seed,
              "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv[1:]) or "train_types()"}
    save_with_type_head(parent or DEFAULT_MODEL, head, out, record)
    log(f"{data.clicks} clicks in {len(pairs)} images, {len(data.labels)} on a detected nucleus "
        f"({data.unpaired} more than {PAIR_RADIUS_UM:g} µm from any); classes: {', '.join(data.names)}")
    log(f"held out: {how}; L2 penalty {lam:g} (chosen by cross-validation on the training points)")
    if rep is not None:
        log(format_report(rep, data.names))
    else:
        log("nothing held out (too few points): no held-out figures")
    if parent_rep is not None:  # a typed parent: what its own types score on the same nuclei, for comparison
        log("the parent model's own types on the same held-out nuclei (a type outside these classes counts wrong):")
        log(format_report(parent_rep, data.names))
    log(f"wrote {out} (the parent's network and nuclei, with this type head)")
    return record
