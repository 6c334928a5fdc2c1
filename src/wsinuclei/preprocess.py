"""The one preprocessing path shared by training and inference: Reinhard (slide-wide statistics) to the
model's target, then the model's input channels (normalised RGB, or the hematoxylin stain stacked x3)."""

from __future__ import annotations

import numpy as np

from . import stain


def preprocess_tile(
    rgb: np.ndarray, src_mu, src_sigma, target_mu, target_sigma, input_channels: str = "rgb"
) -> np.ndarray:
    """uint8 RGB tile -> uint8 (H, W, 3) network input."""
    normalised = stain.reinhard(rgb[..., :3], target_mu, target_sigma, src_mu=src_mu, src_sigma=src_sigma)
    if input_channels == "rgb":
        return normalised
    if input_channels == "hematoxylin":
        return stain.hematoxylin_channel(normalised)
    raise ValueError(f"unknown input_channels '{input_channels}'")
