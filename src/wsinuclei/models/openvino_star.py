"""A star model (``star.py``) run by OpenVINO alone, without importing torch or torchvision.

A star model's network is one module (trunk, FPN, dense head) and its decoding is numpy
(``star_decode.py``), so once ``backends.use_backend`` has converted the network and checked it against
torch (a mark in the conversion cache, ``ir_cache.py``), nothing else needs torch. Importing torch and
torchvision takes about 2.5 s of a whole-slide run's start on a 2-core machine (BENCHMARKS.md); this runtime
takes a fraction of that.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .config import IMAGE_MEAN, IMAGE_STD
from .star_decode import StarDecoding


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


_MEAN_255 = np.asarray(IMAGE_MEAN, np.float32) * 255.0
_STD_255 = np.asarray(IMAGE_STD, np.float32) * 255.0


def tile_input(tile: np.ndarray) -> np.ndarray:
    """(1, H', W', 3) float32 in 0-255 from a uint8 HWC tile, padded to multiples of 32 with the mean colour:
    the input of a network compiled with :func:`with_normalisation` (padding that normalises to 0, as in
    :func:`network_input`). A copy, no arithmetic: the network normalises on its own threads."""
    h, w = tile.shape[:2]
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    x = np.empty((1, hp, wp, 3), np.float32)
    if (hp, wp) != (h, w):
        x[...] = _MEAN_255
    x[0, :h, :w] = tile
    return x


def with_normalisation(model):
    """An OpenVINO model that takes :func:`tile_input`'s NHWC 0-255 input and normalises it itself (OpenVINO
    pre-processing, fused into the compiled network): in numpy the same arithmetic costs 0.04-0.1 s per 1024
    tile on this 2-core machine, single-threaded, outside the network's threads."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    inp = ppp.input()
    inp.tensor().set_element_type(ov.Type.f32).set_layout(ov.Layout("NHWC"))
    inp.model().set_layout(ov.Layout("NCHW"))
    inp.preprocess().mean([float(v) for v in _MEAN_255]).scale([float(v) for v in _STD_255])
    return ppp.build()


def with_feature_output(model):
    """The same OpenVINO model with one more output, last: the head's features (B, C, h, w) that its first output
    (the centre probability) is computed from, as that output's convolution reads them (after the INT8
    network's quantisation). Adding an output leaves the other outputs bit-identical
    (``tests/test_embeddings.py``)."""
    node = model.outputs[0].get_node()
    while node.get_type_name() != "Convolution":
        if node.get_input_size() == 0:
            raise ValueError("the network's first output is not computed by a convolution")
        node = node.input_value(0).get_node()
    model.add_outputs([node.input_value(0)])
    return model


class ThreadInfer:
    """Synchronous inference on a compiled OpenVINO model from any number of threads: each thread runs its own
    infer request. ``CompiledModel.__call__`` keeps one request for every caller, and a Dask worker with several
    threads (a Slurm job's cores) runs tiles at the same time: on one shared request they would overwrite each
    other's inputs and outputs."""

    def __init__(self, compiled):
        self.compiled = compiled
        self._local = threading.local()
        # The first call runs alone: OpenVINO's Python binding initialises function-local statics the first time
        # it turns a numpy array into a tensor, and two threads doing that at once can deadlock (one holds the
        # GIL while it waits for the static's guard; the other, inside the initialisation, waits for the GIL).
        # Seen as a whole-slide run that hung at its first tiles, about one run in ten, with two streams.
        self._first_call = threading.Lock()
        self._warm = False

    def __call__(self, x: np.ndarray, copy_outputs=None):
        """The outputs of one inference, copied out of the request (they outlive the next call); with
        ``copy_outputs`` (a function of the output tensors' numpy views, called before the request is reused), what
        it returns instead: a caller that needs only part of a large output copies only that."""
        if not self._warm:
            with self._first_call:  # a waiting thread releases the GIL while it waits here
                if not self._warm:
                    result = self._infer(x, copy_outputs)
                    self._warm = True
                    return result
        return self._infer(x, copy_outputs)

    def _infer(self, x: np.ndarray, copy_outputs=None):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        if copy_outputs is None:
            return request.infer(x, share_inputs=True)  # outputs are copied out of the request
        return copy_outputs(request.infer(x, share_inputs=True, share_outputs=True))


