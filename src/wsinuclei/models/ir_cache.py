"""Where converted OpenVINO models are kept, and which of them were checked against torch. Torch-free, so
the OpenVINO runtime of star models (``openvino_star.py``) can find a conversion without importing torch.

A conversion is named by the model file's SHA-1 and OpenVINO's version. ``backends.use_backend`` writes it,
compares its outputs with torch's on a check input and, when they agree, leaves an ``.agreed`` file beside
it: only a conversion with that mark is run without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("WSINUCLEI_CACHE", Path.home() / ".cache" / "wsinuclei")) / "openvino"


def ir_key(model_digest: str, openvino_version: str) -> str:
    return hashlib.sha1((model_digest + openvino_version).encode()).hexdigest()[:16]


def ir_path(key: str) -> Path:
    """The converted model's XML (its weights: the same name with ``.bin``)."""
    return cache_dir() / f"{key}.xml"


def mark_agreed(key: str, difference: float) -> None:
    mark = ir_path(key).with_suffix(".agreed")
    tmp = mark.with_name(f".{mark.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"max_relative_difference": difference}))
    os.replace(tmp, mark)


def agreed_ir(key: str) -> Path | None:
    """The XML of a conversion that matched torch, or None."""
    xml = ir_path(key)
    ok = xml.is_file() and xml.with_suffix(".bin").is_file() and xml.with_suffix(".agreed").is_file()
    return xml if ok else None
