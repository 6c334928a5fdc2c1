"""The fast detection parts (models/fast_heads.py) give torchvision's outputs bit for bit."""

import numpy as np
import pytest
import torch
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

from conftest import MONUSEG, synthetic_he
from wsinuclei.models.fast_heads import (PrefixNMSRegionProposalNetwork, ThreadedMultiScaleRoIAlign,
                                         first_survivors, in_visiting_order)

SHIPPED = "src/wsinuclei/weights/contours_default.safetensors"


def random_boxes(n, seed, levels=4, distinct_scores=None):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = 4 + torch.rand(n, 2, generator=g) * 30
    scores = torch.rand(n, generator=g)
    if distinct_scores:  # many exact ties, as saturated sigmoids give
        scores = (scores * distinct_scores).floor() / distinct_scores
    return torch.cat([xy, xy + wh], 1), scores, torch.randint(0, levels, (n,), generator=g)


@pytest.mark.parametrize("n, limit, distinct", [(3000, 200, None), (3000, 200, 5), (5000, 1000, 3), (300, 200, None),
                                                (4000, 3900, None), (2000, 100, 1)])
def test_first_survivors_equal_nms_then_top_k(n, limit, distinct):
    boxes, scores, groups = random_boxes(n, seed=n + limit, distinct_scores=distinct)
    full = box_ops.batched_nms(boxes, scores, groups, 0.7)
    got = first_survivors(boxes, scores, groups, 0.7, limit)
    # torchvision's order, but tied scores in index order (its merge sorts them unstably)
    torch.testing.assert_close(got, in_visiting_order(full, scores)[:limit], rtol=0, atol=0)
    assert set(full.tolist()) == set(in_visiting_order(full, scores).tolist())
    if distinct is None:  # no ties: torchvision's very output
        torch.testing.assert_close(got, full[:limit], rtol=0, atol=0)


def test_first_survivors_grow_the_prefix_until_enough_survive():
    # every box the same: one survivor per group whatever the prefix, so the prefix grows to all boxes
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(1000, 1)
    scores = torch.linspace(1, 0, 1000)
    groups = torch.arange(1000) % 4
    got = first_survivors(boxes, scores, groups, 0.5, 10)
    torch.testing.assert_close(got, torch.arange(4), rtol=0, atol=0)


def test_threaded_roi_align_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    feats = {"0": torch.randn(2, 8, 64, 64, generator=g), "1": torch.randn(2, 8, 32, 32, generator=g)}
    boxes = [torch.rand(300, 2, generator=g) * 200 for _ in range(2)]
    boxes = [torch.cat([b, b + 4 + torch.rand(len(b), 2, generator=g) * 60], 1) for b in boxes]
    boxes[1] = boxes[1][:77]  # images with unequal counts: slices cross the image boundary
    shapes = [(256, 256)] * 2
    plain = MultiScaleRoIAlign(["0", "1"], 7, 2)
    threaded = ThreadedMultiScaleRoIAlign(["0", "1"], 7, 2)
    before = torch.get_num_threads()
    try:
        for threads in (2, 3):
            torch.set_num_threads(threads)
            torch.testing.assert_close(threaded(feats, boxes, shapes), plain(feats, boxes, shapes), rtol=0, atol=0)
    finally:
        torch.set_num_threads(before)


def test_threaded_roi_align_passes_gradients_as_torchvision_does():
    g = torch.Generator().manual_seed(1)
    boxes = [torch.rand(400, 2, generator=g) * 100]
    boxes = [torch.cat([boxes[0], boxes[0] + 4 + torch.rand(400, 2, generator=g) * 20], 1)]
    grads = []
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for pool in (MultiScaleRoIAlign(["0"], 7, 2), ThreadedMultiScaleRoIAlign(["0"], 7, 2)):
            feats = {"0": torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2), requires_grad=True)}
            (pool(feats, boxes, [(128, 128)]) ** 2).sum().backward()
            grads.append(feats["0"].grad)
    finally:
        torch.set_num_threads(before)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0])


def plain_torchvision(model):
    """The same model with torchvision's own RPN and RoI poolers."""
    model.rpn.__class__ = RegionProposalNetwork
    for name in ("box_roi_pool", "mask_roi_pool"):
        if hasattr(model.roi_heads, name):
            getattr(model.roi_heads, name).__class__ = MultiScaleRoIAlign
    return model


def test_the_shipped_model_gives_torchvision_outputs_on_real_tiles():
    from wsinuclei.checkpoint import load_model

    fast = load_model(SHIPPED).model.eval()
    plain = plain_torchvision(load_model(SHIPPED).model.eval())
    assert isinstance(fast.rpn, PrefixNMSRegionProposalNetwork)
    assert isinstance(fast.roi_heads.box_roi_pool, ThreadedMultiScaleRoIAlign)
    tiles = [synthetic_he(512, 512, seed=4, n_nuclei=300)[0]]
    images = sorted(p for p in (MONUSEG / "train").glob("*.png") if not p.stem.endswith("_labels")) \
        if (MONUSEG / "train").is_dir() else []
    if images:
        from PIL import Image

        tiles.append(np.array(Image.open(images[0]).convert("RGB"))[:768, :768])
    for tile in tiles:
        x = torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1).float() / 255
        with torch.inference_mode():
            a, b = fast([x])[0], plain([x])[0]
        assert len(a["boxes"]) > 50
        for key in ("boxes", "scores", "masks"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
