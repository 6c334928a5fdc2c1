#!/usr/bin/env python
"""Pack a prepared folder (``wsinuclei prepare`` output) into one small archive and unpack it elsewhere, bit for
bit. Tiles overlap (a 1000 px image gives four 512 px tiles) and validation tiles are crops of the whole
validation images, so the archive holds each image's pixels once, as lossless WebP, plus every file's other
arrays (labels, boxes, ...). Unpacking crops the tiles again and checks every array's SHA-256 against the one
recorded when packing. Made to carry a prepared set to a lent GPU machine, whose transfers are limited in size.

    .venv/bin/python scripts/pack_prepared.py pack runs/prepared prepared.tar
    python3 scripts/pack_prepared.py unpack prepared.tar runs/prepared
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

TILE_NAME = re.compile(r"^(?P<key>.+)_(?P<y>\d+)_(?P<x>\d+)$")


def _digest(arrays: dict) -> dict:
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() + f":{v.dtype}:{v.shape}"
            for k, v in sorted(arrays.items())}


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _webp_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "WEBP", lossless=True, quality=100, method=6)
    return buf.getvalue()


def pack(prepared: Path, out: Path) -> None:
    index: dict[str, dict] = {}
    wholes: dict[str, np.ndarray] = {}
    members: dict[str, bytes] = {}
    for split in ("val_full", "train", "val"):  # whole validation images first: their tiles crop them
        for f in sorted((prepared / split).glob("*.npz")):
            with np.load(f) as z:
                arrays = {k: z[k] for k in z.files}
            rel = f"{split}/{f.name}"
            entry: dict = {"sha256": _digest(arrays)}
            image = arrays.get("image")
            m = TILE_NAME.match(f.stem)
            if split == "val_full" and image is not None and image.ndim == 3:
                wholes[f.stem] = arrays.pop("image")
                entry.update(whole=f.stem, y=0, x=0, h=image.shape[0], w=image.shape[1])
            elif split in ("train", "val") and m:
                key, y, x = m["key"], int(m["y"]), int(m["x"])
                h, w = image.shape[:2]
                whole = wholes.get(key)
                if whole is None:
                    whole = np.zeros((0, 0, image.shape[2]), np.uint8)
                if whole.shape[0] < y + h or whole.shape[1] < x + w:
                    grown = np.zeros((max(whole.shape[0], y + h), max(whole.shape[1], x + w), image.shape[2]), np.uint8)
                    grown[: whole.shape[0], : whole.shape[1]] = whole
                    whole = grown
                whole[y : y + h, x : x + w] = arrays.pop("image")
                wholes[key] = whole
                entry.update(whole=key, y=y, x=x, h=h, w=w)
            members[rel] = _npz_bytes(arrays)
            index[rel] = entry
    for key, whole in wholes.items():
        members[f"whole/{key}.webp"] = _webp_bytes(whole)
    members["manifest.json"] = (prepared / "manifest.json").read_bytes()
    members["pack_index.json"] = json.dumps(index).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _rebuild(out, None)  # overlapping tiles must agree, or the whole image could not give them back
    print(f"packed {len(index)} files of {prepared} into {out} ({out.stat().st_size / 1e6:.1f} MB); checked")


def _rebuild(archive: Path, prepared: Path | None) -> int:
    with tarfile.open(archive, "r") as tar:
        data = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    index = json.loads(data["pack_index.json"])
    wholes: dict[str, np.ndarray] = {}
    for rel, entry in index.items():
        with np.load(io.BytesIO(data[rel])) as z:
            arrays = {k: z[k] for k in z.files}
        if "whole" in entry:
            key = entry["whole"]
            if key not in wholes:
                wholes[key] = np.array(Image.open(io.BytesIO(data[f"whole/{key}.webp"])).convert("RGB"))
            y, x, h, w = entry["y"], entry["x"], entry["h"], entry["w"]
            arrays = {"image": wholes[key][y : y + h, x : x + w].copy(), **arrays}
        if _digest(arrays) != entry["sha256"]:
            sys.exit(f"{archive}: {rel} does not match what was packed")
        if prepared is not None:
            path = prepared / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **arrays)
    if prepared is not None:
        (prepared / "manifest.json").write_bytes(data["manifest.json"])
    return len(index)


def unpack(archive: Path, prepared: Path) -> None:
    n = _rebuild(archive, prepared)
    print(f"unpacked {n} files into {prepared}; every array matches what was packed")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(Path(sys.argv[2]), Path(sys.argv[3]))
