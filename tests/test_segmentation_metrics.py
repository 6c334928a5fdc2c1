"""AJI, AJI+, PQ and Dice on hand-computed cases and against a direct transcription of Kumar et al.'s AJI."""

import numpy as np
import pytest

from wsinuclei.segmentation_metrics import evaluate_segmentation, rasterise, segmentation_counts


def _img(*rects, shape=(20, 30)):
    lab = np.zeros(shape, np.int32)
    for k, (y0, y1, x0, x1) in enumerate(rects, 1):
        lab[y0:y1, x0:x1] = k
    return lab


def test_perfect_prediction():
    t = _img((0, 10, 0, 10), (12, 18, 15, 25))
    f = segmentation_counts(t, t * 7).figures()  # label numbers do not matter
    assert f["aji"] == f["aji_plus"] == f["pq"] == f["dice"] == 1.0 and (f["tp"], f["fp"], f["fn"]) == (2, 0, 0)


def test_split_nucleus():
    """One 10x10 nucleus predicted as two halves: IoU 0.5 each. AJI: C 50, U 100 + the unused half 50 = 1/3.
    PQ: no pair above 0.5, so 1 FN and 2 FP, PQ 0. Dice 1 (the pixels are all right)."""
    f = segmentation_counts(_img((0, 10, 0, 10)), _img((0, 10, 0, 5), (0, 10, 5, 10))).figures()
    assert f["aji"] == pytest.approx(1 / 3) and f["aji_plus"] == pytest.approx(1 / 3)
    assert (f["tp"], f["fp"], f["fn"]) == (0, 2, 1) and f["pq"] == 0 and f["dice"] == 1.0


def test_merged_pair():
    """Two touching nuclei predicted as one: AJI lets both use it (C 100, U 200 = 0.5); AJI+ pairs one
    (C 50, U 100 + the other nucleus 50 = 1/3)."""
    f = segmentation_counts(_img((0, 10, 0, 5), (0, 10, 5, 10)), _img((0, 10, 0, 10))).figures()
    assert f["aji"] == pytest.approx(0.5) and f["aji_plus"] == pytest.approx(1 / 3) and f["pq"] == 0


def test_partial_overlap_pq_and_missed_nucleus():
    """Prediction 10x8 inside a 10x10 nucleus (IoU 0.8), a second nucleus missed, one false prediction."""
    t = _img((0, 10, 0, 10), (12, 16, 20, 24))
    p = _img((0, 10, 0, 8), (15, 19, 0, 4))
    f = segmentation_counts(t, p).figures()
    assert (f["tp"], f["fp"], f["fn"]) == (1, 1, 1)
    assert f["sq"] == pytest.approx(0.8) and f["dq"] == pytest.approx(0.5) and f["pq"] == pytest.approx(0.4)
    # AJI: C 80, U 100 (pair) + 16 (missed) + 16 (unused prediction)
    assert f["aji"] == pytest.approx(80 / 132)


def test_empty_images_say_nothing_but_count_when_pooled():
    empty = np.zeros((10, 10), np.int32)
    res = evaluate_segmentation([("empty", empty, empty), ("one", _img((0, 4, 0, 4), shape=(10, 10)), empty)])
    assert np.isnan(res["per_image"][0]["aji"]) and np.isnan(res["per_image"][0]["pq"])
    assert res["per_image"][1]["aji"] == 0.0 and res["mean"]["aji"] == 0.0
    assert res["pooled"]["fn"] == 1


def _kumar_aji(gt, pred):
    """AJI as written in Kumar et al. 2017 (Algorithm 1), one nucleus at a time with boolean masks."""
    g_ids = [i for i in np.unique(gt) if i]
    s_ids = [j for j in np.unique(pred) if j]
    used, c, u = set(), 0, 0
    for i in g_ids:
        g = gt == i
        best, best_j = 0.0, None
        for j in s_ids:
            s = pred == j
            inter = (g & s).sum()
            iou = inter / (g | s).sum()
            if iou > best:
                best, best_j = iou, j
        if best_j is None:
            u += g.sum()
            continue
        s = pred == best_j
        c += (g & s).sum()
        u += (g | s).sum()
        used.add(best_j)
    for j in s_ids:
        if j not in used:
            u += (pred == j).sum()
    return c / u


def test_aji_equals_the_papers_algorithm_on_random_scenes():
    from skimage.draw import disk

    rng = np.random.default_rng(0)
    for _ in range(5):
        gt = np.zeros((80, 80), np.int32)
        pred = np.zeros((80, 80), np.int32)
        for k in range(1, 15):
            cy, cx = rng.uniform(5, 75, 2)
            gt[disk((cy, cx), rng.uniform(3, 7), shape=gt.shape)] = k
            if rng.random() < 0.8:
                pred[disk((cy + rng.normal(0, 1.5), cx + rng.normal(0, 1.5)), rng.uniform(3, 7), shape=gt.shape)] = k
        assert segmentation_counts(gt, pred).figures()["aji"] == pytest.approx(_kumar_aji(gt, pred), abs=1e-12)


def test_rasterise_fills_pixel_centres_inside_and_higher_scores_win():
    square = np.array([[2, 2], [6, 2], [6, 5], [2, 5]], float)  # edges: columns 2-5, rows 2-4
    other = square + [2, 0]
    lab = rasterise([square, other], (8, 10), scores=[0.9, 0.5])
    assert (lab == 1).sum() == 12 and (lab == 2).sum() == 6  # 4x3 square wins its overlap with the other
    assert lab[2, 2] == 1 and lab[4, 5] == 1 and lab[4, 7] == 2 and lab[5, 2] == 0
