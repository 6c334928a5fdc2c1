"""Detector architectures (torchvision Faster/Mask R-CNN parts, and a dense star-convex head) and their presets.

Presets (``config``) load without torch; the builders import torch and torchvision on first use, so code that
only reads a model's settings does not pay for them.
"""

from .config import DetectorConfig, list_presets, load_preset  # noqa: F401

_BUILDER = ("build_detector", "count_parameters", "freeze_before_fine_tune_block", "set_num_units")


def __getattr__(name):
    if name in _BUILDER:
        from . import builder

        return getattr(builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
