"""Build a Faster R-CNN nuclei detector from torchvision's detection parts, configured by a preset.

A preset (``config.py``) gives the backbone, the anchors, the RPN and RoI-head settings and the training
recipe. The builder turns it into a :class:`torchvision.models.detection.FasterRCNN`
whose input transform never resizes a tile (torchvision's default would rescale every input to 800 px).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..errors import WsinucleiError
from .config import IMAGE_MEAN, IMAGE_STD, DetectorConfig, load_preset
from .fast_heads import use_fast_heads


def _groups(c: int) -> int:
    return min(32, c // 4) if c >= 16 else 1


class FixedNorm(nn.BatchNorm2d):
    """Normalisation by fixed per-channel statistics (BatchNorm in eval mode, always), with a learned scale and
    shift: a nucleus' features never depend on what else its tile or batch holds, so the same nucleus gives
    the same output whatever the tiling (GroupNorm's statistics span the whole tile: glass or a dense patch
    anywhere in it changes every nucleus). The statistics come from :func:`calibrate_fixed_norms`, which
    measures them as the GroupNorm a model was trained with would have, averaged over crops; exported
    networks fold them into the convolutions."""

    def __init__(self, num_features: int, groups: int = 1):
        super().__init__(num_features)
        self.groups = int(groups)
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            with torch.no_grad():
                g = x.float().reshape(x.shape[0], self.groups, -1)
                per = self.num_features // self.groups
                self.running_mean.copy_(g.mean(2).mean(0).repeat_interleave(per))
                self.running_var.copy_(g.var(2, unbiased=False).mean(0).repeat_interleave(per))
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


@torch.no_grad()
def calibrate_fixed_norms(model: nn.Module, batch: torch.Tensor) -> int:
    """Set every :class:`FixedNorm`'s statistics from one forward pass over ``batch`` (normalised network input,
    (B, 3, H, W)), layer after layer: each sees its input as the already calibrated layers before it make it,
    and takes the per-crop group means and variances (as GroupNorm computes them), averaged over the crops.
    Run after a GroupNorm model's weights are loaded into the same network with fixed norms (``train --init``).
    Returns the number of layers set."""
    norms = [m for m in model.modules() if isinstance(m, FixedNorm)]
    for m in norms:
        m.calibrating = True
    try:
        model(batch)
    finally:
        for m in norms:
            m.calibrating = False
    return len(norms)


def _norm_layer(kind: str):
    if kind == "group":
        # GroupNorm: batch statistics are meaningless with 1-4 crops per step, and nothing is pretrained.
        return lambda c: nn.GroupNorm(_groups(c), c)
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "fixed":
        return lambda c: FixedNorm(c, _groups(c))
    raise WsinucleiError(f"unknown norm '{kind}' (group, batch or fixed)")


class LightTrunk(nn.Module):
    """A small ResNet trunk of torchvision BasicBlocks: a two-conv stride-4 stem, then one stage per width,
    each halving the resolution after the first. Children are named so BackboneWithFPN can tap them."""

    def __init__(self, stem_channels: int, widths: list[int], blocks: list[int], norm: str,
                 zero_init_residual: bool = False):
        super().__init__()
        norm_layer = _norm_layer(norm)
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, stride=2, padding=1, bias=False),
            norm_layer(stem_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_channels, widths[0], 3, stride=2, padding=1, bias=False),
            norm_layer(widths[0]),
            nn.ReLU(inplace=True),
        )
        inplanes = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or inplanes != width:
                    down = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride=s, bias=False), norm_layer(width))
                layers.append(resnet.BasicBlock(inplanes, width, s, down, norm_layer=norm_layer))
                inplanes = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        if zero_init_residual:
            # each block starts as the identity (its last norm scales the residual by 0): a deeper trunk warm-
            # started from a shallower one's weights (``train --init``) computes exactly what that one did
            for m in self.modules():
                if isinstance(m, resnet.BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x):  # only used when called directly; BackboneWithFPN walks the children
        x = self.stem(x)
        for name, child in self.named_children():
            if name.startswith("layer"):
                x = child(x)
        return x


class NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform (normalise, batch with padding) without its rescaling: tiles arrive at the
    model's µm/px already, and rescaling would change the nuclei's size the anchors were chosen for.

    Its post-processing leaves masks as they come out of the mask head (N, 1, M, M probabilities, each over
    its own box): torchvision would paste every mask into a full-tile image, 3.6 GB and 13.6 s for 848
    nuclei of one 1024-px tile; :mod:`wsinuclei.contours` turns each small mask into a polygon instead.
    """

    def resize(self, image, target=None):
        return image, target

    def postprocess(self, result, image_shapes, original_image_sizes):
        return result  # never resized, so boxes are already in input pixels


