"""Running a trained detector on preprocessed tiles, one at a time or in batches (the GPU path)."""

from __future__ import annotations

import numpy as np
import torch

from .checkpoint import LoadedModel, load_model


class NucleusDetector:
    """A loaded model plus the device it runs on. Tiles go in as preprocessed uint8 HWC arrays (Reinhard-normalised,
    and deconvolved for hematoxylin models: see ``pipeline.read_and_preprocess``); boxes come back in tile pixels
    with calibrated scores."""

    def __init__(self, loaded: LoadedModel, device: str = "cpu", backend: str = "auto"):
        from .filters import DetectionFilter
        from .models.backends import use_backend

        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        # the trunk on OpenVINO when it is installed and agrees with torch (models/backends.py)
        self.backend = use_backend(self.model, backend, str(self.device), loaded.digest)
        # the model's own rules for nested boxes and specks (preset [postprocess], kept in the model file)
        self.filter = DetectionFilter.from_dict(loaded.config.raw.get("postprocess"))

    @classmethod
    def from_file(cls, path=None, device: str = "cpu", backend: str = "auto") -> "NucleusDetector":
        return cls(load_model(path, device="cpu"), device, backend)

    @property
    def draws_contours(self) -> bool:
        return self.loaded.config.has_masks

    def predict(self, tiles: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(boxes, scores) per tile."""
        return [(b, s) for b, s, _ in self.predict_instances(tiles)]

    @torch.inference_mode()
    def predict_instances(self, tiles: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(boxes, scores, outlines) per tile; outlines (N, rays, 2) in tile pixels for a contour model,
        None for a box model."""
        from .contours import polar_outlines

        if not tiles:
            return []
        batch = [torch.from_numpy(np.ascontiguousarray(t)).to(self.device).permute(2, 0, 1).float().div_(255.0)
                 for t in tiles]
        out = []
        for o in self.model(batch):
            boxes = o["boxes"].float().cpu().numpy().astype(np.float64)
            scores = self.loaded.calibrate(o["scores"].float().cpu().numpy())
            masks = o["masks"].float().cpu().numpy() if "masks" in o else None
            if self.filter.active:
                keep = self.filter.keep(boxes, scores, self.loaded.mpp)
                boxes, scores = boxes[keep], scores[keep]
                masks = None if masks is None else masks[keep]
            outlines = polar_outlines(masks, boxes) if masks is not None else None
            out.append((boxes, scores, outlines))
        return out
