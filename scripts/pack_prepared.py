#!/usr/bin/env python
"""Pack a prepared folder (``wsinuclei prepare`` output) into one small archive and unpack it elsewhere, bit for
bit. Tiles overlap (a 1000 px image gives four 512 px tiles) and validation tiles are crops of the whole
validation images, so the archive holds each image's pixels once, as lossless WebP, plus every file's other
arrays (labels, boxes, ...). Unpacking crops the tiles again and checks every array's SHA-256 against the one
recorded when packing. Made to carry a prepared set to a lent GPU machine, whose transfers are limited in size.

    .venv/bin/python scripts/pack_prepared.py pack runs/prepared prepared.tar
    python3 scripts/pack_prepared.py unpack prepared.tar runs/prepared

A set too large for that (all four sets of recipes/contours_data.toml: about 350 million pixels) can be packed
lossy, ``pack --lossy 78`` (50 MB): images as WebP at that quality (the training's JPEG augmentation goes to 40),
every other array still exact and checked; the images are then not the prepared ones bit for bit, so figures of a
model trained on them are re-measured on the original validation images.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

TILE_NAME = re.compile(r"^(?P<key>.+)_(?P<y>\d+)_(?P<x>\d+)$")


def _checked(arrays: dict, lossy: int | None) -> dict:
    """The arrays a pack vouches for bit for bit: all of them, or all but the lossy-coded image."""
    return {k: v for k, v in arrays.items() if not (lossy and k == "image")}


def _digest(arrays: dict) -> dict:
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() + f":{v.dtype}:{v.shape}"
            for k, v in sorted(arrays.items())}


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _webp_bytes(image: np.ndarray, lossy: int | None = None) -> bytes:
    buf = io.BytesIO()
    if lossy:
        Image.fromarray(image).save(buf, "WEBP", quality=lossy, method=4)
    else:
        Image.fromarray(image).save(buf, "WEBP", lossless=True, quality=100, method=6)
    return buf.getvalue()


def pack(prepared: Path, out: Path, lossy: int | None = None) -> None:
    index: dict[str, dict] = {}
    wholes: dict[str, np.ndarray] = {}
    members: dict[str, bytes] = {}
    for split in ("val_full", "train", "val"):  # whole validation images first: their tiles crop them
        for f in sorted((prepared / split).glob("*.npz")):
            with np.load(f) as z:
                arrays = {k: z[k] for k in z.files}
            rel = f"{split}/{f.name}"
            entry: dict = {"sha256": _digest(_checked(arrays, lossy))}
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
        members[f"whole/{key}.webp"] = _webp_bytes(whole, lossy)
    members["manifest.json"] = (prepared / "manifest.json").read_bytes()
    members["pack_index.json"] = json.dumps({"lossy": lossy, "files": index}).encode()
    partial = out.with_name(out.name + ".partial")  # the archive takes its name only once it has been checked
    try:
        with tarfile.open(partial, "w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        _rebuild(partial, None)  # overlapping tiles must agree, or the whole image could not give them back
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    what = f"images lossy (WebP {lossy}), every other array checked" if lossy else "checked"
    print(f"packed {len(index)} files of {prepared} into {out} ({out.stat().st_size / 1e6:.1f} MB); {what}")


def _rebuild(archive: Path, prepared: Path | None) -> tuple[int, int | None]:
    with tarfile.open(archive, "r") as tar:
        data = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    index = json.loads(data["pack_index.json"])
    lossy = index.get("lossy") if "files" in index else None
    index = index.get("files", index)
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
        if _digest(_checked(arrays, lossy)) != entry["sha256"]:
            sys.exit(f"{archive}: {rel} does not match what was packed")
        if prepared is not None:
            path = prepared / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **arrays)
    if prepared is not None:
        (prepared / "manifest.json").write_bytes(data["manifest.json"])
    return len(index), lossy


def unpack(archive: Path, prepared: Path) -> None:
    n, lossy = _rebuild(archive, prepared)
    what = f"every array but the (WebP {lossy}) images" if lossy else "every array"
    print(f"unpacked {n} files into {prepared}; {what} matches what was packed")


def main() -> int:
    ap = argparse.ArgumentParser(description="Pack a prepared folder into one archive, or unpack one, every array checked.")
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("pack", help="a prepared folder into one archive")
    sp.add_argument("prepared", type=Path)
    sp.add_argument("archive", type=Path)
    sp.add_argument("--lossy", type=int, default=None, metavar="Q",
                    help="images as WebP at quality Q (1-100); every other array stays exact and checked")
    sp = sub.add_parser("unpack", help="an archive back into a prepared folder, every array checked")
    sp.add_argument("archive", type=Path)
    sp.add_argument("prepared", type=Path)
    args = ap.parse_args()
    if args.command == "pack":
        if args.lossy is not None and not 1 <= args.lossy <= 100:
            ap.error(f"--lossy is a WebP quality from 1 to 100, got {args.lossy}")
        pack(args.prepared, args.archive, args.lossy)
    else:
        unpack(args.archive, args.prepared)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
