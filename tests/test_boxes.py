"""Greedy suppression among boxes (boxes.py): NMS as torchvision's, nested boxes as their definition."""

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("seed", range(6))
def test_numpy_nms_keeps_what_torchvision_keeps(seed):
    from torchvision.ops import nms as tv_nms

    from wsinuclei.boxes import nms

    rng = np.random.default_rng(seed)
    n = [0, 1, 50, 800, 3000, 3000][seed]
    xy = rng.uniform(0, 1024, (n, 2))
    wh = rng.uniform(1, 60, (n, 2))
    boxes = np.hstack([xy, xy + wh]).astype(np.float32)
    if seed == 5:  # nuclei-like: tight clusters of near-duplicates, as neighbouring peaks give
        boxes = np.repeat(boxes[:300], 10, axis=0) + rng.normal(0, 2, (3000, 4)).astype(np.float32)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = rng.uniform(0, 1, len(boxes)).astype(np.float32)
    thr = [0.5, 0.5, 0.3, 0.4, 0.7, 0.4][seed]
    want = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, thr), want)


def test_nested_boxes_are_found_as_the_pairwise_definition_says():
    from wsinuclei.boxes import nested_in_better

    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 300, (400, 2))
    boxes = np.hstack([xy, xy + rng.uniform(2, 50, (400, 2))])
    scores = rng.uniform(0, 1, 400)
    # the definition, box by box: best first, a box goes when a kept better box holds > 60 % of its area
    order = np.argsort(-scores, kind="stable")
    dropped = []
    for r, k in enumerate(order):
        for q in order[:r]:
            if q in dropped:
                continue
            lt = np.maximum(boxes[k, :2], boxes[q, :2])
            rb = np.minimum(boxes[k, 2:], boxes[q, 2:])
            inter = np.prod(np.clip(rb - lt, 0, None))
            if inter / np.prod(boxes[k, 2:] - boxes[k, :2]) > 0.6:
                dropped.append(k)
                break
    assert len(dropped) > 20
    np.testing.assert_array_equal(np.sort(nested_in_better(boxes, scores, 0.6)), np.sort(dropped))
