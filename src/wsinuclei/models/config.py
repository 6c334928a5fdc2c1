"""Presets: the TOML files in ``presets/`` (data, not code) that say what a detector is (backbone, anchors,
heads) and how it is trained, parsed into a :class:`DetectorConfig`. Importing this needs neither torch nor
torchvision, so reading a model file's settings (``models/openvino_star.py``) stays cheap.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import WsinucleiError

# Mean/std of the network input in 0-1 units. Tiles are Reinhard-normalised to one target first, so these
# are fixed numbers of that target's colour space, not data-set statistics that would need shipping.
IMAGE_MEAN = (0.70, 0.55, 0.70)
IMAGE_STD = (0.18, 0.20, 0.15)


@dataclass
class DetectorConfig:
    """A preset, parsed. ``raw`` keeps the whole TOML so a checkpoint can store it verbatim."""

    name: str
    mpp: float
    input_channels: str
    backbone: dict[str, Any]
    anchors: dict[str, Any]
    rpn: dict[str, Any]
    roi_heads: dict[str, Any]
    train: dict[str, Any]
    description: str = ""
    mask_head: dict[str, Any] | None = None  # present: a Mask R-CNN that outlines each nucleus
    star_head: dict[str, Any] | None = None  # present: a dense star-convex polygon detector (star.py)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorConfig":
        star = "star_head" in d  # a dense detector has no anchors, RPN or RoI heads
        try:
            cfg = cls(
                name=d["name"],
                mpp=float(d["mpp"]),
                input_channels=d.get("input_channels", "rgb"),
                backbone=dict(d["backbone"]),
                anchors=dict(d.get("anchors", {}) if star else d["anchors"]),
                rpn=dict(d.get("rpn", {}) if star else d["rpn"]),
                roi_heads=dict(d.get("roi_heads", {}) if star else d["roi_heads"]),
                train=dict(d.get("train", {})),
                description=d.get("description", ""),
                mask_head=dict(d["mask_head"]) if "mask_head" in d else None,
                star_head=dict(d["star_head"]) if star else None,
                raw=copy.deepcopy(d),
            )
        except KeyError as exc:
            raise WsinucleiError(f"preset is missing the entry {exc}") from None
        if cfg.input_channels not in ("rgb", "hematoxylin"):
            raise WsinucleiError(f"preset {cfg.name}: input_channels must be 'rgb' or 'hematoxylin'")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = copy.deepcopy(self.raw)
        d.update(name=self.name, mpp=self.mpp, input_channels=self.input_channels, description=self.description)
        for key in ("backbone", "anchors", "rpn", "roi_heads", "train"):
            if getattr(self, key) or key in d:
                d[key] = copy.deepcopy(getattr(self, key))
        for key in ("mask_head", "star_head"):
            if getattr(self, key) is not None:
                d[key] = copy.deepcopy(getattr(self, key))
        return d

    @property
    def has_masks(self) -> bool:
        """The model learns and draws contours (a mask head or a star head): training needs instance labels."""
        return self.mask_head is not None or self.star_head is not None

    @property
    def is_star(self) -> bool:
        return self.star_head is not None

    @property
    def mpp_range(self) -> tuple[float, float]:
        """The µm/px the model was trained to serve (scale augmentation): slides inside it run at their own
        resolution. Models without the entry serve only ``mpp``."""
        lo, hi = self.raw.get("mpp_range", (self.mpp, self.mpp))
        return float(lo), float(hi)


def list_presets() -> list[str]:
    folder = resources.files(__package__) / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str | Path) -> DetectorConfig:
    """A preset by name (``fast``, ``resnet50``, ``resnet101``) or by the path of a TOML file. A file with
    ``base = "NAME"`` starts from that packaged preset and changes only what it sets (a training recipe that
    keeps the architecture, e.g. ``recipes/study/resnet50_scratch.toml``); ``base = "other.toml"`` starts from
    another recipe in the same folder."""
    return DetectorConfig.from_dict(_preset_dict(name_or_path))


def _preset_dict(name_or_path: str | Path, _seen: tuple = ()) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        try:
            d = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise WsinucleiError(f"{path}: not valid TOML ({e})") from None
        base = d.pop("base", None)
        if base is None:
            return d
        if str(base).endswith(".toml"):  # another recipe, beside this one: an experiment's stages share one network
            base_path = path.parent / str(base)
            if not base_path.is_file():
                raise WsinucleiError(f"{path}: base recipe '{base}' not found beside it")
            if base_path.resolve() in _seen:
                raise WsinucleiError(f"{path}: base recipes form a loop through '{base}'")
            return _merged(_preset_dict(base_path, (*_seen, path.resolve())), d)
        if str(base) not in list_presets():
            raise WsinucleiError(f"{path}: base preset '{base}' unknown (known: {', '.join(list_presets())})")
        return _merged(_preset_dict(base), d)
    if str(name_or_path) not in list_presets():
        raise WsinucleiError(f"unknown preset '{name_or_path}' (known: {', '.join(list_presets())})")
    return tomllib.loads((resources.files(__package__) / "presets" / f"{name_or_path}.toml").read_text())


def _merged(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out
