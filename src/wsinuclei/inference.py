"""Running a trained detector on preprocessed tiles, one at a time or in batches (the GPU path)."""

from __future__ import annotations

import numpy as np
import torch

from .checkpoint import LoadedModel, load_model


class NucleusDetector:
    """A loaded model plus the device it runs on. Tiles go in as preprocessed uint8 HWC arrays (Reinhard-normalised,
    and deconvolved for hematoxylin models: see ``pipeline.read_and_preprocess``); boxes come back in tile pixels
    with calibrated scores."""

    def __init__(self, loaded: LoadedModel, device: str = "cpu"):
        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()

    @classmethod
    def from_file(cls, path=None, device: str = "cpu") -> "NucleusDetector":
        return cls(load_model(path, device="cpu"), device)

    @torch.inference_mode()
    def predict(self, tiles: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        if not tiles:
            return []
        batch = [torch.from_numpy(np.ascontiguousarray(t)).to(self.device).permute(2, 0, 1).float().div_(255.0)
                 for t in tiles]
        out = self.model(batch)
        return [(o["boxes"].float().cpu().numpy().astype(np.float64),
                 self.loaded.calibrate(o["scores"].float().cpu().numpy()))
                for o in out]
