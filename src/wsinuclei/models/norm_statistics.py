"""Slide-level normalisation statistics for a GroupNorm star network (``--norm-statistics slide``).

GroupNorm takes its statistics over each tile, so what a nucleus looks like to the network depends on the rest
of its tile (glass, a dense patch): another tile size or an ROI gives other outlines and other counts. With
slide statistics each GroupNorm layer's per-group mean and variance are measured once per slide, on
tile-sized windows of its tissue at fixed places in slide coordinates (``pipeline.plan``), and every tile of
the slide is normalised with them. The windows run as one batch whose GroupNorm layers share their
statistics: each layer takes the mean over the windows of each window's group mean and variance (what
GroupNorm computes per window), and normalises every window with them, so each layer sees its input as the
already fixed layers before it make it. The network's weights stay the model file's; only what its GroupNorm
layers subtract and divide by changes, so a slide of one stain keeps GroupNorm's adaptation to that stain
(statistics fixed over the training data lose it: ``experiments/README.md``).

One definition, two runtimes: torch (hooks to measure; :class:`builder.FixedNorm` layers to run) and OpenVINO
(the file's INT8 network or its checked float32 conversion, with each ``GroupNormalization`` op replaced by
the graph that measures, or by the per-channel multiply-add that fixed statistics make).
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np

#: how the statistics are taken; in run.json
DEFINITION = "slide-windows-v1"

#: layer (the trunk's module path, e.g. ``body.stem.1``) -> (mean, variance) per group
Statistics = dict[str, tuple[np.ndarray, np.ndarray]]


def digest(stats: Statistics) -> str:
    """A short hash of the statistics (names a detector built with them, and a run's resumable parts)."""
    h = hashlib.sha1()
    for name in sorted(stats):
        h.update(name.encode())
        for a in stats[name]:
            h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()[:16]


def to_lists(stats: Statistics) -> dict:
    """JSON-ready (run.json, a Dask task's context)."""
    return {k: [np.asarray(m, np.float32).tolist(), np.asarray(v, np.float32).tolist()] for k, (m, v) in stats.items()}


def from_lists(d: dict) -> Statistics:
    return {k: (np.asarray(m, np.float32), np.asarray(v, np.float32)) for k, (m, v) in d.items()}


# --- torch ---------------------------------------------------------------------------------------------------

def group_norms(trunk) -> dict:
    import torch

    return {n: m for n, m in trunk.named_modules() if isinstance(m, torch.nn.GroupNorm)}


def torch_statistics(trunk, batch) -> Statistics:
    """The statistics of ``batch`` (normalised network input, (N, 3, H, W)) through ``trunk`` (a star network's
    ``backbone``), its GroupNorm layers sharing their statistics over the batch."""
    import torch

    stats: Statistics = {}

    def hook(name):
        def shared(module, inputs, _out):
            x = inputs[0]
            n, g = x.shape[0], module.num_groups
            xg = x.float().reshape(n, g, -1)
            mean, var = xg.mean(2).mean(0), xg.var(2, unbiased=False).mean(0)
            stats[name] = (mean.numpy().astype(np.float32), var.numpy().astype(np.float32))
            y = (xg - mean[None, :, None]) / torch.sqrt(var[None, :, None] + module.eps)
            return y.reshape_as(x) * module.weight[None, :, None, None] + module.bias[None, :, None, None]
        return shared

    norms = group_norms(trunk)
    if not norms:
        raise ValueError("the network has no GroupNorm layer")
    handles = [m.register_forward_hook(hook(n)) for n, m in norms.items()]
    try:
        with torch.no_grad():
            trunk(batch)
    finally:
        for h in handles:
            h.remove()
    return stats


def torch_fixed(network, stats: Statistics):
    """A copy of ``network`` (a star network) whose trunk's GroupNorm layers are :class:`FixedNorm` layers
    holding ``stats``."""
    import torch

    from .builder import FixedNorm

    net = copy.deepcopy(network)
    for name, gn in group_norms(net.backbone).items():
        if name not in stats:
            raise ValueError(f"no statistics for layer {name}")
        mean, var = stats[name]
        per = gn.num_channels // gn.num_groups
        fixed = FixedNorm(gn.num_channels, gn.num_groups)
        fixed.eps = gn.eps
        with torch.no_grad():
            fixed.weight.copy_(gn.weight)
            fixed.bias.copy_(gn.bias)
            fixed.running_mean.copy_(torch.from_numpy(np.repeat(mean, per)))
            fixed.running_var.copy_(torch.from_numpy(np.repeat(var, per)))
        parent, _, leaf = name.rpartition(".")
        setattr(net.backbone.get_submodule(parent) if parent else net.backbone, leaf, fixed)
    return net.eval()


# --- OpenVINO ------------------------------------------------------------------------------------------------

def _ov_group_norms(model) -> list:
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "GroupNormalization"]


