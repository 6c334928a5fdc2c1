"""Two of torchvision's detection parts, giving exactly their outputs in less CPU time.

Profiled on a real 1024x1024 tile with the shipped contour model (``scripts/profile_inference.py``), two steps
took more than half of the inference time, neither for a reason the output needs:

- **Proposal NMS.** The RPN keeps the ``pre_nms_top_n`` best anchors of each level (4 x 6,000 = 24,000 boxes),
  runs NMS over all of them, and then keeps only the first ``post_nms_top_n`` (3,000) survivors. Greedy NMS
  visits boxes by descending score, so its first K survivors depend only on the boxes visited before the K-th
  survivor: a prefix of the visiting order. :func:`first_survivors` runs NMS on a growing prefix (all boxes
  scoring at least the M-th best score, ties included, in their original order) until it holds K survivors.
  ``scripts/profile_inference.py`` measures the step before and after (docs/history/measurements.md, "Inference: the same detections in 0.52 s per tile instead of 0.84").
- **RoIAlign** runs on one core in torchvision's CPU kernel, whatever ``torch.get_num_threads()`` says.
  :class:`ThreadedMultiScaleRoIAlign` pools contiguous slices of the boxes on torch's threads (each box's
  result is independent of the others) and joins them in order.

Both equal torchvision's results bit for bit (``tests/test_fast_heads.py``, on real tiles); where proposal scores
tie exactly, survivors come in index order, where torchvision leaves their order to an unstable sort.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops


def in_visiting_order(keep: Tensor, scores: Tensor) -> Tensor:
    """Kept indices by descending score, ties by index. torchvision's ``batched_nms`` returns this order except
    among tied scores above 1,000 boxes on the CPU, where it merges its groups with an unstable sort."""
    keep = keep.sort().values
    return keep[scores[keep].sort(descending=True, stable=True).indices]


def first_survivors(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, limit: int) -> Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, groups, iou_threshold)[:limit]`` (ties in index order, see
    :func:`in_visiting_order`), computed on the shortest prefix of the visiting order that holds ``limit``
    survivors."""
    n = len(scores)
    if n <= 2 * limit:
        return in_visiting_order(box_ops.batched_nms(boxes, scores, groups, iou_threshold), scores)[:limit]
    ranked = scores.sort(descending=True).values
    m = 2 * limit
    while m < n:
        # every box at or above the m-th best score (ties at the cut included): a prefix of the visiting order
        prefix = torch.nonzero(scores >= ranked[m - 1]).squeeze(1)
        keep = box_ops.batched_nms(boxes[prefix], scores[prefix], groups[prefix], iou_threshold)
        if len(keep) >= limit:
            return prefix[in_visiting_order(keep, scores[prefix])[:limit]]
        # not enough: grow the prefix by the share that survived so far, with a margin
        m = max(int(m * 1.25), int(m * 1.15 * limit / max(len(keep), 1)))
    return in_visiting_order(box_ops.batched_nms(boxes, scores, groups, iou_threshold), scores)[:limit]


class PrefixNMSRegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with :func:`first_survivors` for its per-level NMS and top-k. Same parts, parameters and
    state dict; made from a built RPN by :func:`use_fast_heads`."""

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        # torchvision 0.29's RegionProposalNetwork.filter_proposals, but for the NMS step
        num_images = proposals.shape[0]
        device = proposals.device
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), idx, dtype=torch.int64, device=device)
                            for idx, n in enumerate(num_anchors_per_level)], 0)
        levels = levels.reshape(1, -1).expand_as(objectness)
        top_n_idx = self._get_top_n_idx(objectness, num_anchors_per_level)
        batch_idx = torch.arange(num_images, device=device)[:, None]
        objectness = objectness[batch_idx, top_n_idx]
        levels = levels[batch_idx, top_n_idx]
        proposals = proposals[batch_idx, top_n_idx]
        objectness_prob = torch.sigmoid(objectness)
        final_boxes, final_scores = [], []
        for boxes, scores, lvl, img_shape in zip(proposals, objectness_prob, levels, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, img_shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = first_survivors(boxes, scores, lvl, self.nms_thresh, self.post_nms_top_n())
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores


_POOL: tuple[ThreadPoolExecutor, int] | None = None  # the process's RoIAlign threads, and how many
_POOL_LOCK = threading.Lock()
MIN_BOXES_PER_THREAD = 64  # below this a thread's start costs more than it saves


def _pool(threads: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[1] < threads:  # a larger pool replaces it; the old one's threads finish and go
            _POOL = (ThreadPoolExecutor(max_workers=threads, thread_name_prefix="roi-align"), threads)
        return _POOL[0]


class ThreadedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign, its boxes pooled in contiguous slices on ``torch.get_num_threads()``
    threads on the CPU (torchvision's RoIAlign kernel uses one core). Results are joined in the boxes' order."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        threads = torch.get_num_threads()
        total = sum(len(b) for b in boxes)
        first = next(iter(x.values()))
        if first.device.type != "cpu" or threads < 2 or total < 2 * MIN_BOXES_PER_THREAD or torch.jit.is_scripting():
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:  # set up here, not by racing threads
            super().forward(x, [b[:0] for b in boxes], image_shapes)
        parts = min(threads, total // MIN_BOXES_PER_THREAD)
        bounds = [total * k // parts for k in range(parts + 1)]
        offsets = [0]
        for b in boxes:
            offsets.append(offsets[-1] + len(b))

        def slice_of(k):  # rows bounds[k]:bounds[k+1] of the image-major concatenation, as per-image lists
            lo, hi = bounds[k], bounds[k + 1]
            return [b[max(lo - o, 0):max(min(hi - o, len(b)), 0)] for b, o in zip(boxes, offsets)]

        pool_slice = super().forward
        # grad and inference modes are per thread: the pool's threads take the caller's
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(k):
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return pool_slice(x, slice_of(k), image_shapes)

        futures = [_pool(parts).submit(run, k) for k in range(parts)]
        return torch.cat([f.result() for f in futures], 0)


def use_fast_heads(model) -> None:
    """Give a built Faster/Mask R-CNN the parts above, in place: its RPN class (same state) and its RoI poolers
    (same settings). Outputs do not change."""
    model.rpn.__class__ = PrefixNMSRegionProposalNetwork  # adds no state: only filter_proposals differs
    heads = model.roi_heads
    for name in ("box_roi_pool", "mask_roi_pool"):
        pool = getattr(heads, name, None)
        if type(pool) is MultiScaleRoIAlign:
            pool.__class__ = ThreadedMultiScaleRoIAlign
