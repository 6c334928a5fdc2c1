"""Shared fixtures. Tests that need ../shared skip with a reason when it is absent; the core suite runs on
data the tests make."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WSINUCLEI_SHARED", ROOT.parent / "shared"))
MONUSEG = SHARED / "data" / "monuseg"
REFERENCE = SHARED / "reference" / "stain_reference.npz"
SHARED_SVS = SHARED / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"


def need(path: Path):
    """A skip mark for tests that read ``path`` under ../shared: ``@need(PATH)`` above the test. Called inside a
    test body it would build a mark and do nothing (the test would then fail where ../shared is absent), so
    there it raises instead."""
    if os.environ.get("PYTEST_CURRENT_TEST"):
        raise RuntimeError("need() is a decorator: write @need(PATH) above the test, not need(PATH) inside it")
    return pytest.mark.skipif(not path.exists(), reason=f"needs {path} (the shared data folder); not present here")


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """A real fast-preset detector with seeded random weights, saved as a model file: enough to exercise the
    pipeline's plumbing (its boxes are meaningless but deterministic)."""
    import torch

    from wsinuclei import stain
    from wsinuclei.checkpoint import save_model
    from wsinuclei.models import build_detector, load_preset

    torch.manual_seed(0)
    cfg = load_preset("fast")
    cfg.roi_heads["detections_per_img"] = 100
    cfg.rpn["post_nms_top_n_test"] = 200
    model = build_detector(cfg)
    path = tmp_path_factory.mktemp("model") / "random.safetensors"
    save_model(model, cfg, path, target_mu=stain.DEFAULT_TARGET_MU, target_sigma=stain.DEFAULT_TARGET_SIGMA)
    return path


def synthetic_he(h: int, w: int, seed: int = 0, n_nuclei: int = 40, tissue: tuple | None = None):
    """An H&E-like image: pink tissue (optionally only inside ``tissue`` = (x0, y0, x1, y1)) on white glass,
    with dark purple elliptical nuclei. Returns (uint8 image, boxes of the nuclei)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 245, np.uint8)
    x0, y0, x1, y1 = tissue or (0, 0, w, h)
    img[y0:y1, x0:x1] = (230, 160, 200)
    noise = rng.normal(0, 6, (y1 - y0, x1 - x0, 3))
    img[y0:y1, x0:x1] = np.clip(img[y0:y1, x0:x1] + noise, 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    boxes = []
    for _ in range(n_nuclei):
        rx, ry = rng.uniform(5, 10), rng.uniform(5, 10)
        cx, cy = rng.uniform(x0 + 12, x1 - 12), rng.uniform(y0 + 12, y1 - 12)
        m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        img[m] = (90, 50, 140)
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return img, np.array(boxes, dtype=np.float64)


def write_labelled_images(folder: Path, n: int, size: int, seed: int, n_nuclei: int) -> Path:
    """``n`` synthetic images ``im{i}.png`` with instance label images ``im{i}_labels.png`` (each nucleus's
    box filled with its label): a tiny annotated set in the layout ``wsinuclei prepare`` reads."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, boxes = synthetic_he(size, size, seed=seed + i, n_nuclei=n_nuclei)
        Image.fromarray(img).save(folder / f"im{i}.png")
        lab = np.zeros((size, size), np.uint16)
        for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
            lab[y0:y1, x0:x1] = k + 1
        Image.fromarray(lab).save(folder / f"im{i}_labels.png")
    return folder


@pytest.fixture(scope="session")
def pyramid_slide(tmp_path_factory):
    """A generated pyramidal tiled TIFF at 0.25 µm/px with tissue on the left two thirds and glass elsewhere."""
    from wsinuclei.synth import write_pyramid_tiff

    img, boxes = synthetic_he(1500, 2100, seed=1, n_nuclei=150, tissue=(50, 50, 1400, 1450))
    path = tmp_path_factory.mktemp("slides") / "synthetic.tiff"
    write_pyramid_tiff(path, img, mpp=0.25, compression="zlib", min_level_size=300)
    return path, img, boxes


class StubDetector:
    """A detector whose output is known: every dark blob of the (Reinhard-normalised) tile is a nucleus,
    boxed exactly, score 0.9. Pipeline tests that use it see coordinate errors (scaling, offsets, seams)
    that random weights hide. In-process runs only (Dask workers load real model files)."""

    def __init__(self, model_path, mpp=0.25, threshold=85):
        from wsinuclei.checkpoint import load_model

        self.loaded = load_model(model_path)  # a real model file: its metadata, hash and path
        self.loaded.config.mpp = mpp
        self.threshold = threshold
        self.calls = 0

    tiles_at_once = 1  # as a Detector: one tile per call unless --batch-size asks for more
    outlines = False  # True: also give each blob an outline (its box's corners), as a contour model would

    #: True: also type each blob, as a typed model would: 'epithelial' (probability 0.8) when its box is at least
    #: ``big_px`` wide, else 'inflammatory' (0.7), the rest of the probability spread evenly
    types = False
    big_px = 14

    def predict(self, tiles):
        return [(b, s) for b, s, _ in self.predict_instances(tiles)]

    def predict_typed(self, tiles):
        out = []
        for b, s, o in self.predict_instances(tiles):
            probs = None
            if self.types:
                big = (b[:, 2] - b[:, 0]) >= self.big_px
                probs = np.where(big[:, None], [0.8, 0.2 / 3, 0.2 / 3, 0.2 / 3], [0.1, 0.7, 0.1, 0.1])
            out.append((b, s, o, probs))
        return out

    embeddings = False

    def predict_full(self, tiles):
        return [(*r, None) for r in self.predict_typed(tiles)]

    def predict_instances(self, tiles):
        from scipy import ndimage

        out = []
        for t in tiles:
            self.calls += 1
            labels, n = ndimage.label(t.mean(-1) < self.threshold)
            boxes = [(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop) for sl in ndimage.find_objects(labels)]
            b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
            corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1)
            out.append((b, np.full(len(b), 0.9), corners if self.outlines else None))
        return out


@pytest.fixture
def stub_detector(monkeypatch, random_model):
    from wsinuclei.pipeline import worker

    stub = StubDetector(random_model)
    monkeypatch.setattr(worker, "_detector", lambda path, device, backend="auto", read_mpp=None, streams=1,
                        embeddings=False, norm_stats=None, norm_key="": stub)  # every caller looks it up there
    monkeypatch.setattr(worker, "_model_settings", lambda path: stub.loaded)  # what the slide is planned with
    return stub


def detect_in_fresh_process(model_path, tile: np.ndarray, tmp_path: Path) -> dict:
    """``load_detector(model_path)`` and one tile's detection in a new Python process (the conversion cache in
    ``tmp_path/cache``): the detector's class and backend, the nuclei found, and whether torch was imported."""
    import json
    import os
    import subprocess
    import sys

    np.save(tmp_path / "tile.npy", tile)
    code = ("import sys, json, numpy as np; from wsinuclei.inference import load_detector; "
            f"d = load_detector({str(model_path)!r}); (b, s, o), = d.predict_instances([np.load({str(tmp_path / 'tile.npy')!r})]); "
            "print(json.dumps({'kind': type(d).__name__, 'backend': d.backend, 'nuclei': len(b), 'torch': 'torch' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "WSINUCLEI_CACHE": str(tmp_path / "cache")})
    return json.loads(out.stdout.strip().splitlines()[-1])

