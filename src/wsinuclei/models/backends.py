"""Inference backends for the detector's trunk (backbone + FPN): torch, or OpenVINO on the CPU when it is
installed and gives the same feature maps. The detection heads (RPN, RoI heads, mask head) stay in torch; a
star model's trunk is its whole network (trunk, FPN and dense head), so all of it runs on OpenVINO, and once a
conversion has been checked here, later starts run it without torch (``openvino_star.py``).

``auto`` (the default) takes OpenVINO when ``import openvino`` works, the device is the CPU and the compiled
trunk reproduces torch's feature maps on a check input; otherwise torch, silently. ``openvino`` insists (a
clear error when it cannot), ``torch`` never tries. The converted model is cached on disk per model file, so a
process (a Dask worker, a Slurm job) pays the conversion once per machine, not per start.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np
import torch

from ..errors import WsinucleiError
from .ir_cache import ir_key, ir_path, mark_agreed
from .openvino_star import ThreadInfer

BACKENDS = ("auto", "torch", "openvino")
#: feature maps must agree with torch's to this, relative to their largest value, on the check input
AGREEMENT = 1e-4
_log = logging.getLogger(__name__)


class OpenVinoTrunk(torch.nn.Module):
    """Stands in for ``model.backbone``: same input, same OrderedDict of feature maps, computed by OpenVINO."""

    def __init__(self, compiled, names: list[str], out_channels: int):
        super().__init__()
        self.compiled = compiled
        self.names = names
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        out = self.compiled(x.detach().to("cpu", torch.float32).contiguous().numpy())
        return OrderedDict((n, torch.from_numpy(np.asarray(out[i]))) for i, n in enumerate(self.names))


def compile_trunk(backbone: torch.nn.Module, key: str, threads: int | None = None,
                  features: bool = False) -> OpenVinoTrunk:
    """Convert (or load the cached conversion of) a trunk and compile it for the CPU. ``features``: a star
    network's head features as one more output, ``features`` (``openvino_star.with_feature_output``)."""
    import openvino as ov

    backbone = backbone.eval().float()
    with torch.no_grad():
        names = list(backbone(_example_input()).keys())
    xml = ir_path(key)
    core = ov.Core()
    if xml.is_file():
        model = core.read_model(str(xml))
    else:
        model = convert_trunk(backbone)
        xml.parent.mkdir(parents=True, exist_ok=True)
        tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    if features:
        from .openvino_star import with_feature_output

        model = with_feature_output(model)
        names = names + ["features"]
    config = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "INFERENCE_PRECISION_HINT": "f32"}
    return OpenVinoTrunk(ThreadInfer(core.compile_model(model, "CPU", config)), names, backbone.out_channels)


def _example_input() -> torch.Tensor:
    return torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))


def convert_trunk(backbone: torch.nn.Module):
    """The trunk as an OpenVINO model (float32, any batch and size)."""
    import warnings

    import openvino as ov

    with warnings.catch_warnings():  # torch's tracer, which OpenVINO uses, warns about itself
        warnings.simplefilter("ignore")
        return ov.convert_model(backbone.eval().float(), example_input=_example_input(),
                                input=[ov.PartialShape([-1, 3, -1, -1])])


def trunk_agrees(backbone: torch.nn.Module, trunk: OpenVinoTrunk, size: int = 320) -> float:
    """Largest difference between the two trunks' feature maps on a seeded input, relative to the largest
    value (0 = identical)."""
    x = torch.rand(1, 3, size, size + 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = backbone(x)
    got = trunk(x)
    return max(float((ref[k] - got[k]).abs().max() / max(1e-12, float(ref[k].abs().max()))) for k in ref)


def use_backend(model: torch.nn.Module, backend: str, device: str, model_key: str, features: bool = False) -> str:
    """Put the chosen backend in place (``model.backbone`` replaced for OpenVINO); returns its name.
    ``features``: a star network that returns its head's features too (embeddings)."""
    if backend not in BACKENDS:
        raise WsinucleiError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    if not str(device).startswith("cpu"):
        if backend == "openvino":
            raise WsinucleiError("--backend openvino runs on the CPU; with --device cuda leave the backend at auto or torch")
        return "torch"
    try:
        import openvino  # noqa: F401
    except ImportError:
        if backend == "openvino":
            raise WsinucleiError("--backend openvino: OpenVINO is not installed (pip install openvino)") from None
        return "torch"
    key = ir_key(model_key, openvino.__version__)
    try:
        trunk = compile_trunk(model.backbone, key, features=features)
        diff = trunk_agrees(model.backbone, trunk)
    except Exception as exc:  # a conversion OpenVINO cannot do: torch it is
        if backend == "openvino":
            raise WsinucleiError(f"--backend openvino: the model could not be converted ({exc})") from None
        _log.warning("OpenVINO could not convert the trunk (%s); using torch", exc)
        return "torch"
    if diff > AGREEMENT:
        if backend == "openvino":
            raise WsinucleiError(f"--backend openvino: feature maps differ from torch's by {diff:.1e} (limit {AGREEMENT:g})")
        _log.warning("OpenVINO's feature maps differ from torch's by %.1e; using torch", diff)
        return "torch"
    mark_agreed(key, diff)  # a later start may run this conversion without torch (openvino_star.py)
    model.backbone = trunk
    return "openvino"
