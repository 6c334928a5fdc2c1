"""Training data: public annotated nuclei sets -> Reinhard-normalised tiles with boxes at the model's µm/px.

``prepare`` reads images with their annotations (MoNuSeg instance label images or Aperio XML), normalises
colour with each image's own lαβ statistics (each image stands for one slide), resamples to the model's µm/px,
cuts tiles that cover the whole image and splits by image into train/validation, deterministically.

Crop rule (documented for users, tested): a nucleus cut by a crop edge is kept, clipped to the crop, when at
least ``min_visible`` (default 0.5) of its box area lies inside the crop and the clipped box is at least
``min_size`` (default 4) px wide and high; otherwise it is dropped.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from . import stain
from .annotations import label_image_boxes, read_boxes, read_points_csv
from .colour_stats import image_tissue_stats
from .errors import WsinucleiError
from .nucleus_types import read_label_types, read_point_types, types_of_points, types_path

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class Sample:
    name: str
    image: Path
    truth: Path


def find_samples(folder: str | Path, kind: str = "auto") -> list[Sample]:
    """Pair each image in a folder with its annotations, by name: ``A_labels.png`` (instance labels) or
    ``A.xml`` (Aperio polygons) beside ``A.png``/``A.tif``/``A.jpg``; with ``kind="binary"`` ``A_mask.png``
    (a binary nucleus mask, touching nuclei merged); with ``kind="points"`` ``A_points.csv`` (centres)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WsinucleiError(f"{folder}: no such data folder")
    patterns = {"auto": ("{}_labels.png", "{}.xml"), "labels": ("{}_labels.png",), "xml": ("{}.xml",),
                "binary": ("{}_mask.png",), "points": ("{}_points.csv",)}
    if kind not in patterns:
        raise WsinucleiError(f"unknown annotation kind '{kind}' ({', '.join(patterns)})")
    samples = []
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() not in IMAGE_SUFFIXES or f.stem.endswith(("_labels", "_mask")):
            continue
        for pattern in patterns[kind]:
            cand = f.with_name(pattern.format(f.stem))
            if cand.is_file():
                samples.append(Sample(f.stem, f, cand))
                break
    if not samples:
        wanted = " or ".join(p.format("A") for p in patterns[kind])
        raise WsinucleiError(f"{folder}: no images with annotations (A.png/A.tif/A.jpg beside {wanted})")
    return samples


def split_merged_nuclei(mask: np.ndarray, h: float = 1.0, smooth: float = 1.0) -> np.ndarray:
    """A binary nucleus mask (touching nuclei merged) -> an instance label image, by a watershed on the
    smoothed distance transform seeded at its h-maxima. Every connected component keeps at least one label."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    mask = np.asarray(mask) > 0
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = ndimage.gaussian_filter(ndimage.distance_transform_edt(mask), smooth)
    markers, n = ndimage.label(h_maxima(dist, h) & mask)
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    # components too small or flat to hold a marker get one label each
    comps, n_comps = ndimage.label(mask & (labels == 0))
    if n_comps:
        labels[comps > 0] = comps[comps > 0] + labels.max()
    return labels


def read_annotation(sample: Sample, kind: str = "auto") -> dict:
    """A sample's annotation: ``labels`` (instance label image) when it has one, ``boxes`` always (except for
    points), ``points`` for centre-only sets, and ``types`` where a ``NAME_types.csv`` lies beside it
    (:mod:`wsinuclei.nucleus_types`): a look-up table by label for label images, one type per centre for points;
    None otherwise."""
    name = sample.truth.name
    typed = types_path(sample.truth)
    if kind == "points" or name.endswith("_points.csv"):
        points = read_points_csv(sample.truth).boxes[:, :2]
        types = types_of_points(points, *read_point_types(typed)) if typed.is_file() else None
        return {"points": points, "boxes": None, "labels": None, "types": types}
    if kind == "binary" or name.endswith("_mask.png"):
        labels = split_merged_nuclei(load_gray(sample.truth))
        return {"labels": labels, "boxes": label_image_boxes(labels)[0], "points": None, "types": None}
    if name.endswith("_labels.png"):
        labels = load_gray(sample.truth).astype(np.int32)
        types = read_label_types(typed, int(labels.max())) if typed.is_file() else None
        return {"labels": labels, "boxes": label_image_boxes(labels)[0], "points": None, "types": types}
    return {"labels": None, "boxes": read_boxes(sample.truth).boxes, "points": None, "types": None}


def load_gray(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        a = np.array(im)
    return a[..., 0] if a.ndim == 3 else a


def split_by_image(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split by image name: the same names, fraction and seed always give the same split,
    whatever order the names come in."""
    names = sorted(names)
    n_val = max(1, int(round(len(names) * val_fraction))) if val_fraction > 0 else 0
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    return [n for n in names if n not in val], val


