"""Test slides from real images: a pyramidal tiled TIFF (µm/px in its resolution tags) that OpenSlide reads
as a generic tiled TIFF, with the images' annotations moved to slide coordinates.

Used by the seam test (images placed so tile seams cut through nuclei) and the whole-slide benchmarks
(>= 20,000 px square with tissue and background).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .annotations import read_boxes
from .data import find_samples, load_image
from .outputs import csv_bytes, atomic_write_bytes


@dataclass
class Placement:
    name: str
    x: int
    y: int
    width: int
    height: int


#: images larger than this are built in files on disk (numpy memory maps beside the output), not in memory: a
#: full-size 40x slide (~100,000 x 80,000 px) is 24 GB of pixels
IN_MEMORY_BYTES = 2 * 2**30


def downsample2(img: np.ndarray, out: np.ndarray | None = None, strip: int = 2048) -> np.ndarray:
    """2x2 mean (rounded) of an RGB image, in strips of ``strip`` rows so a memory-mapped level never needs a
    whole-level temporary."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    if out is None:
        out = np.empty((h // 2, w // 2) + img.shape[2:], np.uint8)
    for y in range(0, h, strip):
        a = img[y:min(h, y + strip), :w].astype(np.uint16)
        out[y // 2:y // 2 + a.shape[0] // 2] = ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2)
                                                // 4).astype(np.uint8)
    return out


def _allocate(shape: tuple, scratch: Path | None, name: str, fill: int | None = None) -> np.ndarray:
    """An uint8 array in memory, or a memory map in ``scratch`` when it is larger than ``IN_MEMORY_BYTES``."""
    nbytes = int(np.prod(shape))
    if scratch is None or nbytes <= IN_MEMORY_BYTES:
        return np.full(shape, fill, np.uint8) if fill is not None else np.empty(shape, np.uint8)
    scratch.mkdir(parents=True, exist_ok=True)
    arr = np.lib.format.open_memmap(scratch / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape)
    if fill is not None:
        for y in range(0, shape[0], 2048):
            arr[y:y + 2048] = fill
    return arr


def write_pyramid_tiff(path: str | Path, image: np.ndarray, mpp: float, tile: int = 256, compression: str = "jpeg",
                       min_level_size: int = 512, scratch: Path | None = None) -> Path:
    """Tiled, pyramidal TIFF: level 0 and 2x-downsampled levels as further tiled pages (OpenSlide's generic
    TIFF layout), resolution in pixels per centimetre. Written to a temporary name, then renamed. Levels too
    large for memory are made in ``scratch`` (memory maps, removed afterwards) when it is given."""
    import tifffile

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    levels = [image]
    while max(levels[-1].shape[:2]) > min_level_size:
        prev = levels[-1]
        shape = (prev.shape[0] // 2, prev.shape[1] // 2) + prev.shape[2:]
        levels.append(downsample2(prev, _allocate(shape, scratch, f"level{len(levels)}")))
    kwargs = {"compression": compression}
    if compression == "jpeg":
        kwargs["compressionargs"] = {"level": 90}
    try:
        with tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tw:
            for i, lev in enumerate(levels):
                res = 1e4 / (mpp * 2**i)
                tw.write(lev, tile=(tile, tile), photometric="rgb", resolution=(res, res),
                         resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1,
                         description="wsinuclei synthetic slide" if i == 0 else None, **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        if scratch is not None:
            for i in range(1, len(levels)):
                (scratch / f"level{i}.npy").unlink(missing_ok=True)
    return path


def compose(samples, placements: list[tuple[int, int]], size: tuple[int, int], scratch: Path | None = None):
    """Paste images at (x, y) on a white canvas of ``size`` (w, h); return canvas, boxes, placements. An image
    used in many cells is read once."""
    W, H = size
    canvas = _allocate((H, W, 3), scratch, "level0", fill=255)
    boxes, placed = [], []
    cache: dict = {}
    for s, (x, y) in zip(samples, placements):
        if s.name not in cache:
            cache[s.name] = (load_image(s.image), read_boxes(s.truth).boxes)
        img, truth = cache[s.name]
        h, w = img.shape[:2]
        canvas[y : y + h, x : x + w] = img
        boxes.append(truth + np.array([x, y, x, y]))
        placed.append(Placement(s.name, x, y, w, h))
    return canvas, (np.concatenate(boxes) if boxes else np.zeros((0, 4))), placed


def build_slide(data_dir: str | Path, out: str | Path, *, grid: tuple[int, int] = (2, 2), gap: int = 0,
                margin: int = 200, mpp: float = 0.25, names: list[str] | None = None, fill: int | None = None,
                compression: str = "jpeg", seed: int = 0) -> dict:
    """Lay images from ``data_dir`` on a ``grid`` (cols, rows) with ``gap`` px between them and ``margin``
    of white around; ``fill`` cycles the images to fill that many cells (for big benchmark slides).
    Writes ``out`` (TIFF), ``out``'s stem + ``.truth.csv`` and ``.placements.csv``."""
    samples = find_samples(data_dir)
    if names:
        by_name = {s.name: s for s in samples}
        samples = [by_name[n] for n in names]
    cols, rows = grid
    n_cells = cols * rows
    rng = np.random.default_rng(seed)
    chosen = [samples[i % len(samples)] for i in range(n_cells)]
    if fill is None:
        chosen = chosen[: min(n_cells, len(samples))]
    first = load_image(chosen[0].image)
    ch, cw = first.shape[:2]
    positions = []
    for k in range(len(chosen)):
        r, c = divmod(k, cols)
        positions.append((margin + c * (cw + gap), margin + r * (ch + gap)))
    W = margin * 2 + cols * cw + (cols - 1) * gap
    H = margin * 2 + rows * ch + (rows - 1) * gap
    if fill is not None:  # leave some cells empty (background inside the slide), chosen by seed
        empty = set(rng.choice(n_cells, size=max(0, n_cells - fill), replace=False).tolist())
        keep = [i for i in range(len(chosen)) if i not in empty]
        chosen, positions = [chosen[i] for i in keep], [positions[i] for i in keep]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.levels")  # memory maps for a slide too large for memory
    try:
        canvas, boxes, placed = compose(chosen, positions, (W, H), scratch)
        write_pyramid_tiff(out, canvas, mpp, compression=compression, scratch=scratch)
    finally:  # the memory maps go, whatever happened (an open map keeps its pages until it is dropped)
        canvas = None
        (scratch / "level0.npy").unlink(missing_ok=True)
        if scratch.exists() and not any(scratch.iterdir()):
            scratch.rmdir()
    stem = out.name.split(".")[0]
    truth = out.with_name(f"{stem}.truth.csv")
    atomic_write_bytes(truth, csv_bytes(boxes, np.ones(len(boxes))))
    rows_out = [["name", "x", "y", "width", "height"]] + [[p.name, p.x, p.y, p.width, p.height] for p in placed]
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows_out)
    atomic_write_bytes(out.with_name(f"{stem}.placements.csv"), buf.getvalue().encode())
    return {"slide": str(out), "truth": str(truth), "size": (W, H), "nuclei": len(boxes), "images": len(placed)}