def _ov_layer(op) -> str:
    # names as the conversion from torch gives them: "__module.body.stem.1/aten::group_norm/GroupNormalization"
    return op.get_friendly_name().split("/")[0].removeprefix("__module.")


def _constant(output) -> np.ndarray:
    node = output.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        raise ValueError(f"{node.get_friendly_name()}: a GroupNorm scale or shift that is not a constant")
    return np.asarray(node.get_data(), np.float32).reshape(-1)


def ov_measuring(model) -> tuple[object, list[str]]:
    """``model`` (an OpenVINO star network, modified in place) with each GroupNormalization op sharing its
    statistics over the batch, as :func:`torch_statistics`, and the layers' names: two outputs more per layer,
    appended in that order, the mean and the variance per group, (1, G, 1)."""
    import openvino.opset13 as ops

    extra, names = [], []
    for op in _ov_group_norms(model):
        names.append(_ov_layer(op))
        x, scale, shift = op.input_value(0), op.input_value(1), op.input_value(2)
        attrs = op.get_attributes()
        g, eps = int(attrs["num_groups"]), float(attrs["epsilon"])
        c = x.get_partial_shape()[1].get_length()
        xg = ops.reshape(x, ops.constant(np.array([0, g, -1], np.int64)), special_zero=True)
        axis2, axis0 = ops.constant(np.array([2], np.int64)), ops.constant(np.array([0], np.int64))
        m = ops.reduce_mean(xg, axis2, keep_dims=True)
        d = ops.subtract(xg, m)
        v = ops.reduce_mean(ops.multiply(d, d), axis2, keep_dims=True)
        mb, vb = ops.reduce_mean(m, axis0, keep_dims=True), ops.reduce_mean(v, axis0, keep_dims=True)
        y = ops.divide(ops.subtract(xg, mb), ops.sqrt(ops.add(vb, ops.constant(np.float32(eps)))))
        y = ops.reshape(y, ops.shape_of(x), special_zero=False)
        shape = ops.constant(np.array([1, c, 1, 1], np.int64))
        y = ops.add(ops.multiply(y, ops.reshape(scale, shape, False)), ops.reshape(shift, shape, False))
        op.output(0).replace(y.output(0))
        extra += [mb.output(0), vb.output(0)]
    if not names:
        raise ValueError("the network has no GroupNorm layer")
    model.add_outputs(extra)
    return model, names


def ov_fixed(model, stats: Statistics):
    """``model`` (modified in place) with each GroupNormalization op replaced by the per-channel multiply-add
    that ``stats`` make of it."""
    import openvino.opset13 as ops

    for op in _ov_group_norms(model):
        name = _ov_layer(op)
        if name not in stats:
            raise ValueError(f"no statistics for layer {name}")
        attrs = op.get_attributes()
        g, eps = int(attrs["num_groups"]), float(attrs["epsilon"])
        scale, shift = _constant(op.input_value(1)), _constant(op.input_value(2))
        mean, var = (np.repeat(np.asarray(a, np.float64), len(scale) // g) for a in stats[name])
        a = scale / np.sqrt(var + eps)
        b = shift - mean * a
        shape = (1, len(scale), 1, 1)
        y = ops.add(ops.multiply(op.input_value(0), ops.constant(a.astype(np.float32).reshape(shape))),
                    ops.constant(b.astype(np.float32).reshape(shape)))
        op.output(0).replace(y.output(0))
    return model
