"""Model files: weights in safetensors (no pickle: loading runs no code), everything else in its metadata.

A model file carries what inference needs: the preset, µm/px, input channels, the Reinhard target, the
command that trained it and its validation figures. ``load_model`` rebuilds the detector from that alone;
``read_model_file`` reads the settings without the weights or torch (the torch-free OpenVINO runtime of star
models, ``inference.load_detector``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from .errors import WsinucleiError
from .models import DetectorConfig

#: the shipped default: star-convex nuclear contours from a dense head (preset `star`); the Mask R-CNN contour
#: model ("Model 2", CONTOURS_MODEL) and the box-only model (FAST_MODEL, the baseline BENCHMARKS.md compares
#: against) stay shipped, for `--model` with their paths
DEFAULT_MODEL = Path(__file__).parent / "weights" / "star_default.safetensors"
CONTOURS_MODEL = Path(__file__).parent / "weights" / "contours_default.safetensors"
FAST_MODEL = Path(__file__).parent / "weights" / "fast_default.safetensors"


def save_model(model, config: DetectorConfig, path: str | Path, *, target_mu, target_sigma,
               half: bool = True, extra: dict[str, Any] | None = None, int8: tuple[bytes, bytes] | None = None) -> Path:
    """Write a model file atomically. ``half`` stores float16 weights (half the size; loaded back as
    float32, so inference arithmetic is unchanged apart from the rounding of the weights). ``int8``: a star
    model's INT8 network as IR bytes (``models/int8.py``), carried along."""
    import torch
    from safetensors.torch import save_file

    from .models import int8 as int8_network

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    extra_meta = {}
    if int8 is not None:
        extra_meta[int8_network.FLOAT_DIGEST_KEY] = int8_network.float_digest(
            {k: (v.view(torch.int16) if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()})
        state[int8_network.WEIGHTS_KEY] = torch.frombuffer(bytearray(int8[1]), dtype=torch.uint8)
        extra_meta[int8_network.XML_KEY] = int8[0].decode()
    meta = {
        "format": "wsinuclei-model-1",
        "preset": json.dumps(config.to_dict()),
        "mpp": str(config.mpp),
        "input_channels": config.input_channels,
        "target_mu": json.dumps([float(v) for v in target_mu]),
        "target_sigma": json.dumps([float(v) for v in target_sigma]),
        "extra": json.dumps(extra or {}),
        **extra_meta,
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # a model file others may read, as any file this user writes (not 0600)
    os.replace(tmp, path)
    return path


class LoadedModel:
    """A detector with the settings it was trained with."""

    def __init__(self, model, config: DetectorConfig, target_mu, target_sigma, extra: dict, path: Path,
                 digest: str = "unsaved", int8: tuple[bytes, bytes] | None = None, type_head=None):
        self.model, self.config = model, config
        #: a type head on the frozen network (``models/type_head.py``: ``wsinuclei train-types``), or None
        self.type_head = type_head
        #: a star model's INT8 network (IR XML and weights, ``models/int8.py``), when the file carries one
        self.int8 = int8
        self.target_mu, self.target_sigma = target_mu, target_sigma
        self.extra, self.path = extra, path
        #: SHA-1 of the file's bytes, taken from the one read that loaded it (names compiled backends' caches)
        self.digest = digest

    @property
    def logit_shift(self) -> float:
        return float(self.extra.get("score_calibration", {}).get("logit_shift", 0.0))

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """Raw detector scores -> calibrated scores (see :func:`fit_score_calibration`)."""
        return shift_scores(scores, self.logit_shift)

    @property
    def mpp(self) -> float:
        return self.config.mpp

    @property
    def input_channels(self) -> str:
        return self.config.input_channels


def shipped_models() -> list[dict[str, Any]]:
    """The model files in the package, the default first: name, path, size, preset, whether it outlines, types
    or carries an INT8 network, and its headline MoNuSeg test figures (``weights/models.toml``, as its model
    card reports them). Reads each file's header only (no torch)."""
    import tomllib

    folder = DEFAULT_MODEL.parent
    figures = tomllib.loads((folder / "models.toml").read_text())
    files = sorted(folder.glob("*.safetensors"), key=lambda f: (f != DEFAULT_MODEL, f.name))
    out = []
    for f in files:
        loaded, data = read_model_file(f)
        cfg = loaded.config
        star = getattr(cfg, "star_head", None) or {}
        out.append({"name": f.stem, "path": str(f), "default": f == DEFAULT_MODEL, "megabytes": len(data) / 1e6,
                    "preset": cfg.name, "mpp": cfg.mpp, "int8": loaded.int8 is not None,
                    "types": int(star.get("n_types", 0) or 0) if isinstance(star, dict) else 0,
                    **figures.get(f.stem, {})})
    return out


def check_device(device: str) -> str:
    """Refuse a CUDA device on a machine without one, in words rather than a CUDA traceback."""
    if device.startswith("cuda") and not _cuda_available():
        raise WsinucleiError(f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise WsinucleiError(f"--device {device}: expected cpu, cuda or cuda:N")
    return device


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_model_path(path: str | Path | None) -> Path:
    """``--model``'s value as a file: None is the default model; a bare name that is not a file here but is a
    shipped model's (``wsinuclei models`` lists them, e.g. ``star_types``) is that packaged file; anything else
    is the path as given."""
    if not path:
        return DEFAULT_MODEL
    path = Path(path)
    shipped = DEFAULT_MODEL.parent / f"{path.name}.safetensors"
    if not path.exists() and path.parent == Path(".") and not path.suffix and shipped.is_file():
        return shipped
    return path


def read_model_file(path: str | Path | None = None) -> tuple[LoadedModel, bytes]:
    """A model file's settings (a :class:`LoadedModel` without its network) and the file's bytes, without
    torch: the header is JSON, the weights are not parsed."""
    path = resolve_model_path(path)
    if not path.is_file():
        if path == DEFAULT_MODEL:
            raise WsinucleiError(f"no model installed (expected {path}); train one with 'wsinuclei train'")
        raise WsinucleiError(f"{path}: is a folder, not a model file (a .safetensors file)" if path.is_dir()
                             else f"{path}: no such model file")
    try:
        from safetensors import safe_open

        from .models import int8
        from .models import type_head as heads

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            network = int8.read(fh, meta)
            tensors = {k: fh.get_tensor(k) for k in fh.keys() if k != int8.WEIGHTS_KEY}
        head_tensors = {k: tensors.pop(k) for k in heads.KEYS if k in tensors}  # not the network's weights
        data = path.read_bytes()
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise WsinucleiError(f"{path}: not a readable model file ({exc})") from None
    if meta.get("format") != "wsinuclei-model-1":
        raise WsinucleiError(f"{path}: not a wsinuclei model file (no wsinuclei metadata)")
    bad = next((k for k, v in {**tensors, **head_tensors}.items() if v.dtype.kind == "f" and not np.isfinite(v).all()),
               None)
    if bad is not None:
        raise WsinucleiError(f"{path}: its weights hold NaN or infinite values ({bad}); not a usable model")
    if network is not None and int8.FLOAT_DIGEST_KEY in meta and meta[int8.FLOAT_DIGEST_KEY] != int8.float_digest(tensors):
        raise WsinucleiError(f"{path}: its INT8 network was not made from the float weights beside it; re-export "
                             "the model (wsinuclei export --int8)")
    config = DetectorConfig.from_dict(json.loads(meta["preset"]))
    try:
        head = heads.TypeHead.from_tensors(head_tensors, config.raw)
    except ValueError as exc:
        raise WsinucleiError(f"{path}: its type head does not fit together ({exc})") from None
    if head is not None and not config.is_star:
        raise WsinucleiError(f"{path}: a type head needs a star network (it reads the star head's features)")
    return LoadedModel(None, config, json.loads(meta["target_mu"]), json.loads(meta["target_sigma"]),
                       json.loads(meta.get("extra", "{}")), path, hashlib.sha1(data).hexdigest(), network,
                       head), data


def save_with_type_head(parent: str | Path | None, head, out: str | Path, record: dict) -> Path:
    """A model file that is ``parent`` (its tensors and metadata, the INT8 network included, unchanged) with
    ``head`` (a ``models.type_head.TypeHead``) added: its tensors, its class names in the preset's
    ``[type_head]``, and ``record`` (how it was trained) in the file's ``extra`` under ``type_head``. Written
    atomically."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from .models import type_head as heads

    parent = resolve_model_path(parent)
    read_model_file(parent)  # a readable wsinuclei model file, or its clear error
    with safe_open(str(parent), framework="numpy") as fh:
        meta = dict(fh.metadata() or {})
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if k not in heads.KEYS}
    tensors[heads.WEIGHT_KEY] = np.ascontiguousarray(head.weight, np.float32)
    tensors[heads.BIAS_KEY] = np.ascontiguousarray(head.bias, np.float32)
    preset = json.loads(meta["preset"])
    preset["type_head"] = {"names": list(head.names), "input": "embedding"}
    meta["preset"] = json.dumps(preset)
    extra = json.loads(meta.get("extra", "{}"))
    extra["type_head"] = record
    meta["extra"] = json.dumps(extra)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return out


def load_model(path: str | Path | None = None, device: str = "cpu") -> LoadedModel:
    check_device(device)
    return with_network(*read_model_file(path), device=device)


def with_network(loaded: LoadedModel, data: bytes, device: str = "cpu") -> LoadedModel:
    """Build the network of a model read by :func:`read_model_file` (its bytes, not read again) on ``device``."""
    from safetensors.torch import load as load_safetensors

    from .models import build_detector, int8

    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise WsinucleiError(f"{loaded.path}: not a readable model file ({exc})") from None
    state.pop(int8.WEIGHTS_KEY, None)  # the INT8 network's, not the torch model's
    from .models.type_head import KEYS

    for k in KEYS:  # a type head's: applied to the embeddings after the network (inference.Detector)
        state.pop(k, None)
    model = build_detector(loaded.config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        problems = [line.strip().rstrip(".") for line in str(exc).splitlines()[1:] if line.strip()]
        first = problems[0] if problems else str(exc).splitlines()[0]
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise WsinucleiError(f"{loaded.path}: weights do not fit preset '{loaded.config.name}' ({first}{more})") from None
    loaded.model = model.eval().to(device)
    return loaded


def shift_scores(scores: np.ndarray, logit_shift: float) -> np.ndarray:
    """Move scores by a constant in logit space: monotone, so rankings, NMS and AP are unchanged."""
    scores = np.asarray(scores, dtype=np.float64)
    if logit_shift == 0.0:
        return scores
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    return 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) + logit_shift)))


def fit_score_calibration(preds, truths, target: float = 0.5, groups=None) -> dict:
    """Choose the operating point on held-out images: the score threshold that maximises F1@0.5, and the logit
    shift that moves it to ``target`` (0.5), so a user's "score >= 0.5" is the model's best cut.

    ``preds``: [(boxes, raw_scores)], ``truths``: [boxes], for the validation images only. With ``groups`` (a set
    name per image) the threshold maximises the mean over sets of each set's pooled F1, so one large set does
    not choose the cut for the others; ``per_set`` then gives each set's F1, precision and recall there.
    """
    from .evaluate import count

    groups = list(groups) if groups is not None else [""] * len(preds)
    names = sorted(set(groups))
    best = (-1.0, 0.5, {})
    for t in np.round(np.arange(0.05, 0.951, 0.01), 2):
        per = {}
        for (b, s), tb, g in zip(preds, truths, groups):
            ci = count(b, s, tb, score_threshold=float(t))
            per[g] = ci if g not in per else per[g] + ci
        score = float(np.mean([per[g].f1 for g in names]))
        if score > best[0]:
            best = (score, float(t), per)
    f1, t, per = best
    shift = float(np.log(target / (1 - target)) - np.log(t / (1 - t)))
    out = {"logit_shift": shift, "raw_threshold": t, "validation_f1": f1}
    if len(names) > 1 or names != [""]:
        out["per_set"] = {g: {"f1": round(per[g].f1, 4), "precision": round(per[g].precision, 4),
                              "recall": round(per[g].recall, 4)} for g in names}
    return out
