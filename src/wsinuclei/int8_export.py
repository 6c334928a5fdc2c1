"""Making a star model's INT8 network at export (``wsinuclei export --int8 PREPARED``): NNCF's post-training
quantisation calibrated on crops of the prepared folder's *training* images, checked on its validation images
against float32 at the model's operating point. The model file carries the result (``models/int8.py``: the
format); running it needs OpenVINO alone. NNCF is needed only here (``pip install nncf``), never to run it.

This sits above training (it scores with ``train``'s validation measure), so the model-file code that reads an
INT8 network (``checkpoint`` -> ``models/int8``) never imports training.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .errors import WsinucleiError

#: the INT8 network may score at most this much below float32 on the validation images (mean over sets)
TOLERANCE = 0.01
CALIBRATION_CROPS = 96
CROP = 512


def calibration_inputs(prepared: str | Path, n: int = CALIBRATION_CROPS, seed: int = 0) -> list[np.ndarray]:
    """Network inputs (1, 3, 512, 512), normalised as the runtime normalises tiles: one seeded crop from each
    of up to ``n`` training images of the prepared folder (never its validation or test images)."""
    from .data import load_tiles
    from .models.openvino_star import network_input

    rng = np.random.default_rng(seed)
    tiles = [t for t in load_tiles(prepared, "train") if min(t.image.shape[:2]) >= CROP]
    if not tiles:
        raise WsinucleiError(f"{prepared}: no training images of at least {CROP}x{CROP} px to calibrate INT8 on")
    out = []
    for k in rng.choice(len(tiles), min(n, len(tiles)), replace=False):
        im = tiles[k].image
        y, x = rng.integers(0, im.shape[0] - CROP + 1), rng.integers(0, im.shape[1] - CROP + 1)
        out.append(network_input(im[y : y + CROP, x : x + CROP]))
    return out


def quantize(loaded, prepared: str | Path, n: int = CALIBRATION_CROPS, seed: int = 0) -> tuple[bytes, bytes]:
    """The INT8 network of a loaded star model (weights as they will be stored), as IR bytes (XML, weights)."""
    if not loaded.config.is_star:
        raise WsinucleiError("--int8 applies to star models (a [star_head] preset) only")
    try:
        import nncf
    except ImportError:
        raise WsinucleiError("--int8 needs NNCF to make the network (pip install nncf); running it does not") from None
    import openvino as ov

    from .models.backends import convert_trunk

    calib = calibration_inputs(prepared, n, seed)
    q = nncf.quantize(convert_trunk(loaded.model.backbone), nncf.Dataset(calib), subset_size=len(calib),
                      preset=nncf.QuantizationPreset.PERFORMANCE)
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "int8.xml"
        ov.save_model(q, str(xml), compress_to_fp16=False)
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


def check(loaded, network: tuple[bytes, bytes], prepared: str | Path) -> dict:
    """The INT8 network against float32 (torch) on the prepared folder's validation images, at the model's
    operating point (calibrated score 0.5): validation score (mean over sets, as training reports it) of each,
    and how many of float32's nuclei INT8 finds (F1 at IoU 0.5 between the two)."""
    from .data import load_tiles
    from .evaluate import Counts, count
    from .stain import model_input
    from .train import predict_images, score_predictions
    from .models.openvino_star import OpenVinoStarNet

    tiles = load_tiles(prepared, "val_full")
    if not tiles:
        raise WsinucleiError(f"{prepared}: no validation images to check the INT8 network on")
    images = [model_input(t.image, loaded.input_channels) for t in tiles]
    fp32 = [(b, loaded.calibrate(s)) for b, s in predict_images(loaded.model, images)]
    net = OpenVinoStarNet(network, loaded.config.star_head)
    int8 = [(b.astype(np.float64), loaded.calibrate(s)) for b, s, *_ in net(images)]
    agreement = Counts()
    for (b8, s8), (b32, s32) in zip(int8, fp32):
        agreement = agreement + count(b8, s8, b32[s32 >= 0.5], score_threshold=0.5)
    f32 = score_predictions(tiles, fp32, 0.5)["val_f1"]
    i8 = score_predictions(tiles, int8, 0.5)["val_f1"]
    return {"val_score_fp32": round(float(f32), 4), "val_score_int8": round(float(i8), 4),
            "agreement_f1": round(float(agreement.f1), 4), "images": len(tiles)}


def make(loaded, prepared: str | Path, n: int = CALIBRATION_CROPS) -> tuple[tuple[bytes, bytes], dict]:
    """Quantise and check; refuse a network that scores more than :data:`TOLERANCE` below float32."""
    network = quantize(loaded, prepared, n)  # a clear error where NNCF is missing
    import nncf
    import openvino as ov

    record = {**check(loaded, network, prepared), "calibration_crops": n, "calibration": str(prepared),
              "openvino": ov.__version__, "nncf": nncf.__version__}
    drop = record["val_score_fp32"] - record["val_score_int8"]
    if drop > TOLERANCE:
        raise WsinucleiError(f"the INT8 network scores {drop:.3f} below float32 on validation (limit {TOLERANCE}); "
                             "not stored")
    return network, record