_BLOCK_NAMES = ["stem", "block1", "block2", "block3", "block4"]


def _resnet_backbone(cfg: dict[str, Any]) -> BackboneWithFPN:
    kind = cfg["kind"]
    builder = {"resnet50": resnet.resnet50, "resnet101": resnet.resnet101}[kind]
    trunk = builder(weights=None, norm_layer=_norm_layer(cfg.get("norm", "group")))
    full_units = len(trunk.layer3)
    num_units = int(cfg.get("num_units", full_units))
    if not 1 <= num_units <= full_units:
        raise WsinucleiError(f"{kind}: num_units must be between 1 and {full_units}, got {num_units}")
    trunk.layer3 = nn.Sequential(*list(trunk.layer3)[:num_units])
    # fine_tune_from (the study fine-tuned from block 2 of an ImageNet model) is applied only when weights are
    # loaded into the model (freeze_before_fine_tune_block, called by training with --init): freezing layers
    # that start from random weights would leave them random for good.
    returned = cfg.get("returned_layers", [1, 2, 3, 4])
    in_channels = [256 * 2 ** (i - 1) for i in returned]
    return BackboneWithFPN(
        trunk,
        return_layers={f"layer{i}": str(k) for k, i in enumerate(returned)},
        in_channels_list=in_channels,
        out_channels=int(cfg.get("fpn_channels", 256)),
        extra_blocks=LastLevelMaxPool(),
    )


def _light_backbone(cfg: dict[str, Any]) -> BackboneWithFPN:
    trunk = LightTrunk(int(cfg["stem_channels"]), list(cfg["widths"]), list(cfg["blocks"]), cfg.get("norm", "group"),
                       bool(cfg.get("zero_init_residual", False)))
    n = len(cfg["widths"])
    return BackboneWithFPN(
        trunk,
        return_layers={f"layer{i + 1}": str(i) for i in range(n)},
        in_channels_list=list(cfg["widths"]),
        out_channels=int(cfg["fpn_channels"]),
        extra_blocks=LastLevelMaxPool(),
    )


