"""Running a trained detector on preprocessed tiles, one at a time or in batches (the GPU path).

:func:`load_detector` picks how: a star model on the CPU runs on OpenVINO alone (:class:`OpenVinoStarDetector`,
no torch import) with the INT8 network its file carries, or with its float32 conversion once that has been
checked against torch; every other model, and a star model's first float32 run on a machine, runs in torch
(:class:`NucleusDetector`, with the trunk on OpenVINO where it agrees).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import LoadedModel, load_model, read_model_file, with_network


class Detector:
    """What every detector does with its network's raw output: calibrated scores, the model's own filter
    (preset ``[postprocess]``, kept in the model file), outlines. Tiles go in as preprocessed uint8 HWC arrays
    (Reinhard-normalised, and deconvolved for hematoxylin models: see ``pipeline.read_and_preprocess``);
    boxes and outlines come back in tile pixels.

    ``read_mpp``: the µm/px its tiles are read at, when coarser than the model's own; it sizes the detection
    budgets once (:meth:`set_read_mpp`). One detector serves one resolution: a process running slides at two
    resolutions holds two detectors (``pipeline.worker``)."""

    backend = "torch"
    tiles_at_once = 1  # tiles a call to predict_instances runs at the same time (OpenVINO streams)

    def __init__(self, loaded: LoadedModel):
        from .filters import DetectionFilter

        self.loaded = loaded
        self.filter = DetectionFilter.from_dict(loaded.config.raw.get("postprocess"))
        self._density, self._budgets = 1.0, None  # see set_read_mpp

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

    @property
    def type_names(self) -> tuple[str, ...] | None:
        """The names of the model's types, in the order of its type probabilities; None for an untyped model."""
        from .nucleus_types import model_type_names

        return model_type_names(self.loaded.config)

    def predict_typed(self, tiles: list[np.ndarray]) -> list[tuple]:
        """(boxes, scores, outlines, type probabilities (N, types) or None) per tile."""
        return [r[:4] for r in self.predict_full(tiles)]

    #: whether :meth:`predict_full` gives each nucleus' embedding (a star model loaded with ``embeddings``)
    embeddings = False

    def predict_full(self, tiles: list[np.ndarray]) -> list[tuple]:
        """(boxes, scores, outlines, type probabilities or None, embeddings (N, C) float32 or None) per tile."""
        return [(b, s, o, None, None) for b, s, o in self.predict_instances(tiles)]

    def set_read_mpp(self, read_mpp: float | None) -> None:
        """Size the budgets for tiles read at ``read_mpp``. The preset's budgets are for a tile at the model's
        own µm/px; read coarser (a 20x slide at its own 0.5 µm/px for a 0.25 model), a tile of the same pixels
        holds (read_mpp / mpp)² times the tissue and as many more nuclei, which must not be cut off."""
        density = self.density(read_mpp)
        if density == self._density:
            return  # budgets as they are (a script may have set its own)
        if self._budgets is None:  # the budgets at the model's own µm/px, kept to scale from and come back to
            self._budgets = self._get_budgets()
        self._set_budgets(self._budgets, density)
        self._density = density

    def at_read_mpp(self, read_mpp: float | None) -> "Detector | None":
        """This detector for tiles read at ``read_mpp``, sharing its network, where that is safe; None where it
        is not (a torch model's budgets live in the shared module), and the caller loads another."""
        return None

    def _get_budgets(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _set_budgets(self, budgets: tuple[int, ...], density: float) -> None:
        raise NotImplementedError

    def predict_instances(self, tiles: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(boxes, scores, outlines) per tile; outlines (N, rays, 2) in tile pixels for a contour model (traced
        from a mask head's masks, or drawn by a star head), None for a box model."""
        raise NotImplementedError

    def _finish(self, boxes, raw_scores, outlines=None, masks=None, type_probs=None, embeddings=None):
        """Calibrate, filter, and trace a mask head's masks into outlines: (boxes, scores, outlines, type_probs,
        embeddings)."""
        from .contours import polar_outlines

        boxes = np.asarray(boxes, np.float64)
        scores = self.loaded.calibrate(np.asarray(raw_scores, np.float32))
        outlines = None if outlines is None else np.asarray(outlines, np.float64)
        type_probs = None if type_probs is None else np.asarray(type_probs, np.float32)
        embeddings = None if embeddings is None else np.asarray(embeddings, np.float32)
        if self.filter.active:
            keep = self.filter.keep(boxes, scores, self.loaded.mpp)
            boxes, scores = boxes[keep], scores[keep]
            masks = None if masks is None else masks[keep]
            outlines = None if outlines is None else outlines[keep]
            type_probs = None if type_probs is None else type_probs[keep]
            embeddings = None if embeddings is None else embeddings[keep]
        if masks is not None:
            outlines = polar_outlines(masks, boxes)
        if self.loaded.type_head is not None and embeddings is not None:  # types from the head on the embeddings
            type_probs = self.loaded.type_head.probabilities(embeddings)
        return boxes, scores, outlines, type_probs, embeddings


class NucleusDetector(Detector):
    """A model in torch, on its device; the trunk (a star model's whole network) on OpenVINO when it is
    installed and agrees with torch (models/backends.py). ``embeddings``: a star model also gives each nucleus'
    embedding (:meth:`predict_full`)."""

    def __init__(self, loaded: LoadedModel, device: str = "cpu", backend: str = "auto", read_mpp: float | None = None,
                 embeddings: bool = False):
        import torch

        from .models.backends import use_backend

        super().__init__(loaded)
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.embeddings = (bool(embeddings) or loaded.type_head is not None) and loaded.config.is_star
        self.backend = use_backend(self.model, backend, str(self.device), loaded.digest, features=self.embeddings)
        if self.embeddings and self.backend == "torch":
            self.model.backbone.emit_features = True
        self.set_read_mpp(read_mpp)

    @classmethod
    def from_file(cls, path=None, device: str = "cpu", backend: str = "auto",
                  read_mpp: float | None = None, embeddings: bool = False) -> "NucleusDetector":
        return cls(load_model(path, device="cpu"), device, backend, read_mpp, embeddings)

    def _get_budgets(self):
        if self.loaded.config.is_star:  # a dense head has no proposals: only the cap on detections scales
            return (self.model.decoding.max_detections,)
        rpn, heads = self.model.rpn, self.model.roi_heads
        return (rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"], heads.detections_per_img)

    def _set_budgets(self, budgets, density):
        if self.loaded.config.is_star:
            self.model.decoding.max_detections = int(round(budgets[0] * density))
            return
        pre, post, det = budgets
        post, det = int(round(post * density)), int(round(det * density))
        rpn = self.model.rpn
        rpn._pre_nms_top_n["testing"] = max(pre, post)
        rpn._post_nms_top_n["testing"] = post
        self.model.roi_heads.detections_per_img = det

    def predict_instances(self, tiles):
        return [r[:3] for r in self.predict_full(tiles)]

    def predict_full(self, tiles):
        import torch

        if not tiles:
            return []
        batch = [torch.from_numpy(np.ascontiguousarray(t)).to(self.device).permute(2, 0, 1).float().div_(255.0)
                 for t in tiles]
        with torch.inference_mode():
            outputs = self.model(batch)
        out = []
        for o in outputs:
            out.append(self._finish(
                o["boxes"].float().cpu().numpy(), o["scores"].float().cpu().numpy(),
                outlines=o["outlines"].float().cpu().numpy() if "outlines" in o else None,
                masks=o["masks"].float().cpu().numpy() if "masks" in o else None,
                type_probs=o["type_probs"].float().cpu().numpy() if "type_probs" in o else None,
                embeddings=o["embeddings"].float().cpu().numpy() if "embeddings" in o else None))
        return out


class OpenVinoStarDetector(Detector):
    """A star model on OpenVINO alone (models/openvino_star.py): no torch in the process. Its network: the
    checked float32 conversion (an IR path) or the INT8 network the model file carries (IR bytes)."""

    backend = "openvino"

    def __init__(self, loaded: LoadedModel, network: Path | tuple[bytes, bytes], read_mpp: float | None = None,
                 threads: int | None = None, streams: int = 1, embeddings: bool = False, norm_stats=None):
        from .models.openvino_star import OpenVinoStarNet

        super().__init__(loaded)
        self.net = OpenVinoStarNet(network, loaded.config.star_head, threads, streams, embeddings, norm_stats)
        self.embeddings = self.net.embeddings
        self.tiles_at_once = self.net.streams
        self.set_read_mpp(read_mpp)

    def at_read_mpp(self, read_mpp: float | None) -> "OpenVinoStarDetector":
        """This detector for tiles read at ``read_mpp``: the same compiled network (no second read or compile of
        the model; inference is thread-safe, ``openvino_star.ThreadInfer``), its own budgets."""
        import copy
        import dataclasses

        twin = copy.copy(self)
        twin.net = copy.copy(self.net)
        twin.net.decoding = dataclasses.replace(self.net.decoding)
        twin.net.decoding.max_detections = self._own_budgets()[0]
        twin._density, twin._budgets = 1.0, None
        twin.set_read_mpp(read_mpp)
        return twin

    def _own_budgets(self) -> tuple[int, ...]:
        """The budgets at the model's own µm/px, whatever this detector was set to."""
        return self._budgets if self._budgets is not None else self._get_budgets()

    def _get_budgets(self):
        return (self.net.decoding.max_detections,)

    def _set_budgets(self, budgets, density):
        self.net.decoding.max_detections = int(round(budgets[0] * density))

    def predict_instances(self, tiles):
        return [r[:3] for r in self.predict_full(tiles)]

    def predict_full(self, tiles):
        return [self._finish(b, s, outlines=o, type_probs=t, embeddings=e) for b, s, o, t, e in self.net(tiles)]


def load_detector(path=None, device: str = "cpu", backend: str = "auto", read_mpp: float | None = None,
                  streams: int = 1, embeddings: bool = False, norm_stats=None) -> Detector:
    """The detector for a model file, by ``backend`` (:data:`BACKENDS`):

    - ``auto``: a star model on the CPU runs its INT8 network on OpenVINO where the file carries one
      (``export --int8``) and OpenVINO reads it; else its float32 network on OpenVINO alone where a conversion
      of this very file was checked against torch on this machine; else :class:`NucleusDetector` (whose
      OpenVINO conversion, when it agrees, lets the next start take the float32 path).
    - ``openvino-int8``: the INT8 network or a clear error; ``openvino``: float32 on OpenVINO (as torch gives
      it) or a clear error; ``torch``: torch.

    ``streams``: for an OpenVINO network, how many tiles of one call run at once (``OpenVinoStarNet``).
    ``embeddings``: a star model gives each nucleus' embedding too (``Detector.predict_full``); the other
    outputs are the same as without (a clear error for a model of another kind).
    ``norm_stats``: a slide's normalisation statistics (``models/norm_statistics.py``, measured by
    :func:`measure_norm_statistics` with the same backend), held by the network's GroupNorm layers.
    """
    from .errors import WsinucleiError

    if backend not in BACKENDS:
        raise WsinucleiError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    loaded, data = read_model_file(path)
    embeddings = embeddings or loaded.type_head is not None  # a type head reads them
    if embeddings and not loaded.config.is_star:
        raise WsinucleiError(f"--embeddings: {loaded.path} is not a star model (embeddings are the star head's "
                             "features pooled over each nucleus)")
    if norm_stats is not None:
        from .models.norm_statistics import torch_fixed

        runtime, network = norm_runtime(loaded, device, backend)
        if runtime == "torch":
            lm = with_network(loaded, data)
            lm.model = torch_fixed(lm.model, norm_stats)
            return NucleusDetector(lm, device, "torch", read_mpp, embeddings)
        det = OpenVinoStarDetector(loaded, network, read_mpp, streams=streams, embeddings=embeddings,
                                   norm_stats=norm_stats)
        det.backend = runtime
        return det
    if device != "cpu" or backend == "torch":
        if backend.startswith("openvino") and device != "cpu":
            raise WsinucleiError(f"--backend {backend} runs on the CPU; with --device {device} leave it at auto or torch")
        return NucleusDetector(with_network(loaded, data), device, backend, read_mpp, embeddings)
    if loaded.config.is_star:
        if backend in ("auto", "openvino-int8"):
            det = _int8_detector(loaded, read_mpp, insist=backend == "openvino-int8", streams=streams,
                                 embeddings=embeddings)
            if det is not None:
                return det
        xml = _checked_conversion(loaded.digest)
        if xml is not None:
            return OpenVinoStarDetector(loaded, xml, read_mpp, streams=streams, embeddings=embeddings)
    elif backend == "openvino-int8":
        raise WsinucleiError(f"--backend openvino-int8: {loaded.path} is not a star model; use auto or openvino")
    return NucleusDetector(with_network(loaded, data), device, backend, read_mpp, embeddings)  # the file read once


#: what runs a model (``--backend``)
BACKENDS = ("auto", "torch", "openvino", "openvino-int8")


def norm_runtime(loaded: LoadedModel, device: str, backend: str) -> tuple[str, object]:
    """What runs a star model with slide statistics, as :func:`load_detector` would pick for it without them:
    ("openvino-int8", IR bytes), ("openvino", checked float32 IR path) or ("torch", None). The same runtime
    measures the statistics and runs the tiles."""
    from .errors import WsinucleiError

    if not loaded.config.is_star or loaded.config.backbone.get("norm", "group") != "group":
        raise WsinucleiError(f"--norm-statistics slide: {Path(str(loaded.path)).name} is not a star model with "
                             "GroupNorm layers")
    if device != "cpu" or backend == "torch":
        return "torch", None
    try:
        import openvino  # noqa: F401
    except ImportError:
        if backend.startswith("openvino"):
            raise WsinucleiError(f"--backend {backend}: OpenVINO is not installed (pip install openvino)") from None
        return "torch", None
    if backend in ("auto", "openvino-int8") and loaded.int8 is not None:
        return "openvino-int8", loaded.int8
    if backend == "openvino-int8":
        raise WsinucleiError(f"--backend openvino-int8: {loaded.path} carries no INT8 network (wsinuclei export --int8)")
    xml = _checked_conversion(loaded.digest)
    return ("openvino", xml) if xml is not None else ("torch", None)


def measure_norm_statistics(path, windows: list[np.ndarray], device: str = "cpu", backend: str = "auto"):
    """A slide's normalisation statistics (``models/norm_statistics.py``) from its windows (preprocessed uint8
    HWC, all of one size), measured by the runtime that will run its tiles (:func:`norm_runtime`). Returns the
    statistics and that runtime's name."""
    from .models import norm_statistics as ns

    loaded, data = read_model_file(path)
    runtime, network = norm_runtime(loaded, device, backend)
    if runtime == "torch":
        import torch

        lm = with_network(loaded, data)
        net = lm.model.eval()
        batch = net.batch([torch.from_numpy(np.ascontiguousarray(w)).permute(2, 0, 1).float().div_(255.0)
                           for w in windows])
        return ns.torch_statistics(net.backbone, batch), runtime
    import openvino as ov

    from .models.openvino_star import tile_input, with_normalisation

    core = ov.Core()
    model = core.read_model(*network) if isinstance(network, tuple) else core.read_model(str(network))
    model, names = ns.ov_measuring(model)
    compiled = core.compile_model(with_normalisation(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled(np.concatenate([tile_input(w) for w in windows]))
    first = len(compiled.outputs) - 2 * len(names)
    stats = {n: (np.asarray(res[first + 2 * k], np.float32).reshape(-1), np.asarray(res[first + 2 * k + 1], np.float32).reshape(-1))
             for k, n in enumerate(names)}
    return stats, runtime


def _int8_detector(loaded: LoadedModel, read_mpp: float | None, insist: bool, streams: int = 1,
                   embeddings: bool = False) -> Detector | None:
    import logging

    from .errors import WsinucleiError

    def give_up(why: str):
        if insist:
            raise WsinucleiError(f"--backend openvino-int8: {why}")
        if loaded.int8 is not None:  # a model that has one and cannot use it: say so once, then float32
            logging.getLogger(__name__).warning("INT8 network not used (%s); running float32", why)
        return None

    if loaded.int8 is None:
        return give_up(f"{loaded.path} carries no INT8 network (wsinuclei export --int8)")
    try:
        import openvino  # noqa: F401
    except ImportError:
        return give_up("OpenVINO is not installed (pip install openvino)")
    try:
        det = OpenVinoStarDetector(loaded, loaded.int8, read_mpp, streams=streams, embeddings=embeddings)
    except RuntimeError as exc:  # an IR this OpenVINO cannot read (older than the one that wrote it)
        return give_up(f"OpenVINO {openvino.__version__} could not read it ({str(exc).splitlines()[0][:200]})")
    det.backend = "openvino-int8"
    return det


def _checked_conversion(digest: str) -> Path | None:
    try:
        import openvino
    except ImportError:
        return None
    from .models.ir_cache import agreed_ir, ir_key

    return agreed_ir(ir_key(digest, openvino.__version__))
