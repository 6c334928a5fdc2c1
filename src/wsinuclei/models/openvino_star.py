"""A star model (``star.py``) run by OpenVINO alone, without importing torch or torchvision.

A star model's network is one module (trunk, FPN, dense head) and its decoding is numpy
(``star_decode.py``), so once ``backends.use_backend`` has converted the network and checked it against
torch (a mark in the conversion cache, ``ir_cache.py``), nothing else needs torch. Importing torch and
torchvision takes about 2.5 s of a whole-slide run's start on a 2-core machine (BENCHMARKS.md); this runtime
takes a fraction of that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .config import IMAGE_MEAN, IMAGE_STD
from .star_decode import decode_star, ray_directions, star_stride


# 0-255 -> the network's normalised input in one multiply-add per value
_SCALE = (1.0 / (255.0 * np.asarray(IMAGE_STD, np.float32)))[:, None, None]
_SHIFT = (np.asarray(IMAGE_MEAN, np.float32) / np.asarray(IMAGE_STD, np.float32))[:, None, None]


def network_input(tile: np.ndarray) -> np.ndarray:
    """(1, 3, H', W') float32 from a uint8 HWC tile: normalised and zero-padded to multiples of 32, as
    ``StarNet.batch`` does in torch."""
    h, w = tile.shape[:2]
    x = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
    x[0, :, :h, :w] = np.transpose(tile, (2, 0, 1)) * _SCALE - _SHIFT
    return x


class OpenVinoStarNet:
    """Tiles (uint8 HWC, the network's input colours) in; per tile boxes, raw scores and outlines (N, rays,
    2) out, in tile pixels, as ``star.StarNet`` gives them in eval mode."""

    def __init__(self, xml: Path, head: dict[str, Any], threads: int | None = None):
        import openvino as ov

        self.xml = Path(xml)
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1), "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        self.stride = star_stride(head)
        self.n_rays = int(head.get("n_rays", 32))
        self.dist_scale = float(head.get("dist_scale", 8.0))
        self.score_thresh = float(head.get("score_thresh", 0.3))
        self.nms_thresh = float(head.get("nms_thresh", 0.4))
        self.detections_per_img = int(head.get("detections_per_img", 5000))
        self.ray_dirs = ray_directions(self.n_rays)

    def __call__(self, tiles: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        out = []
        for tile in tiles:
            res = self.compiled(network_input(tile))
            prob, dist = np.asarray(res[0]), np.asarray(res[1])  # StarTrunk's outputs, in order
            out.append(decode_star(prob[0, 0], dist[0], tile.shape[:2], stride=self.stride,
                                   dist_scale=self.dist_scale, score_thresh=self.score_thresh,
                                   nms_thresh=self.nms_thresh, max_detections=self.detections_per_img,
                                   ray_dirs=self.ray_dirs))
        return out