def build_detector(config: DetectorConfig | str) -> nn.Module:
    """A Faster R-CNN with two classes (background, nucleus) for a preset or preset name; a Mask R-CNN
    (the same plus a small mask head) when the preset has a ``[mask_head]`` section; a dense star-convex
    polygon detector (:class:`.star.StarNet`) when it has a ``[star_head]`` section."""
    if isinstance(config, str):
        config = load_preset(config)
    bcfg = config.backbone
    kind = bcfg.get("kind")
    if kind == "light":
        backbone = _light_backbone(bcfg)
    elif kind in ("resnet50", "resnet101"):
        backbone = _resnet_backbone(bcfg)
    else:
        raise WsinucleiError(f"unknown backbone kind '{kind}' (light, resnet50, resnet101)")
    if config.star_head is not None:
        from .star import StarNet

        return StarNet(backbone, config.star_head, IMAGE_MEAN, IMAGE_STD)

    sizes = [tuple(int(s) for s in level) for level in config.anchors["sizes"]]
    if len({len(level) for level in sizes}) != 1:
        # torchvision's RPN head predicts one fixed number of anchors at every location of every level
        raise WsinucleiError(f"preset {config.name}: every anchor level needs the same number of sizes")
    ratios = tuple(float(r) for r in config.anchors["aspect_ratios"])
    featmap_names = [str(i) for i in range(len(sizes) - 1)]  # the pooled extra level gets no RoIs
    with torch.no_grad():
        levels = len(backbone(torch.zeros(1, 3, 64, 64)))
    if levels != len(sizes):
        raise WsinucleiError(f"preset {config.name}: {len(sizes)} anchor levels for {levels} feature levels")
    anchor_gen = AnchorGenerator(sizes=tuple(sizes), aspect_ratios=(ratios,) * len(sizes))
    out = int(config.roi_heads["output_size"])
    rep = int(config.roi_heads["representation_size"])
    rpn, roi = config.rpn, config.roi_heads
    mask_parts = {}
    if config.mask_head is not None:
        m = config.mask_head
        layers = [int(c) for c in m["layers"]]
        mask_parts = dict(
            mask_roi_pool=MultiScaleRoIAlign(featmap_names=featmap_names, output_size=int(m["output_size"]),
                                             sampling_ratio=2),
            mask_head=MaskRCNNHeads(backbone.out_channels, layers, 1),
            mask_predictor=MaskRCNNPredictor(layers[-1], int(m.get("predictor_channels", layers[-1])), 2),
        )
    model = (MaskRCNN if mask_parts else FasterRCNN)(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchor_gen,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=featmap_names, output_size=out, sampling_ratio=2),
        box_head=TwoMLPHead(backbone.out_channels * out * out, rep),
        box_predictor=FastRCNNPredictor(rep, 2),
        rpn_pre_nms_top_n_train=int(rpn["pre_nms_top_n_train"]),
        rpn_pre_nms_top_n_test=int(rpn["pre_nms_top_n_test"]),
        rpn_post_nms_top_n_train=int(rpn["post_nms_top_n_train"]),
        rpn_post_nms_top_n_test=int(rpn["post_nms_top_n_test"]),
        rpn_batch_size_per_image=int(rpn["batch_size_per_image"]),
        rpn_nms_thresh=float(rpn["nms_thresh"]),
        box_batch_size_per_image=int(roi["batch_size_per_image"]),
        box_score_thresh=float(roi["score_thresh"]),
        box_nms_thresh=float(roi["nms_thresh"]),
        box_detections_per_img=int(roi["detections_per_img"]),
        **mask_parts,
    )
    model.transform = NoResizeTransform(
        min_size=800, max_size=1333, image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), size_divisible=32
    )
    use_fast_heads(model)  # torchvision's proposal NMS and RoIAlign, same outputs, less CPU time (fast_heads.py)
    return model


def freeze_before_fine_tune_block(model: FasterRCNN, config: DetectorConfig) -> list[str]:
    """Freeze the trunk blocks before the preset's ``fine_tune_from`` (ResNet presets), for a model whose
    weights were loaded from a trained file. Returns the names of the frozen blocks."""
    start_name = config.backbone.get("fine_tune_from", "stem")
    body = model.backbone.body
    if start_name == "stem" or "layer1" not in dict(body.named_children()) or not hasattr(body, "conv1"):
        return []
    start = _BLOCK_NAMES.index(start_name)
    blocks = [[body.conv1, body.bn1], [body.layer1], [body.layer2], [body.layer3], [body.layer4]]
    frozen = []
    for i, mods in enumerate(blocks[:start]):
        for m in mods:
            m.requires_grad_(False)
        frozen.append(_BLOCK_NAMES[i])
    return frozen


def set_num_units(model: FasterRCNN, num_units: int) -> FasterRCNN:
    """A copy of a ResNet-50/101 detector using only the first ``num_units`` units of block 3, as in the
    study's experiment of cutting units at inference."""
    body = model.backbone.body
    if "layer3" not in dict(body.named_children()) or not isinstance(body.layer3[0], resnet.Bottleneck):
        raise WsinucleiError("num_units applies to the ResNet-50/101 presets only")
    if not 1 <= num_units <= len(body.layer3):
        raise WsinucleiError(f"num_units must be between 1 and {len(body.layer3)}")
    cut = copy.deepcopy(model)
    cut.backbone.body.layer3 = nn.Sequential(*list(cut.backbone.body.layer3)[:num_units])
    return cut


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
