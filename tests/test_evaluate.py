import numpy as np
import pytest

from wsinuclei import evaluate as ev


def row(x, w=10.0):
    """A box of height 10 starting at x: IoU between such boxes is 1-D interval IoU."""
    return [x, 0.0, x + w, 10.0]


def greedy_tp(pred, scores, truth, thr):
    """COCO-style greedy pairing, written here only to show where it differs from Hungarian pairing."""
    iou = ev.box_iou(pred, truth)
    used, tp = set(), 0
    for i in np.argsort(-np.asarray(scores)):
        cands = [(iou[i, j], j) for j in range(len(truth)) if j not in used and iou[i, j] >= thr]
        if cands:
            used.add(max(cands)[1])
            tp += 1
    return tp


def test_crowded_scene_hungarian_beats_greedy():
    truth = np.array([row(0), row(4.25)])
    pred = np.array([row(2.5), row(6.75)])  # P0: IoU .60 with A, .70 with B; P1: .19 with A, .60 with B
    scores = [0.9, 0.8]
    assert greedy_tp(pred, scores, truth, 0.5) == 1
    c = ev.count(pred, scores, truth, score_threshold=0.5, iou_threshold=0.5)
    assert (c.tp, c.fp, c.fn) == (2, 0, 0)
    pi, ti, q = ev.match(pred, truth, 0.5)
    assert sorted(zip(pi.tolist(), ti.tolist())) == [(0, 0), (1, 1)]
    np.testing.assert_allclose(sorted(q), [0.6, 0.6], atol=1e-9)


def test_duplicate_predictions_one_tp_one_fp():
    truth = np.array([row(0)])
    pred = np.array([row(0), row(0.5)])
    c = ev.count(pred, [0.9, 0.8], truth)
    assert (c.tp, c.fp, c.fn) == (1, 1, 0)
    assert c.precision == 0.5 and c.recall == 1.0


def test_empty_predictions_and_empty_truth():
    truth = np.array([row(0), row(20)])
    c = ev.count(np.zeros((0, 4)), np.zeros(0), truth)
    assert (c.tp, c.fp, c.fn, c.f1) == (0, 0, 2, 0.0)
    c = ev.count(np.array([row(0)]), [0.9], np.zeros((0, 4)))
    assert (c.tp, c.fp, c.fn, c.f1) == (0, 1, 0, 0.0)
    c = ev.count(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4)))
    assert c.f1 == 1.0
    res = ev.evaluate_set([("a", np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4)))])
    assert np.isnan(res["AP@0.5"])


def test_threshold_exactly_at_pair_iou():
    truth = np.array([[0.0, 0.0, 10.0, 10.0]])
    pred = np.array([[0.0, 0.0, 10.0, 20.0]])  # IoU exactly 0.5
    assert ev.box_iou(pred, truth)[0, 0] == 0.5
    assert ev.count(pred, [1.0], truth, iou_threshold=0.5).tp == 1
    assert ev.count(pred, [1.0], truth, iou_threshold=0.5000001).tp == 0


def test_score_threshold_is_inclusive():
    truth = np.array([row(0)])
    assert ev.count(np.array([row(0)]), [0.5], truth, score_threshold=0.5).tp == 1
    assert ev.count(np.array([row(0)]), [0.4999], truth, score_threshold=0.5).tp == 0


def test_ties_in_score_do_not_depend_on_order():
    truth = np.array([row(0)])
    a = ev.evaluate_set([("x", np.array([row(0), row(50)]), np.array([0.7, 0.7]), truth)])
    b = ev.evaluate_set([("x", np.array([row(50), row(0)]), np.array([0.7, 0.7]), truth)])
    assert a["AP@0.5"] == pytest.approx(0.5)
    assert b["AP@0.5"] == pytest.approx(0.5)


def test_missed_nuclei_count_in_recall_denominator():
    truth = np.array([row(0), row(100)])
    res = ev.evaluate_set([("x", np.array([row(0)]), np.array([0.9]), truth)])
    assert res["AP@0.5"] == pytest.approx(0.5)  # recall reaches 0.5 only, at precision 1