def clip_boxes(boxes: np.ndarray, x0: int, y0: int, w: int, h: int, min_visible=0.5, min_size=4.0) -> np.ndarray:
    """Boxes (image coordinates) -> boxes in the crop's coordinates, by the crop rule in the module doc."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    shifted = boxes - np.array([x0, y0, x0, y0], dtype=np.float64)
    clipped = shifted.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h)
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (cw >= min_size) & (ch >= min_size) & (cw * ch >= min_visible * np.maximum(area, 1e-9))
    return clipped[keep]


def tile_origins(length: int, tile: int) -> list[int]:
    """Tile starts covering [0, length): stride ``tile``, the last tile aligned to the end (overlapping)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile))
    starts.append(length - tile)
    return sorted(set(starts))


def resample(image: np.ndarray, boxes: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale an image (bicubic) and its boxes by ``scale`` (2.0 takes 20x to the 40x grid)."""
    if abs(scale - 1.0) < 1e-6:
        return image, boxes
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = np.array(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    return out, np.asarray(boxes, dtype=np.float64) * np.array([size[0] / w, size[1] / h] * 2)


def load_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


@dataclass
class Source:
    """One annotated set in a training recipe.

    ``kind``: how its annotations are stored (see :func:`find_samples`); ``mpp``: its µm/px (images are
    resampled to the model's); ``group``: a regular expression whose first group names the original image a
    tile was cut from, so the split never puts tiles of one original on both sides; ``use``: ``split`` (train
    and validation parts by ``val_fraction``), ``train`` or ``val`` (the whole folder on one side);
    ``weight``: the share of training crops drawn from this set.
    """

    name: str
    path: Path
    kind: str = "auto"
    mpp: float = 0.25
    val_fraction: float = 0.1
    group: str | None = None
    use: str = "split"
    weight: float = 1.0

    @classmethod
    def from_dict(cls, d: dict, base: Path) -> "Source":
        unknown = set(d) - {"name", "path", "kind", "mpp", "val_fraction", "group", "use", "weight"}
        if unknown:
            raise WsinucleiError(f"recipe source {d.get('name', '?')}: unknown entries {sorted(unknown)}")
        path = Path(d["path"])
        src = cls(name=d["name"], path=path if path.is_absolute() else base / path, kind=d.get("kind", "auto"),
                  mpp=float(d.get("mpp", 0.25)), val_fraction=float(d.get("val_fraction", 0.1)),
                  group=d.get("group"), use=d.get("use", "split"), weight=float(d.get("weight", 1.0)))
        if src.use not in ("split", "train", "val"):
            raise WsinucleiError(f"recipe source {src.name}: use must be split, train or val")
        if src.kind == "points" and src.use == "split":
            raise WsinucleiError(f"recipe source {src.name}: centre-only annotations go wholly to one side "
                                 "(use = 'train' or 'val')")
        return src


def load_recipe(path: str | Path) -> tuple[list[Source], dict]:
    """A data recipe (TOML): ``[[source]]`` tables (see :class:`Source`) and optional ``[prepare]`` settings.
    Relative paths are taken from the recipe file's folder."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WsinucleiError(f"{path}: not a readable recipe ({exc})") from None
    base = path.resolve().parent
    sources = [Source.from_dict(x, base) for x in d.get("source", [])]
    if not sources:
        raise WsinucleiError(f"{path}: a recipe needs at least one [[source]]")
    if len({s.name for s in sources}) != len(sources):
        raise WsinucleiError(f"{path}: source names must differ")
    return sources, dict(d.get("prepare", {}))


def group_of(name: str, pattern: str | None) -> str:
    if not pattern:
        return name
    m = re.match(pattern, name)
    return m.group(1) if m else name


def prepare(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    source_mpp: float | None = None,
    val_fraction: float = 0.1,
    **kwargs,
) -> dict:
    """One folder of annotated images as the only source (see :func:`prepare_sources`)."""
    src = Source(name=Path(data_dir).name or "data", path=Path(data_dir), mpp=source_mpp or kwargs.get("mpp", 0.25),
                 val_fraction=val_fraction)
    return prepare_sources([src], out_dir, **kwargs)


def prepare_sources(
    sources: list[Source],
    out_dir: str | Path,
    *,
    mpp: float = 0.25,
    tile: int = 512,
    seed: int = 0,
    target_mu=stain.DEFAULT_TARGET_MU,
    target_sigma=stain.DEFAULT_TARGET_SIGMA,
    min_visible: float = 0.5,
    min_size: float = 4.0,
    progress: bool = True,
) -> dict:
    """Write ``out_dir/{train,val}/<set>__<name>_<y>_<x>.npz`` tiles (image uint8 HWC, boxes float32, and the
    instance ``labels`` where the set has them) and ``out_dir/manifest.json``. Validation images are also kept
    whole (``val_full/``) for evaluation; centre-only sets keep their points there, at their own µm/px.

    Each image is treated as a slide: Reinhard-normalised with its tissue's statistics at the model's µm/px
    (:mod:`wsinuclei.colour_stats`, the definition inference uses), then resampled to the model's µm/px."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    for sub in ("train", "val", "val_full"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    manifest = {
        "version": 2, "mpp": mpp, "tile": tile, "seed": seed,
        "target_mu": list(map(float, target_mu)), "target_sigma": list(map(float, target_sigma)),
        "min_visible": min_visible, "min_size": min_size, "train": [], "val": [], "sets": {},
        "images": {}, "tiles": {"train": 0, "val": 0}, "boxes": {"train": 0, "val": 0},
    }
    for src in sources:
        samples = find_samples(src.path, src.kind)
        groups = sorted({group_of(s.name, src.group) for s in samples})
        if src.use == "split":
            _, val_groups = split_by_image(groups, src.val_fraction, seed)
        else:
            val_groups = groups if src.use == "val" else []
        val_groups = set(val_groups)
        info = {"data_dir": str(src.path), "kind": src.kind, "mpp": src.mpp, "weight": src.weight, "use": src.use,
                "train": [], "val": [], "tiles": {"train": 0, "val": 0}, "nuclei": {"train": 0, "val": 0}}
        for s in tqdm(samples, desc=f"prepare {src.name}", unit="image", disable=not progress):
            split = "val" if group_of(s.name, src.group) in val_groups else "train"
            key = f"{src.name}__{s.name}"
            ann = read_annotation(s, src.kind)
            image = load_image(s.image)
            points = ann["points"] is not None
            # points sets are validated at their own resolution (20x slides run at 20x); the rest, and points sets
            # trained on, at the model's
            own = points and split == "val"
            scale = 1.0 if own else src.mpp / mpp
            stats = image_tissue_stats(s.image, src.mpp, src.mpp if own else mpp)
            norm = stain.reinhard(image, target_mu, target_sigma, src_mu=stats.mean, src_sigma=stats.std)
            labels = ann["labels"]
            types = ann.get("types")
            if own:
                n = len(ann["points"])
                extra = {} if types is None else {"point_types": types}
                _save_npz(out_dir / "val_full" / f"{key}.npz", norm, np.zeros((0, 4)), points=ann["points"],
                          mpp=np.float64(src.mpp), **extra)
                n_tiles = 0
            elif points:  # centre-only training tiles: at the model's µm/px, each centre a small disc (see centre_discs)
                centres = np.tile(ann["points"] + 0.5, 2).astype(np.float64)  # pixel centres, as box corners scale
                norm, centres = resample(norm, centres, scale)
                labels = centre_discs(centres[:, :2], norm.shape[:2], CENTRE_RADIUS_UM / mpp)
                n = len(centres)
                extra = {} if types is None else {"types": np.concatenate([[-1], types]).astype(np.int8)}
                n_tiles = _write_tiles(out_dir / split, key, norm, None, labels, tile, min_visible, min_size, manifest,
                                       split, centre_only=np.bool_(True), **extra)
            else:
                norm, boxes, labels = resample_annotated(norm, ann["boxes"], labels, scale)
                n = len(boxes)
                extra = {} if types is None else {"types": types}
                if split == "val":
                    _save_npz(out_dir / "val_full" / f"{key}.npz", norm, boxes, labels=labels, **extra)
                n_tiles = _write_tiles(out_dir / split, key, norm, boxes, labels, tile, min_visible, min_size, manifest,
                                       split, **extra)
            info[split].append(s.name)
            info["tiles"][split] += n_tiles
            info["nuclei"][split] += n
            manifest[split].append(key)
            manifest["images"][key] = {
                "set": src.name, "split": split, "nuclei": n, "tiles": n_tiles,
                "lab_mean": stats.mean.tolist(), "lab_std": stats.std.tolist(), "lab_definition": stats.definition,
            }
        manifest["sets"][src.name] = info
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / "manifest.json")
    return manifest


def resample_annotated(image, boxes, labels, scale: float):
    """:func:`resample` for an image with boxes and (optionally) an instance label image (nearest neighbour)."""
    out, out_boxes = resample(image, boxes, scale)
    if labels is not None and out.shape[:2] != labels.shape:
        labels = np.array(Image.fromarray(labels.astype(np.int32)).resize((out.shape[1], out.shape[0]),
                                                                            Image.Resampling.NEAREST))
        out_boxes = label_image_boxes(labels)[0]
    return out, out_boxes, labels


def _write_tiles(folder: Path, key: str, image, boxes, labels, tile, min_visible, min_size, manifest, split,
                 **flags) -> int:
    h, w = image.shape[:2]
    full_area = np.bincount(labels.ravel()) if labels is not None else None
    n_tiles = 0
    for y in tile_origins(h, tile):
        for x in tile_origins(w, tile):
            crop = image[y : y + tile, x : x + tile]
            extra = {}
            if labels is not None:
                lab = keep_visible_instances(labels[y : y + tile, x : x + tile], full_area, min_visible, min_size)
                b = label_image_boxes(lab)[0]
                extra = {"labels": lab.astype(np.uint16 if lab.max() < 65536 else np.int32), "full_area": full_area}
            else:
                b = clip_boxes(boxes, x, y, crop.shape[1], crop.shape[0], min_visible, min_size)
            _save_npz(folder / f"{key}_{y}_{x}.npz", crop, b, **extra, **flags)
            manifest["boxes"][split] += len(b)
            manifest["tiles"][split] += 1
            n_tiles += 1
    return n_tiles


#: radius of the disc that stands for a nucleus known only by its centre: the core of a small nucleus (a
#: lymphocyte's is ~3.5 µm), so the disc stays inside the nucleus it marks
CENTRE_RADIUS_UM = 2.5


def centre_discs(centres: np.ndarray, shape, radius: float) -> np.ndarray:
    """(N, 2) x, y centres -> an (H, W) int32 label image: centre ``i`` labels (``i + 1``) the pixels within
    ``radius`` px that are nearer to it than to any other centre (discs of touching nuclei split halfway). A
    centre-only set trains a star model's centre probability inside these discs and nowhere else (the star
    model's loss, ``centre_only``): unannotated nuclei are never taught as background."""
    h, w = int(shape[0]), int(shape[1])
    ids = np.zeros((h, w), np.int32)
    if len(centres):
        xs = np.clip(np.floor(centres[:, 0]).astype(np.int64), 0, w - 1)
        ys = np.clip(np.floor(centres[:, 1]).astype(np.int64), 0, h - 1)
        ids[ys, xs] = np.arange(1, len(centres) + 1, dtype=np.int32)
    if not ids.any():
        return ids
    dist, (iy, ix) = ndimage.distance_transform_edt(ids == 0, return_indices=True)
    labels = ids[iy, ix]
    labels[dist > radius] = 0
    return labels


def keep_visible_instances(labels: np.ndarray, full_area: np.ndarray, min_visible: float, min_size: float) -> np.ndarray:
    """The crop rule for instance labels: a nucleus cut by the crop edge stays when at least ``min_visible`` of
    its pixels are inside and its clipped box is at least ``min_size`` px wide and high; otherwise its pixels
    become background."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return labels.copy()
    visible = np.bincount(labels.ravel(), minlength=len(full_area))
    slices = ndimage.find_objects(labels.astype(np.int64))
    keep = np.zeros(max(len(full_area), labels.max() + 1), bool)
    for i in ids:
        sl = slices[i - 1]
        ok = visible[i] >= min_visible * full_area[i]
        ok &= (sl[0].stop - sl[0].start) >= min_size and (sl[1].stop - sl[1].start) >= min_size
        keep[i] = ok
    out = labels.copy()
    out[~keep[labels]] = 0
    return out


def _save_npz(path: Path, image: np.ndarray, boxes: np.ndarray, **extra) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, image=image.astype(np.uint8), boxes=np.asarray(boxes, np.float32).reshape(-1, 4), **extra)
    os.replace(tmp, path)


@dataclass
class Tile:
    """A prepared tile (or whole validation image) in memory."""

    name: str
    set: str
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray | None = None
    full_area: np.ndarray | None = None
    points: np.ndarray | None = None
    mpp: float | None = None
    glass: tuple | None = None  # what white glass becomes after this image's normalisation (RGB)
    centre_only: bool = False  # labels are discs at annotated centres (centre_discs), not outlines
    types: np.ndarray | None = None  # type index by label (labels' look-up table, -1 untyped); None: no types
    point_types: np.ndarray | None = None  # type index per centre of ``points``


def load_tiles(prepared: str | Path, split: str) -> list[Tile]:
    folder = Path(prepared) / split
    if not folder.is_dir():
        raise WsinucleiError(f"{prepared}: no '{split}' folder; run 'wsinuclei prepare' first")
    out = []
    for f in sorted(folder.glob("*.npz")):
        with np.load(f) as z:
            set_name = f.stem.split("__", 1)[0] if "__" in f.stem else ""
            out.append(Tile(f.stem, set_name, z["image"], z["boxes"].astype(np.float64),
                            z["labels"] if "labels" in z else None,
                            z["full_area"] if "full_area" in z else None,
                            z["points"] if "points" in z else None,
                            float(z["mpp"]) if "mpp" in z else None,
                            centre_only=bool(z["centre_only"]) if "centre_only" in z else False,
                            types=z["types"].astype(np.int64) if "types" in z else None,
                            point_types=z["point_types"].astype(np.int64) if "point_types" in z else None))
    return out


def as_read_at(tiles: list[Tile], read_mpp: float) -> list[Tile]:
    """Validation images as a slide read at ``read_mpp`` shows them: resampled bicubic (as
    :meth:`Slide.read_region` resamples), boxes and centres scaled, the set named ``<set>_<read_mpp>mpp``. A 40x
    image read at 0.5 µm/px is what a 20x slide gives the model at its own resolution. Images already at
    ``read_mpp`` or coarser (CRCHisto's 20x) are left out: their set is scored at its own resolution already."""
    out = []
    for t in tiles:
        mpp = t.mpp or 0.25
        if mpp >= read_mpp - 1e-9:
            continue
        image, boxes = resample(t.image, t.boxes, mpp / read_mpp)
        scale = np.array([image.shape[1] / t.image.shape[1], image.shape[0] / t.image.shape[0]])
        points = None if t.points is None else t.points * scale
        out.append(Tile(t.name, f"{t.set}_{read_mpp:g}mpp", image, boxes, points=points, mpp=read_mpp,
                        point_types=t.point_types))
    return out


def upsampled_to(tiles: list[Tile], mpp: float) -> list[Tile]:
    """Validation images coarser than ``mpp`` (CRCHisto's and BRCA-M2C's 20x) as a model that serves only
    ``mpp`` reads them: enlarged bicubic (the pipeline normalises a slide read enlarged on its own pixels, as
    these were, then interpolates), their centres scaled, under their own set's name. Finer or equal ones are
    kept as they are."""
    out = []
    for t in tiles:
        if (t.mpp or mpp) <= mpp + 1e-9:
            out.append(t)
            continue
        image, boxes = resample(t.image, t.boxes, t.mpp / mpp)
        scale = np.array([image.shape[1] / t.image.shape[1], image.shape[0] / t.image.shape[0]])
        points = None if t.points is None else (t.points + 0.5) * scale - 0.5
        out.append(Tile(t.name, t.set, image, boxes, points=points, mpp=mpp, point_types=t.point_types))
    return out


def load_split(prepared: str | Path, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, boxes) of every tile of a split that has boxes (centre-only images are left out)."""
    return [(t.name, t.image, t.boxes) for t in load_tiles(prepared, split) if t.points is None]


@dataclass
class Augment:
    """Training augmentation aimed at what fails on unseen tissue (settings: a preset's ``[train.augment]``).

    Scale: with probability ``small_p`` the crop is shrunk by a factor in [small_low, small_high] (nuclei as a
    20x slide shows them, so one model reads 0.25-0.5 µm/px), otherwise resized by a factor log-uniform in
    [low, high]. Stain: each stain's optical density (Ruifrok H&E) scaled by 1 ± hed_scale and shifted by
    ± hed_shift. Blur (probability blur_p) and JPEG re-compression (probability jpeg_p), as scanners give."""

    small_p: float = 0.0
    small_low: float = 0.5
    small_high: float = 0.75
    low: float = 1.0
    high: float = 1.0
    hed_scale: float = 0.0
    hed_shift: float = 0.0
    blur_p: float = 0.0
    jpeg_p: float = 0.0
    glass_p: float = 0.0  # a band of glass (the tile's normalised white) over one side: slide edges, small images

    @classmethod
    def from_dict(cls, d: dict | None) -> "Augment":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise WsinucleiError(f"unknown augmentation settings {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in d.items()})

    def draw_scale(self, rng: np.random.Generator) -> float:
        if self.small_p > 0 and rng.random() < self.small_p:
            return float(rng.uniform(self.small_low, self.small_high))
        if self.high > self.low:
            return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))
        return self.low

    def colour(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.hed_scale > 0 or self.hed_shift > 0:
            img = stain.hed_jitter(img, 1 + rng.uniform(-self.hed_scale, self.hed_scale, 3),
                                   rng.uniform(-self.hed_shift, self.hed_shift, 3))
        if self.blur_p > 0 and rng.random() < self.blur_p:
            sigma = rng.uniform(0.3, 1.2)
            img = ndimage.gaussian_filter(img.astype(np.float32), (sigma, sigma, 0)).round().clip(0, 255).astype(np.uint8)
        if self.jpeg_p > 0 and rng.random() < self.jpeg_p:
            import io

            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(40, 91)))
            buf.seek(0)
            img = np.array(Image.open(buf).convert("RGB"))
        return img


class CropSampler:
    """Random training crops with flips and 90° rotations (plus :class:`Augment` and optional colour jitter),
    from in-memory tiles, driven by one numpy Generator whose state is checkpointed so a resumed run draws the
    same crops.

    Tiles with instance labels give crops whose boxes and masks come from the labels after every geometric
    step (the crop rule of :func:`keep_visible_instances`); tiles with boxes only follow :func:`clip_boxes`.
    ``weights`` ({set name: share}) draws each set by its share of the crops, whatever its number of tiles."""

    def __init__(self, tiles, crop: int, rng: np.random.Generator, input_channels: str = "rgb",
                 color_jitter: float = 0.0, min_visible: float = 0.5, min_size: float = 4.0,
                 augment: Augment | None = None, weights: dict[str, float] | None = None):
        tiles = [t if isinstance(t, Tile) else Tile(t[0], "", t[1], np.asarray(t[2], np.float64)) for t in tiles]
        tiles = [t for t in tiles if t.points is None]
        if not tiles:
            raise WsinucleiError("no training tiles")
        self.tiles = tiles
        self.crop = crop
        self.rng = rng
        self.input_channels = input_channels
        self.color_jitter = color_jitter
        self.min_visible, self.min_size = min_visible, min_size
        self.augment = augment or Augment()
        self.by_set: list[np.ndarray] = []
        self.set_p = None
        if weights:
            names = sorted({t.set for t in tiles})
            missing = [n for n in names if n not in weights]
            if missing:
                raise WsinucleiError(f"no sampling weight for the sets {missing}")
            self.by_set = [np.array([i for i, t in enumerate(tiles) if t.set == n]) for n in names]
            p = np.array([weights[n] for n in names], float)
            self.set_p = p / p.sum()

    def _pick(self) -> Tile:
        rng = self.rng
        if self.set_p is not None:
            members = self.by_set[rng.choice(len(self.by_set), p=self.set_p)]
            return self.tiles[members[rng.integers(len(members))]]
        return self.tiles[rng.integers(len(self.tiles))]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        img, boxes, _ = self.sample_instances()
        return img, boxes

    def _glass_band(self, img, labels, glass, rng):
        """Glass over one side of the crop (10-60 % of it), as at a slide's edge or around a small image, where
        the pipeline reads white: the detector must not change its mind about the tissue next to it (with
        GroupNorm, a tile that is mostly glass shifts every feature's statistics). Nuclei left with less than
        ``min_visible`` of their pixels are dropped, as at any crop edge."""
        img, labels = img.copy(), labels.copy()
        c_h, c_w = labels.shape
        side = int(rng.integers(4))
        frac = rng.uniform(0.1, 0.6)
        band = np.zeros(labels.shape, bool)
        if side == 0:
            band[:, : int(frac * c_w)] = True
        elif side == 1:
            band[:, c_w - int(frac * c_w):] = True
        elif side == 2:
            band[: int(frac * c_h)] = True
        else:
            band[c_h - int(frac * c_h):] = True
        colour = np.asarray(glass if glass is not None else (245, 245, 245), float)
        noise = rng.normal(0, 1.5, (int(band.sum()), 3))
        img[band] = np.clip(colour + noise, 0, 255).astype(np.uint8)
        before = np.bincount(labels.ravel())
        labels[band] = 0
        after = np.bincount(labels.ravel(), minlength=len(before))
        gone = after < self.min_visible * before
        gone[0] = False
        labels[gone[labels]] = 0
        return img, labels

    def sample_instances(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(image uint8 HWC, boxes (N, 4), masks (N, H, W) uint8 or None for box-only tiles)."""
        crop = self.sample_crop()
        return crop.image, crop.boxes, crop.masks

    def sample_crop(self) -> "Crop":
        """One training crop: :meth:`sample_instances`'s three, and whether its masks are centre discs."""
        rng = self.rng
        t = self._pick()
        image = t.image
        h, w = image.shape[:2]
        scale = self.augment.draw_scale(rng)
        region = min(int(round(self.crop / scale)), h, w)
        y, x = int(rng.integers(0, h - region + 1)), int(rng.integers(0, w - region + 1))
        img = image[y : y + region, x : x + region]
        out = max(8, int(round(region * scale))) if scale != 1.0 else region
        labels = b = None
        if t.labels is not None:
            full_area = t.full_area if t.full_area is not None else np.bincount(t.labels.ravel())
            labels = keep_visible_instances(t.labels[y : y + region, x : x + region], full_area,
                                            self.min_visible, self.min_size)
            if out != region:
                labels = np.array(Image.fromarray(labels.astype(np.int32)).resize((out, out), Image.Resampling.NEAREST))
        else:
            b = clip_boxes(t.boxes, x, y, region, region, self.min_visible, self.min_size) * (out / region)
        if out != region:
            img = np.array(Image.fromarray(img).resize((out, out), Image.Resampling.BICUBIC))
        c = out
        if rng.random() < 0.5:  # horizontal flip
            img = img[:, ::-1]
            if labels is not None:
                labels = labels[:, ::-1]
            else:
                b = np.stack([c - b[:, 2], b[:, 1], c - b[:, 0], b[:, 3]], axis=1)
        if rng.random() < 0.5:  # vertical flip
            img = img[::-1]
            if labels is not None:
                labels = labels[::-1]
            else:
                b = np.stack([b[:, 0], c - b[:, 3], b[:, 2], c - b[:, 1]], axis=1)
        if rng.random() < 0.5:  # transpose: with the flips, all eight 90° rotations/reflections
            img = img.transpose(1, 0, 2)
            if labels is not None:
                labels = labels.T
            else:
                b = b[:, [1, 0, 3, 2]]
        img = np.ascontiguousarray(img)
        if labels is not None and self.augment.glass_p > 0 and rng.random() < self.augment.glass_p:
            img, labels = self._glass_band(img, labels, t.glass, rng)
        masks = types = None
        if labels is not None:
            labels = np.ascontiguousarray(labels)
            ids = np.unique(labels)
            ids = ids[ids > 0]
            slices = ndimage.find_objects(labels.astype(np.int64))
            b = np.array([(slices[i - 1][1].start, slices[i - 1][0].start, slices[i - 1][1].stop,
                           slices[i - 1][0].stop) for i in ids], np.float64).reshape(-1, 4)
            big = ((b[:, 2] - b[:, 0]) >= 2) & ((b[:, 3] - b[:, 1]) >= 2)  # a shrunk sliver is no nucleus
            ids, b = ids[big], b[big]
            masks = (labels[None] == ids[:, None, None]).astype(np.uint8)
            if t.types is not None:
                types = np.asarray(t.types)[ids].astype(np.int64)
        img = self.augment.colour(img, rng)
        if self.color_jitter > 0:
            gain = 1 + rng.uniform(-self.color_jitter, self.color_jitter, size=3)
            bias = rng.uniform(-self.color_jitter, self.color_jitter, size=3) * 255 * 0.5
            img = np.clip(img * gain + bias, 0, 255).astype(np.uint8)
        return Crop(stain.model_input(img, self.input_channels), b.reshape(-1, 4), masks, t.centre_only, types)


class Crop(NamedTuple):
    image: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray | None
    centre_only: bool = False  # masks are discs at annotated centres (centre_discs): train the centre probability only
    types: np.ndarray | None = None  # (N,) type index per mask (-1 untyped); None: the set has no types
