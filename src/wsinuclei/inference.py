"""Running a trained detector on preprocessed tiles, one at a time or in batches (the GPU path)."""

from __future__ import annotations

import numpy as np
import torch

from .checkpoint import LoadedModel, load_model


class NucleusDetector:
    """A loaded model plus the device it runs on. Tiles go in as preprocessed uint8 HWC arrays (Reinhard-normalised,
    and deconvolved for hematoxylin models: see ``pipeline.read_and_preprocess``); boxes come back in tile pixels
    with calibrated scores.

    ``read_mpp``: the µm/px its tiles are read at, when coarser than the model's own; it sizes the proposal and
    detection budgets once (:meth:`set_read_mpp`). One detector serves one resolution: the budgets live in the
    torch module, so a process running slides at two resolutions holds two detectors (``pipeline.worker``)."""

    def __init__(self, loaded: LoadedModel, device: str = "cpu", backend: str = "auto", read_mpp: float | None = None):
        from .filters import DetectionFilter
        from .models.backends import use_backend

        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        # the trunk on OpenVINO when it is installed and agrees with torch (models/backends.py)
        self.backend = use_backend(self.model, backend, str(self.device), loaded.digest)
        # the model's own rules for nested boxes and specks (preset [postprocess], kept in the model file)
        self.filter = DetectionFilter.from_dict(loaded.config.raw.get("postprocess"))
        self._density, self._budgets = 1.0, None  # see set_read_mpp
        self.set_read_mpp(read_mpp)

    @classmethod
    def from_file(cls, path=None, device: str = "cpu", backend: str = "auto",
                  read_mpp: float | None = None) -> "NucleusDetector":
        return cls(load_model(path, device="cpu"), device, backend, read_mpp)

    def density(self, read_mpp: float | None) -> float:
        """How many times the model's tissue per pixel a tile read at ``read_mpp`` holds (1 at or below the
        model's own µm/px)."""
        return 1.0 if read_mpp is None else max(1.0, (float(read_mpp) / self.loaded.mpp) ** 2)

    @property
    def draws_contours(self) -> bool:
        return self.loaded.config.has_masks

    def predict(self, tiles: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(boxes, scores) per tile."""
        return [(b, s) for b, s, _ in self.predict_instances(tiles)]

    def set_read_mpp(self, read_mpp: float | None) -> None:
        """Size the proposal and detection budgets for tiles read at ``read_mpp``. The preset's budgets are for
        a tile at the model's own µm/px; read coarser (a 20x slide at its own 0.5 µm/px for a 0.25 model), a
        tile of the same pixels holds (read_mpp / mpp)² times the tissue and as many more nuclei, which must
        not be cut off at the budget."""
        density = self.density(read_mpp)
        if density == self._density:
            return  # budgets as they are (a script may have set its own)
        rpn, heads = self.model.rpn, self.model.roi_heads
        if self._budgets is None:  # the budgets at the model's own µm/px, kept to scale from and come back to
            self._budgets = (rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], heads.detections_per_img)
        pre, post, det = self._budgets
        post, det = int(round(post * density)), int(round(det * density))
        rpn._pre_nms_top_n["testing"] = max(pre, post)
        rpn._post_nms_top_n["testing"] = post
        heads.detections_per_img = det
        self._density = density

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
