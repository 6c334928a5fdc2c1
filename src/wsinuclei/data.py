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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import stain
from .annotations import read_boxes
from .errors import WsinucleiError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class Sample:
    name: str
    image: Path
    truth: Path


def find_samples(folder: str | Path) -> list[Sample]:
    """Pair each image in a folder with its annotations: ``A_labels.png`` or ``A.xml`` beside ``A.png``/``A.tif``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WsinucleiError(f"{folder}: no such data folder")
    samples = []
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() not in IMAGE_SUFFIXES or f.stem.endswith("_labels"):
            continue
        for cand in (f.with_name(f.stem + "_labels.png"), f.with_suffix(".xml")):
            if cand.is_file():
                samples.append(Sample(f.stem, f, cand))
                break
    if not samples:
        raise WsinucleiError(f"{folder}: no images with annotations (A.png + A_labels.png, or A.tif + A.xml)")
    return samples


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


def prepare(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    mpp: float = 0.25,
    source_mpp: float | None = None,
    tile: int = 512,
    val_fraction: float = 0.1,
    seed: int = 0,
    target_mu=stain.DEFAULT_TARGET_MU,
    target_sigma=stain.DEFAULT_TARGET_SIGMA,
    min_visible: float = 0.5,
    min_size: float = 4.0,
    progress: bool = True,
) -> dict:
    """Write ``out_dir/{train,val}/<name>_<y>_<x>.npz`` (image uint8 HWC, boxes float32) and
    ``out_dir/manifest.json``. Validation images are also kept whole (``val_full/``) for evaluation."""
    from tqdm import tqdm

    samples = find_samples(data_dir)
    train_names, val_names = split_by_image([s.name for s in samples], val_fraction, seed)
    out_dir = Path(out_dir)
    for sub in ("train", "val", "val_full"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    manifest = {
        "data_dir": str(data_dir), "mpp": mpp, "tile": tile, "val_fraction": val_fraction, "seed": seed,
        "target_mu": list(map(float, target_mu)), "target_sigma": list(map(float, target_sigma)),
        "min_visible": min_visible, "min_size": min_size, "train": train_names, "val": val_names,
        "images": {}, "tiles": {"train": 0, "val": 0}, "boxes": {"train": 0, "val": 0},
    }
    for s in tqdm(samples, desc="prepare", unit="image", disable=not progress):
        image = load_image(s.image)
        truth = read_boxes(s.truth)
        img_mpp = source_mpp or truth.meta.get("mpp") or mpp  # MoNuSeg: 40x, about 0.25 um/px
        mu, sigma = stain.lab_mean_std(image)
        norm = stain.reinhard(image, target_mu, target_sigma, src_mu=mu, src_sigma=sigma)
        norm, boxes = resample(norm, truth.boxes, img_mpp / mpp if source_mpp else 1.0)
        split = "val" if s.name in val_names else "train"
        if split == "val":
            _save_npz(out_dir / "val_full" / f"{s.name}.npz", norm, boxes)
        h, w = norm.shape[:2]
        n_tiles = 0
        for y in tile_origins(h, tile):
            for x in tile_origins(w, tile):
                crop = norm[y : y + tile, x : x + tile]
                b = clip_boxes(boxes, x, y, crop.shape[1], crop.shape[0], min_visible, min_size)
                _save_npz(out_dir / split / f"{s.name}_{y}_{x}.npz", crop, b)
                manifest["boxes"][split] += len(b)
                n_tiles += 1
        manifest["tiles"][split] += n_tiles
        manifest["images"][s.name] = {
            "split": split, "nuclei": len(truth), "skipped": truth.skipped, "tiles": n_tiles,
            "lab_mean": mu.tolist(), "lab_std": sigma.tolist(),
        }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / "manifest.json")
    return manifest


def _save_npz(path: Path, image: np.ndarray, boxes: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, image=image.astype(np.uint8), boxes=np.asarray(boxes, np.float32).reshape(-1, 4))
    os.replace(tmp, path)


def load_split(prepared: str | Path, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    folder = Path(prepared) / split
    if not folder.is_dir():
        raise WsinucleiError(f"{prepared}: no '{split}' folder; run 'wsinuclei prepare' first")
    out = []
    for f in sorted(folder.glob("*.npz")):
        with np.load(f) as z:
            out.append((f.stem, z["image"], z["boxes"].astype(np.float64)))
    return out


class CropSampler:
    """Random training crops with flips and 90° rotations (and optional colour jitter), from in-memory
    tiles, driven by one numpy Generator whose state is checkpointed so a resumed run draws the same crops."""

    def __init__(self, tiles, crop: int, rng: np.random.Generator, input_channels: str = "rgb",
                 color_jitter: float = 0.0, min_visible: float = 0.5, min_size: float = 4.0):
        if not tiles:
            raise WsinucleiError("no training tiles")
        self.tiles = tiles
        self.crop = crop
        self.rng = rng
        self.color_jitter = color_jitter
        self.min_visible, self.min_size = min_visible, min_size
        self.tiles = [(n, stain.model_input(im, input_channels), b) for n, im, b in tiles]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        _, image, boxes = self.tiles[rng.integers(len(self.tiles))]
        h, w = image.shape[:2]
        c = min(self.crop, h, w)
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        img = image[y : y + c, x : x + c]
        b = clip_boxes(boxes, x, y, c, c, self.min_visible, self.min_size)
        if rng.random() < 0.5:  # horizontal flip
            img = img[:, ::-1]
            b = np.stack([c - b[:, 2], b[:, 1], c - b[:, 0], b[:, 3]], axis=1)
        if rng.random() < 0.5:  # vertical flip
            img = img[::-1]
            b = np.stack([b[:, 0], c - b[:, 3], b[:, 2], c - b[:, 1]], axis=1)
        if rng.random() < 0.5:  # transpose: with the flips, all eight 90° rotations/reflections
            img = img.transpose(1, 0, 2)
            b = b[:, [1, 0, 3, 2]]
        img = np.ascontiguousarray(img)
        if self.color_jitter > 0:
            gain = 1 + rng.uniform(-self.color_jitter, self.color_jitter, size=3)
            bias = rng.uniform(-self.color_jitter, self.color_jitter, size=3) * 255 * 0.5
            img = np.clip(img * gain + bias, 0, 255).astype(np.uint8)
        return img, b.reshape(-1, 4)
