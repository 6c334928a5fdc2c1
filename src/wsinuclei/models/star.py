"""A dense, single-stage nucleus detector: every nucleus a star-convex polygon, as StarDist draws them.

Faster/Mask R-CNN spend most of a tile's time on machinery sized for the worst case: half a million anchors,
thousands of proposals, NMS over tens of thousands of boxes, RoI pooling and two heads per proposal, whatever
the tile holds (docs/history/measurements.md, "A dense star-convex model: the new default"). Nuclei are small, compact and nearly convex, so a
dense head does the same job in one pass: on the finest FPN level (stride 4, 1 µm at 0.25 µm/px) every cell
predicts

- ``prob``: how central it is in a nucleus (0 outside; inside, the distance to the nucleus' edge over the
  largest such distance in that nucleus, so it peaks at the nucleus' centre), and
- ``dist``: the distance from the cell to the nucleus' edge along ``n_rays`` equally spaced directions.

Decoding takes the cells that are local maxima of ``prob`` above a floor, turns each into the polygon its
distances draw, and drops polygons whose boxes overlap a better one (NMS). No anchors, no proposals, no RoIs:
the cost is the trunk plus two small convolutions, and decoding scales with the nuclei found.

The trunk and FPN are the light ones of the other presets (so a contour or box model warm-starts this one:
``train --init``); :class:`StarTrunk` runs them and the head as one module, so an inference backend
(``backends.py``) compiles the whole network, not only its trunk.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from .star_decode import StarDecoding, ray_directions

#: loss terms of a training step, as logged
STAR_LOSS_KEYS = ("loss_prob", "loss_dist")
#: the same with a type head
TYPED_STAR_LOSS_KEYS = STAR_LOSS_KEYS + ("loss_type",)


class StarTrunk(nn.Module):
    """Trunk, FPN and dense head in one module: image batch (normalised) -> ``OrderedDict(prob=logits (B, 1,
    h, w), dist=(B, n_rays, h, w))`` at stride 4. Its ``body`` and ``fpn`` are named as in
    :class:`BackboneWithFPN`, so weights of the R-CNN presets load into it by name."""

    def __init__(self, backbone: BackboneWithFPN, channels: list[int], n_rays: int, upsample_channels: int = 0,
                 n_types: int = 0, type_channels: list[int] | None = None, type_level: int = 1,
                 type_from_head: bool = False):
        super().__init__()
        self.body, self.fpn = backbone.body, backbone.fpn
        layers, c = [], backbone.out_channels
        for width in channels:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        if upsample_channels:  # outputs at stride 2: finer centres for small, touching nuclei
            layers += [nn.ConvTranspose2d(c, upsample_channels, 2, stride=2), nn.ReLU(inplace=True),
                       nn.Conv2d(upsample_channels, upsample_channels, 3, padding=1), nn.ReLU(inplace=True)]
            c = upsample_channels
        self.head = nn.Sequential(*layers)
        self.prob = nn.Conv2d(c, 1, 1)
        self.dist = nn.Conv2d(c, n_rays, 1)
        nn.init.constant_(self.prob.bias, -4.0)  # most cells are background: start near p = 0.02
        self.out_channels = 1 + n_rays
        # types: a branch of its own on a coarser FPN level (stride 8 by default: more context per cell, a quarter
        # of the finest level's cost), its logits upsampled onto the outputs' grid
        # with ``type_from_head`` the branch's features, upsampled, are joined to the detection head's own (which
        # describe each nucleus' size and shape) before the last 1x1 convolution
        self.n_types, self.type_level, self.type_from_head = int(n_types), int(type_level), bool(type_from_head)
        # True: ``forward`` also returns the head's features (``features``, B, C, h, w), for embeddings; off when
        # the network is traced for OpenVINO (``backends.compile_trunk`` adds that output to the IR itself)
        self.emit_features = False
        if self.n_types:
            head_c = c
            layers, c = [], backbone.out_channels
            for width in type_channels or [64]:
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
                c = width
            self.type_head = nn.Sequential(*layers)
            self.types = nn.Conv2d(c + (head_c if self.type_from_head else 0), self.n_types, 1)
            self.out_channels += self.n_types

    def forward(self, x: torch.Tensor) -> OrderedDict:
        levels = list(self.fpn(self.body(x)).values())
        f = self.head(levels[0])
        out = OrderedDict(prob=self.prob(f), dist=self.dist(f))
        if self.emit_features:
            out["features"] = f
        if self.n_types:
            t = self.type_head(levels[self.type_level])
            if self.type_from_head:
                t = F.interpolate(t, size=f.shape[-2:], mode="bilinear", align_corners=False)
                out["types"] = self.types(torch.cat([f, t], 1))
            else:
                out["types"] = F.interpolate(self.types(t), size=f.shape[-2:], mode="bilinear", align_corners=False)
        return out


class StarNet(nn.Module):
    """The detector: called like torchvision's detection models. Training mode takes a list of images (3, H,
    W in 0-1) and targets with ``masks`` (N, H, W) (and ``centre_only``: True where the masks are only discs at
    annotated centres) and returns the losses; eval mode returns per image a dict
    of ``boxes`` (N, 4), ``scores``, ``labels`` and ``outlines`` (N, n_rays, 2 of x, y), in input pixels."""

    def __init__(self, backbone: BackboneWithFPN, head: dict[str, Any], image_mean, image_std):
        super().__init__()
        self.n_rays = int(head.get("n_rays", 32))
        self.n_types = int(head.get("n_types", 0))
        self.backbone = StarTrunk(backbone, [int(c) for c in head.get("channels", [64])], self.n_rays,
                                  int(head.get("upsample_channels", 0)), self.n_types,
                                  [int(c) for c in head.get("type_channels", [64])], int(head.get("type_level", 1)),
                                  bool(head.get("type_from_head", False)))
        # the type loss' weight beside the centre and distance losses, and each type's weight within it
        self.type_weight = float(head.get("type_weight", 1.0))
        # False while only the type branch trains (``[train] train_only``): the detection losses, whose targets
        # cost most of a step's CPU time, are not computed at all
        self.train_detection = True
        class_w = head.get("type_class_weights")
        self.register_buffer("type_class_w", torch.tensor([float(w) for w in class_w]) if class_w else None,
                             persistent=False)
        self.decoding = StarDecoding.from_head(head)  # shared with the torch-free runtime
        self.stride, self.dist_scale = self.decoding.stride, self.decoding.dist_scale
        self.max_dist = int(head.get("max_dist", 64))  # longest ray measured for the targets, in pixels
        self.dist_weight = float(head.get("dist_weight", 1.0))
        # centre-probability loss weight of a nucleus below ``small_area_px`` pixels: area_px / its area, at most
        # ``small_weight_max`` (0: every cell weighs 1); small nuclei have few cells and are the ones missed
        self.small_area_px = float(head.get("small_area_px", 0.0))
        self.small_weight_max = float(head.get("small_weight_max", 3.0))
        self.register_buffer("image_mean", torch.tensor(image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(3, 1, 1), persistent=False)
        self.register_buffer("ray_dirs", torch.from_numpy(ray_directions(self.n_rays)), persistent=False)

    def batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Normalise and pad to a common size divisible by 32 (the trunk's coarsest stride), zeros after
        normalisation as torchvision's detection transform pads."""
        h = max(int(i.shape[-2]) for i in images)
        w = max(int(i.shape[-1]) for i in images)
        h, w = -(-h // 32) * 32, -(-w // 32) * 32
        x = images[0].new_zeros((len(images), 3, h, w))
        for k, img in enumerate(images):
            x[k, :, : img.shape[-2], : img.shape[-1]] = (img - self.image_mean) / self.image_std
        return x

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        out = self.backbone(self.batch(images))
        if self.training:
            if targets is None:
                raise ValueError("StarNet in training mode needs targets")
            return self.losses(out, images, targets)
        return self.decode(out, [(int(i.shape[-2]), int(i.shape[-1])) for i in images])

    # -- training ------------------------------------------------------------------------------------------
    def losses(self, out: OrderedDict, images, targets) -> dict[str, torch.Tensor]:
        if not self.train_detection:
            zero = out["prob"].sum() * 0.0
            return {"loss_prob": zero, "loss_dist": zero,
                    "loss_type": self.type_weight * self.type_loss(out["types"], images, targets)}
        prob_logits, dist = out["prob"], out["dist"]
        prob_t = torch.zeros_like(prob_logits[:, 0])
        dist_t = torch.zeros_like(dist)
        cell_w = torch.ones_like(prob_t)
        for k, (img, tgt) in enumerate(zip(images, targets)):
            label = instance_label_image(tgt["masks"], img.shape[-2:])
            p, d = star_targets(label, self.stride, self.ray_dirs, self.max_dist)
            prob_t[k, : p.shape[0], : p.shape[1]] = p
            dist_t[k, :, : p.shape[0], : p.shape[1]] = d
            if self.small_area_px > 0:
                cell_w[k, : p.shape[0], : p.shape[1]] = small_nucleus_weight(label, self.stride, self.small_area_px,
                                                                             self.small_weight_max)
        # a crop whose nuclei are known by their centres alone (``centre_only``: discs at the centres) trains the
        # centre probability inside its discs, nowhere else (its unannotated nuclei are not background), and no
        # distances (a disc's edge is not the nucleus')
        centre_only = [bool(t.get("centre_only", False)) for t in targets]
        weight = prob_t[:, None]
        if any(centre_only) or self.small_area_px > 0:
            known = torch.ones_like(prob_t)
            for k in (k for k, c in enumerate(centre_only) if c):
                known[k] = (prob_t[k] > 0).to(known.dtype)
            bce = F.binary_cross_entropy_with_logits(prob_logits[:, 0], prob_t, reduction="none")
            loss_prob = (bce * known * cell_w).sum() / known.sum().clamp(min=1.0)
            outlined = torch.tensor([not c for c in centre_only], dtype=prob_t.dtype, device=prob_t.device)
            weight = (prob_t * outlined[:, None, None])[:, None]
        else:
            loss_prob = F.binary_cross_entropy_with_logits(prob_logits[:, 0], prob_t)
        # distances matter where the cell is inside a nucleus, most near its centre (where decoding reads them)
        l1 = (dist - dist_t / self.dist_scale).abs() * weight
        loss_dist = self.dist_weight * l1.sum() / (weight.sum() * self.n_rays).clamp(min=1.0)
        losses = {"loss_prob": loss_prob, "loss_dist": loss_dist}
        if self.n_types:
            losses["loss_type"] = self.type_weight * self.type_loss(out["types"], images, targets)
        return losses

    def type_loss(self, type_logits: torch.Tensor, images, targets) -> torch.Tensor:
        """Cross-entropy of the type logits at every cell inside a typed nucleus (inside its outline, or its disc
        for centre-only sets); cells of untyped nuclei and of sets without types (no ``types`` in the target, or
        -1) train nothing. 0 for a batch with no typed cell."""
        type_t = torch.full(type_logits.shape[:1] + type_logits.shape[2:], -1, dtype=torch.int64,
                            device=type_logits.device)
        for k, (img, tgt) in enumerate(zip(images, targets)):
            types = tgt.get("types")
            if types is None or len(types) == 0 or bool((types < 0).all()):
                continue
            own = cell_labels(instance_label_image(tgt["masks"], img.shape[-2:]), self.stride)
            lut = torch.cat([types.new_full((1,), -1), types.to(torch.int64)])
            type_t[k, : own.shape[0], : own.shape[1]] = lut[own]
        if not bool((type_t >= 0).any()):
            return type_logits.sum() * 0.0
        return F.cross_entropy(type_logits, type_t, weight=self.type_class_w, ignore_index=-1)

    # -- inference -----------------------------------------------------------------------------------------
    def decode(self, out: OrderedDict, sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """Per image: the nuclei its maps hold (``star_decode.decode_star``, shared with the torch-free
        runtime), as tensors on the maps' device."""
        prob = out["prob"].detach().float().cpu().numpy()
        dist = out["dist"].detach().float().cpu().numpy()
        types = out["types"].detach().float().cpu().numpy() if "types" in out else None
        feats = out["features"].detach().float().cpu().numpy() if "features" in out else None
        device = out["prob"].device
        results = []
        for k, size in enumerate(sizes):
            grid = (-(-size[0] // self.stride), -(-size[1] // self.stride))  # this image's cells, not the padding
            boxes, scores, outlines, type_probs, emb = self.decoding(
                prob[k, 0], dist[k], size, None if types is None else types[k],
                None if feats is None else np.ascontiguousarray(feats[k, :, : grid[0], : grid[1]]))
            res = {"boxes": torch.from_numpy(boxes).to(device), "scores": torch.from_numpy(scores).to(device),
                   "outlines": torch.from_numpy(outlines).to(device),
                   "labels": torch.ones(len(scores), dtype=torch.int64, device=device)}
            if type_probs is not None:
                res["type_probs"] = torch.from_numpy(type_probs).to(device)
            if emb is not None:
                res["embeddings"] = torch.from_numpy(emb).to(device)
            results.append(res)
        return results


def instance_label_image(masks: torch.Tensor, size) -> torch.Tensor:
    """(N, H, W) binary masks -> (H, W) int64 labels 1..N (0 background; where masks overlap, the higher id)."""
    h, w = int(size[0]), int(size[1])
    if masks is None or len(masks) == 0:
        return torch.zeros((h, w), dtype=torch.int64)
    ids = torch.arange(1, len(masks) + 1, dtype=torch.int64, device=masks.device)
    return (masks.to(torch.int64) * ids[:, None, None]).amax(0)


def _cell_centres(length: int, stride: int, device) -> torch.Tensor:
    """Pixel rows (or columns) at which the cells of the stride grid are sampled."""
    return torch.arange(stride // 2, length, stride, device=device)


def cell_labels(label: torch.Tensor, stride: int) -> torch.Tensor:
    """The instance label at each cell's sample pixel of the stride grid (as :func:`star_targets` samples)."""
    label = label.to(torch.int64)
    return label[_cell_centres(label.shape[0], stride, label.device)][:, _cell_centres(label.shape[1], stride,
                                                                                       label.device)]


def small_nucleus_weight(label: torch.Tensor, stride: int, area_px: float, max_weight: float) -> torch.Tensor:
    """On the stride grid of an (H, W) instance label image (cells sampled as in :func:`star_targets`): for a cell
    inside a nucleus of A pixels, ``area_px / A`` clamped to [1, ``max_weight``]; 1 outside nuclei."""
    label = label.to(torch.int64)
    own = cell_labels(label, stride)
    area = torch.bincount(label.flatten()).to(torch.float32)
    w = (area_px / area[own].clamp(min=1.0)).clamp(1.0, max_weight)
    return torch.where(own > 0, w, torch.ones_like(w))


def star_targets(label: torch.Tensor, stride: int, ray_dirs: torch.Tensor, max_dist: int,
                 chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Training targets on the stride grid of an (H, W) instance label image.

    Each grid cell is sampled at pixel (stride*i + stride//2, stride*j + stride//2). Inside a nucleus, its
    distance along each ray (``ray_dirs``, (R, 2) unit x, y) is found by stepping one pixel at a time until the
    pixel holds another label or leaves the image, and placed halfway between the last pixel inside and the
    first outside; rays longer than ``max_dist`` stop there. ``prob`` is the cell's smallest ray distance over
    the largest one among the cells of its nucleus (1 at the most central cell, towards 0 at the edge).
    Returns prob (h, w) and dist (R, h, w), both 0 outside nuclei."""
    label = label.to(torch.int64)
    H, W = label.shape
    ys, xs = _cell_centres(H, stride, label.device), _cell_centres(W, stride, label.device)
    own = label[ys][:, xs]
    n_rays = ray_dirs.shape[0]
    prob = torch.zeros(own.shape, dtype=torch.float32, device=label.device)
    dist = torch.zeros((n_rays,) + tuple(own.shape), dtype=torch.float32, device=label.device)
    fy, fx = torch.nonzero(own > 0, as_tuple=True)
    if len(fy) == 0:
        return prob, dist
    ids = own[fy, fx]
    steps = torch.arange(1, max_dist + 1, dtype=torch.float32, device=label.device)
    d = torch.empty((len(fy), n_rays), dtype=torch.float32, device=label.device)
    for s in range(0, len(fy), chunk):  # bounded memory: (chunk, rays, max_dist) samples at a time
        py, px = ys[fy[s : s + chunk]].float(), xs[fx[s : s + chunk]].float()
        sy = torch.round(py[:, None, None] + ray_dirs[None, :, 1, None] * steps).to(torch.int64)
        sx = torch.round(px[:, None, None] + ray_dirs[None, :, 0, None] * steps).to(torch.int64)
        inb = (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
        inside = inb & (label[sy.clamp(0, H - 1), sx.clamp(0, W - 1)] == ids[s : s + chunk, None, None])
        outside = ~inside
        first = outside.to(torch.uint8).argmax(2)  # index of the first step outside
        d[s : s + chunk] = torch.where(outside.any(2), first.float() + 0.5, float(max_dist))
    dist[:, fy, fx] = d.T
    centrality = d.min(1).values
    top = torch.zeros(int(ids.max()) + 1, dtype=torch.float32, device=label.device)
    top = top.scatter_reduce(0, ids, centrality, reduce="amax")
    prob[fy, fx] = centrality / top[ids]
    return prob, dist

