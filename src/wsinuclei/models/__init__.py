"""Detector architectures (torchvision Faster R-CNN parts) and their presets."""

from .builder import (  # noqa: F401
    DetectorConfig,
    build_detector,
    count_parameters,
    freeze_before_fine_tune_block,
    list_presets,
    load_preset,
    set_num_units,
)
