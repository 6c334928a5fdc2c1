"""Per-nucleus features (HistomicsTK-compatible names and definitions): ``nuclei.py`` computes them from a
label image and stain channels; ``boundary.py`` traces boundaries as HistomicsTK does."""

from .nuclei import DEFAULT_FAMILIES, FAMILIES, FEATURES_VERSION, compute_nuclei_features, dilate_xor

__all__ = ["DEFAULT_FAMILIES", "FAMILIES", "FEATURES_VERSION", "compute_nuclei_features", "dilate_xor"]
