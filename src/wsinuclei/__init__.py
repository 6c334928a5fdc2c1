"""wsinuclei: find every cell nucleus in a whole-slide H&E image."""

__version__ = "0.3.0"
