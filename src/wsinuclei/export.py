"""What a model file carries when it is shipped (``wsinuclei export``): its detection filter, its µm/px range,
and its operating point, fitted on the validation images of a prepared folder."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import LoadedModel, fit_score_calibration, shift_scores
from .errors import WsinucleiError


def set_filter(m: LoadedModel, nested: float | None = None, min_area_um2: float | None = None) -> None:
    """Store the filter rules (``filters.DetectionFilter``) in the model's preset; None keeps a rule as it is."""
    if nested is None and min_area_um2 is None:
        return
    post = dict(m.config.raw.get("postprocess") or {})
    if nested is not None:
        if not 0 <= nested < 1:
            raise WsinucleiError(f"--nested must be in [0, 1), got {nested}")
        post["nested"] = nested
    if min_area_um2 is not None:
        if min_area_um2 < 0:
            raise WsinucleiError(f"--min-area-um2 must be >= 0, got {min_area_um2}")
        post["min_area_um2"] = min_area_um2
    m.config.raw["postprocess"] = post


def set_star_nms(m: LoadedModel, iou: float) -> None:
    """Store a star model's NMS threshold (box IoU above which the lower-scoring polygon is dropped)."""
    if not m.config.is_star:
        raise WsinucleiError("--nms applies to star models (a [star_head] preset) only")
    if not 0 < iou <= 1:
        raise WsinucleiError(f"--nms must be in (0, 1], got {iou}")
    m.config.star_head["nms_thresh"] = iou
    m.model.decoding.nms_thresh = iou


def single_resolution(m: LoadedModel) -> None:
    """Drop the preset's µm/px range: every slide is then read at the model's own µm/px."""
    m.config.raw.pop("mpp_range", None)


def calibrate(m: LoadedModel, prepared: str | Path) -> dict:
    """Fit the operating point on the boxed validation images of a prepared folder, after the model's own
    filter (as at inference), by the mean F1 over sets; lower the detector's raw floor so calibrated scores
    still reach 0.1. Returns the calibration record to store in the model file's ``extra``."""
    from .data import load_tiles
    from .filters import DetectionFilter
    from .stain import model_input
    from .train import predict_images

    tiles = [t for t in load_tiles(prepared, "val_full") if t.points is None]  # boxed sets only
    if not tiles:
        raise WsinucleiError(f"{prepared}: no validation images with boxes to calibrate on")
    preds = predict_images(m.model, [model_input(t.image, m.input_channels) for t in tiles])
    filt = DetectionFilter.from_dict(m.config.raw.get("postprocess"))
    preds = [(b[k], s[k]) for (b, s), t in zip(preds, tiles) for k in [filt.keep(b, s, t.mpp or m.mpp)]]
    cal = fit_score_calibration(preds, [t.boxes for t in tiles], groups=[t.set for t in tiles])
    raw_floor = float(shift_scores([0.1], -cal["logit_shift"])[0])
    floor = round(min(0.1, raw_floor), 4)
    if m.config.is_star:  # the dense head's candidate floor (a loaded model is rebuilt from the preset)
        m.config.star_head["score_thresh"] = m.model.decoding.score_thresh = floor
    else:
        m.config.roi_heads["score_thresh"] = floor
    return {**cal, "images": [t.name for t in tiles]}


def make_int8(m: LoadedModel, prepared: str | Path, half: bool = True) -> dict:
    """Quantise a star model's network to INT8 (``models/int8.py``) from the weights as they will be stored
    (float16-rounded unless ``half`` is False), keep it in ``m.int8``; returns the check record."""
    from . import int8_export

    if half:  # the stored weights are float16: quantise what will be shipped, not what was trained
        state = m.model.state_dict()
        m.model.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in state.items()})
    m.int8, record = int8_export.make(m, prepared)
    return record