def reference_ap(flags, scores, n_truth):
    """pycocotools-style all-point AP, written independently: precision at each rank, made monotone, summed
    over the recall increments."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tp = fp = 0
    points = []
    for i in order:
        tp += flags[i]
        fp += 1 - flags[i]
        points.append((tp / n_truth, tp / (tp + fp)))
    ap, prev_r = 0.0, 0.0
    for k, (r, _) in enumerate(points):
        best_p = max(p for _, p in points[k:])
        ap += (r - prev_r) * best_p
        prev_r = r
    return ap


def test_ap_matches_reference_and_sklearn_on_random_case():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(7)
    truth = rng.uniform(0, 500, (60, 2))
    truth = np.c_[truth, truth + rng.uniform(8, 30, (60, 2))]
    jitter = rng.normal(0, 3, truth.shape)
    pred = np.r_[truth[:45] + jitter[:45], rng.uniform(0, 500, (20, 2)).repeat(2, axis=1) + [0, 0, 15, 15]]
    scores = rng.uniform(0, 1, len(pred))
    pi, _, _ = ev.match(pred, truth, 0.5)
    flags = np.zeros(len(pred))
    flags[pi] = 1
    ap, prec, rec = ev.average_precision(flags, scores, len(truth))
    assert abs(ap - reference_ap(flags.tolist(), scores.tolist(), len(truth))) < 1e-9
    # sklearn's curve counts recall over the predictions' positives only: rescale to all annotations
    p, r, _ = precision_recall_curve(flags, scores)
    r = r * flags.sum() / len(truth)
    order = np.argsort(r)
    r, p = r[order], p[order]
    env = np.maximum.accumulate(p[::-1])[::-1]
    sk_ap = float(np.sum(np.diff(np.r_[0.0, r]) * env))
    assert abs(ap - sk_ap) < 1e-9
    res = ev.evaluate_set([("x", pred, scores, truth)])
    assert res["AP@0.5"] == pytest.approx(ap, abs=1e-12)
    assert 0 < res["PR-AUC"] <= 1


def test_centroid_pairing_radius():
    truth = np.array([[0.0, 0.0, 20.0, 20.0]])
    near = np.array([[11.0, 0.0, 31.0, 20.0]])  # centre 11 px away, IoU 0.29
    assert ev.count(near, [1.0], truth, radius=12).tp == 1
    assert ev.count(near, [1.0], truth, radius=10).tp == 0
    assert ev.count(near, [1.0], truth, iou_threshold=0.5).tp == 0


def test_score_cuts_hand_computed():
    """Truth at 0, 20, 40; predictions: a match at 0.9, a stray box at 0.8, a match at 0.6 (IoU 0.82) and one
    at 0.3. Each cut keeps the predictions at or above it."""
    truth = np.array([row(0), row(20), row(40)])
    pred = np.array([row(100), row(0), row(41), row(21)])  # not in score order: the cuts sort them
    scores = np.array([0.8, 0.9, 0.3, 0.6])
    rows = {r["score"]: r for r in ev.score_cuts([("x", pred, scores, truth)], (0.2, 0.5, 0.7, 0.85))}
    got = {c: (r["boxes"]["tp"], r["boxes"]["fp"], r["boxes"]["fn"]) for c, r in rows.items()}
    assert got == {0.85: (1, 0, 2), 0.7: (1, 1, 2), 0.5: (2, 1, 1), 0.2: (3, 1, 0)}
    assert {c: r["centroid"]["tp"] for c, r in rows.items()} == {0.85: 1, 0.7: 1, 0.5: 2, 0.2: 3}
    table = list(rows.values())
    assert ev.best_cut(table, "boxes")["score"] == 0.2  # F1 0.857
    assert ev.best_cut(table, "boxes", min_precision=0.7)["score"] == 0.2  # precision 0.75, recall 1
    assert ev.best_cut(table, "boxes", min_precision=0.8)["score"] == 0.85  # the only cut at precision 1
    unscored = ev.score_cuts([("x", pred, None, truth)], (0.2, 0.9))  # no scores: every cut keeps every box
    assert [(r["boxes"]["tp"], r["boxes"]["fp"], r["boxes"]["fn"]) for r in unscored] == [(3, 1, 0), (3, 1, 0)]
    only_strays = ev.score_cuts([("x", np.array([row(200)]), np.array([0.9]), truth)], (0.5,))
    assert ev.best_cut(only_strays, "boxes", min_precision=0.5) is None


def test_score_cuts_agree_with_the_operating_point_counts():
    """Every cut's counts are those `count` gives at that score threshold, for both pairings, pooled over
    images (the table reuses one IoU and one distance matrix per image: this checks the reuse)."""
    rng = np.random.default_rng(4)
    items = []
    for k in range(3):
        truth = np.concatenate([rng.uniform(0, 200, (40, 2)), rng.uniform(6, 16, (40, 2))], 1)
        truth[:, 2:] += truth[:, :2]
        pred = truth[rng.permutation(40)[:30]] + rng.normal(0, 3, (30, 4))
        pred = np.concatenate([pred, truth[:10] + rng.normal(0, 6, (10, 4))])
        items.append((f"i{k}", pred, rng.uniform(0.05, 1, len(pred)), truth))
    cuts = (0.1, 0.35, 0.6, 0.85)
    table = ev.score_cuts(items, cuts, iou_threshold=0.5, radius_px=5.0)
    for r, cut in zip(table, cuts):
        for pairing, kw in (("boxes", {"iou_threshold": 0.5}), ("centroid", {"radius": 5.0})):
            want = sum((ev.count(p, s, t, score_threshold=cut, **kw) for _, p, s, t in items), ev.Counts())
            assert (r[pairing]["tp"], r[pairing]["fp"], r[pairing]["fn"]) == (want.tp, want.fp, want.fn)
    assert len({r["boxes"]["tp"] for r in table}) > 1  # the cuts do cut


def test_map_and_per_threshold_ap():
    truth = np.array([row(0), row(30)])
    pred = np.array([row(1), row(34)])  # IoU .82 and .43
    res = ev.evaluate_set([("x", pred, np.array([0.9, 0.8]), truth)])
    assert res["ap"]["0.40"] == pytest.approx(1.0)
    assert res["ap"]["0.50"] == pytest.approx(0.5)
    assert res["ap"]["0.85"] == pytest.approx(0.0)
    assert len(res["ap"]) == 17
    assert res["mAP"] == pytest.approx(np.mean(list(res["ap"].values())))


def test_border_margin_drops_edge_boxes():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    kept, scores = ev.apply_border_margin(boxes, np.array([1.0, 0.5]), (100, 100), 8)
    assert kept.tolist() == [[50.0, 50.0, 60.0, 60.0]] and scores.tolist() == [0.5]


def test_chain_of_boxes_pairs_as_many_as_possible():
    """P1 overlaps T1 a little and T2 a lot, P2 likewise T2/T3, P3 only T3 a little. At IoU 0.1 three pairs
    exist (P1-T1, P2-T2, P3-T3); weighting pairs by 1 + IoU found only the two big overlaps."""
    truth = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10]], float)
    pred = np.array([[8, 0, 19, 10], [18, 0, 29, 10], [28, 0, 39, 10]], float)
    pi, ti, q = ev.match(pred, truth, 0.1)
    assert sorted(zip(pi.tolist(), ti.tolist())) == [(0, 0), (1, 1), (2, 2)]
    res = ev.evaluate_set([("chain", pred, np.array([0.9, 0.8, 0.7]), truth)], iou_thresholds=(0.1, 0.5))
    assert res["AP@0.1"] == 1.0
    # among pairings of equal size the larger overlap wins: at IoU 0.5 only P1-T2 and P2-T3 exist
    pi, ti, _ = ev.match(pred, truth, 0.5)
    assert sorted(zip(pi.tolist(), ti.tolist())) == [(0, 1), (1, 2)]


def test_pr_auc_exact_on_a_hand_computed_curve():
    """TP at 0.9, FP at 0.8, TP at 0.7, two nuclei: the curve (0.5, 1), (0.5, 0.5), (1, 2/3); trapezoids
    from (0, 1): 0.5 + 0 + 0.5 * (0.5 + 2/3) / 2 = 0.791666..."""
    truth = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float)
    pred = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [50, 50, 60, 60]], float)
    res = ev.evaluate_set([("x", pred, np.array([0.9, 0.8, 0.7]), truth)])
    assert abs(res["PR-AUC"] - (0.5 + 0.5 * (0.5 + 2 / 3) / 2)) < 1e-12
    assert abs(res["AP@0.5"] - (0.5 + 0.5 * 2 / 3)) < 1e-12