class OpenVinoStarNet:
    """Tiles (uint8 HWC, the network's input colours) in; per tile boxes, raw scores, outlines (N, rays, 2)
    and type probabilities (N, types; None for an untyped network) out, in tile pixels, as ``star.StarNet``
    gives them in eval mode.

    ``network``: an OpenVINO IR, as the path of its XML (weights beside it, ``.bin``) or as the two files'
    bytes (the INT8 network a model file carries, ``int8.py``).

    ``streams``: OpenVINO streams, each with its share of the ``threads``; a call with several tiles runs up
    to that many at once, one per stream. Why: in a whole-slide run reader threads preempt the network's, and
    a stream that loses its core does not hold the other's work up at every layer's barrier (two streams were
    chosen from whole-command timings on 2 cores that were not recorded in BENCHMARKS.md).
    A lone tile has only its stream's threads, so one-tile-at-a-time callers keep the default, 1.

    ``embeddings``: also each nucleus' embedding (N, C), its polygon's mean of the head's features
    (``star_decode.pool_embeddings``), as a fifth element per tile; else that element is None.
    ``norm_stats``: a slide's statistics for the GroupNorm layers (``norm_statistics.ov_fixed``)."""

    def __init__(self, network: Path | tuple[bytes, bytes], head: dict[str, Any], threads: int | None = None,
                 streams: int = 1, embeddings: bool = False, norm_stats=None):
        import openvino as ov

        core = ov.Core()
        if isinstance(network, tuple):
            self.xml = None
            model = core.read_model(network[0], network[1])
        else:
            self.xml = Path(network)
            model = core.read_model(str(network))
        if norm_stats is not None:  # a slide's statistics in the GroupNorm layers (norm_statistics.py)
            from .norm_statistics import ov_fixed

            model = ov_fixed(model, norm_stats)
        self.embeddings = bool(embeddings)
        if self.embeddings:
            model = with_feature_output(model)
        threads = int(threads or os.cpu_count() or 1)
        self.streams = max(1, min(int(streams), threads))
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        if self.streams > 1:
            config["NUM_STREAMS"] = self.streams
        self.compiled = ThreadInfer(core.compile_model(with_normalisation(model), "CPU", config))
        self.decoding = StarDecoding.from_head(head)
        self._pool = None  # threads that run a call's tiles at once, one per stream (made on first use)
        self._pool_lock = threading.Lock()

    def _maps(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        # StarTrunk's outputs, in order: prob, dist and, typed, types; with embeddings the head's features last
        if not self.embeddings:
            res = self.compiled(tile_input(tile))
            return np.asarray(res[0]), np.asarray(res[1]), (np.asarray(res[2]) if len(res) > 2 else None), None

        def copy(res):  # the features of the tile's own cells only, not of its padding
            h, w = -(-tile.shape[0] // self.decoding.stride), -(-tile.shape[1] // self.decoding.stride)
            feats = np.asarray(res[len(res) - 1])[0, :, :h, :w]
            types = np.array(res[2]) if len(res) > 3 else None
            return np.array(res[0]), np.array(res[1]), types, np.ascontiguousarray(feats)

        return self.compiled(tile_input(tile), copy)

    def __call__(self, tiles: list[np.ndarray]) -> list[tuple]:
        if self.streams > 1 and len(tiles) > 1:
            with self._pool_lock:
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="openvino-stream")
            maps = list(self._pool.map(self._maps, tiles))
        else:
            maps = [self._maps(tile) for tile in tiles]
        return [self.decoding(prob[0, 0], dist[0], tile.shape[:2], None if types is None else types[0], feats)
                for (prob, dist, types, feats), tile in zip(maps, tiles)]
