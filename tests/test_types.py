"""Nucleus types: readers, the type head's targets and loss, decoding, fixed normalisation, HoVer-Net's F_t."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsinuclei.errors import WsinucleiError
from wsinuclei.nucleus_types import TYPE_NAMES, read_label_types, read_point_types, types_of_points, types_path
from wsinuclei.type_metrics import TypeCounts, pair_centres


def test_types_path_sits_beside_every_annotation_kind(tmp_path):
    assert types_path(tmp_path / "a_labels.png") == tmp_path / "a_types.csv"
    assert types_path(tmp_path / "a_points.csv") == tmp_path / "a_types.csv"
    assert types_path(tmp_path / "a.png") == tmp_path / "a_types.csv"


def test_label_types_become_a_lookup_table_by_label(tmp_path):
    f = tmp_path / "a_types.csv"
    f.write_text("label,type\n1,epithelial\n3,Stromal\n")
    lut = read_label_types(f, 4)
    assert lut.tolist() == [-1, 0, -1, 2, -1]
    f.write_text("label,type\n5,epithelial\n")
    with pytest.raises(WsinucleiError, match="not in the label image"):
        read_label_types(f, 4)
    f.write_text("label,type\n1,macrophage\n")
    with pytest.raises(WsinucleiError, match="unknown nucleus type 'macrophage'"):
        read_label_types(f, 4)


def test_point_types_are_matched_to_centres_by_place(tmp_path):
    f = tmp_path / "a_types.csv"
    f.write_text("x,y,type\n10.5,20.0,inflammatory\n30,40,other\n")
    xy, types = read_point_types(f)
    assert types.tolist() == [1, 3]
    points = np.array([[30.0, 40.0], [1.0, 1.0], [10.5, 20.0]])
    assert types_of_points(points, xy, types).tolist() == [3, -1, 1]
    f.write_text("x,y,type\nnan,2,other\n")
    with pytest.raises(WsinucleiError, match="finite"):
        read_point_types(f)


def test_f_t_on_a_hand_made_case():
    # truth: 4 nuclei (types 0, 0, 1, 2); predictions: 3 paired (types 0, 1, 1) and one far away of type 0
    truth = np.array([[0, 0], [100, 0], [200, 0], [300, 0]], float)
    truth_t = np.array([0, 0, 1, 2])
    pred = np.array([[1, 0], [101, 0], [201, 0], [500, 500]], float)
    pred_t = np.array([0, 1, 1, 0])
    tc = TypeCounts(4).add(pred, pred_t, truth, truth_t, radius=5)
    det = tc.detection
    assert (det["tp"], det["fp"], det["fn"]) == (3, 1, 1)
    assert det["f_d"] == pytest.approx(6 / 8)
    # type 0: TP 1, FP 0, FN 1 (truth 0 said 1), FP_d 1 (the far prediction), FN_d 0
    assert tc.f_type(0) == pytest.approx(2 / (2 + 2 + 1))
    # type 1: TP 1, FP 1, FN 0, FP_d 0, FN_d 0
    assert tc.f_type(1) == pytest.approx(2 / (2 + 2))
    # type 2: never said; the one true type-2 nucleus unpaired (FN_d 1): F_t 0
    assert tc.f_type(2) == 0.0
    assert np.isnan(tc.f_type(3))  # neither present nor said
    assert tc.accuracy == pytest.approx(2 / 3)
    assert tc.confusion[0].tolist() == [1, 1, 0, 0] and tc.confusion[1].tolist() == [0, 1, 0, 0]


def test_a_constant_guess_scores_zero_on_the_types_it_never_says():
    truth = np.array([[0, 0], [50, 0], [100, 0]], float)
    tc = TypeCounts(4).add(truth, [0, 0, 0], truth, [0, 1, 2], radius=3)
    assert tc.f_type(1) == 0.0 and tc.f_type(2) == 0.0 and tc.f_type(0) > 0


def test_untyped_truth_counts_for_detection_but_not_for_types():
    truth = np.array([[0, 0], [50, 0]], float)
    tc = TypeCounts(4).add(truth, [1, 1], truth, [-1, 1], radius=3)
    assert tc.detection["tp"] == 2
    assert tc.f_type(1) == 1.0 and tc.accuracy == 1.0


def test_pairing_is_the_minimum_total_distance_assignment_within_the_radius():
    # greedy nearest-first would pair p0-t1 (distance 1) and leave p1 unpaired; the assignment pairs both
    pred = np.array([[0.0, 0], [2.5, 0]])
    truth = np.array([[-1.5, 0], [1.0, 0]])
    pi, ti = pair_centres(pred, truth, radius=2.0)
    assert sorted(zip(pi.tolist(), ti.tolist())) == [(0, 0), (1, 1)]


def _typed_model(norm="fixed"):
    from wsinuclei.models import build_detector, load_preset

    cfg = load_preset("star")
    cfg.backbone["norm"] = norm
    cfg.star_head.update(n_types=4, type_channels=[16], type_level=1)
    torch.manual_seed(0)
    return build_detector(cfg)


def test_fixed_norms_calibrated_on_one_image_reproduce_groupnorm_on_it():
    from wsinuclei.models.builder import calibrate_fixed_norms

    gn, fixed = _typed_model("group"), _typed_model("fixed")
    state = {k: v for k, v in gn.state_dict().items()}
    fixed.load_state_dict(state, strict=False)
    x = gn.batch([torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(1))])
    assert calibrate_fixed_norms(fixed.backbone, x) == 14
    with torch.no_grad():
        a, b = gn.backbone(x), fixed.backbone(x)
    for k in ("prob", "dist", "types"):
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    # and on another image the fixed model keeps its statistics where GroupNorm takes the image's own
    y = gn.batch([torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(2)) * 0.3])
    with torch.no_grad():
        assert not torch.allclose(gn.backbone(y)["prob"], fixed.backbone(y)["prob"], atol=1e-3)


@pytest.mark.parametrize("norm, same", [("fixed", True), ("group", False)])
def test_with_fixed_norms_a_nucleus_does_not_see_the_far_side_of_its_tile(norm, same):
    model = _typed_model(norm).eval()
    g = torch.Generator().manual_seed(3)
    img = torch.rand(3, 128, 1024, generator=g)
    other = img.clone()
    other[:, :, 640:] = 0.95  # glass over the far part of the tile
    with torch.no_grad():
        a, b = model.backbone(model.batch([img])), model.backbone(model.batch([other]))
    # cells of the first 64 columns (stride 4): far outside the changed region's reach
    close = all(torch.allclose(a[k][..., :16], b[k][..., :16], atol=1e-5) for k in ("prob", "dist", "types"))
    assert close is same


def test_type_loss_trains_only_typed_cells():
    model = _typed_model().train()
    img = torch.rand(3, 64, 64)
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:24, 8:24] = 1
    masks[1, 40:56, 40:56] = 1
    out = model.backbone(model.batch([img]))
    untyped = model.type_loss(out["types"], [img], [{"masks": masks, "types": torch.tensor([-1, -1])}])
    assert float(untyped.detach()) == 0.0
    # one typed nucleus: the loss is the cross-entropy over exactly its cells
    loss = model.type_loss(out["types"], [img], [{"masks": masks, "types": torch.tensor([2, -1])}])
    cells = out["types"][0, :, 2:6, 2:6].reshape(4, -1).T  # stride 4: pixels 8..23 -> cells 2..5
    expected = torch.nn.functional.cross_entropy(cells, torch.full((16,), 2))
    assert torch.allclose(loss, expected, atol=1e-6)


def test_type_probabilities_are_the_mean_softmax_of_the_centre_neighbourhood():
    from wsinuclei.models.star_decode import type_probabilities

    logits = np.zeros((4, 5, 5), np.float32)
    logits[1, 0:3, 0:3] = 10.0  # around (1, 1): type 1 everywhere
    logits[3, 4, 4] = 10.0  # corner: only its own cell and three neighbours inside the map
    p = type_probabilities(logits, np.array([1, 4]), np.array([1, 4]))
    assert p.shape == (2, 4) and np.allclose(p.sum(1), 1)
    assert p[0].argmax() == 1 and p[0, 1] > 0.99
    soft = np.exp(10) / (np.exp(10) + 3)
    assert p[1, 3] == pytest.approx((soft + 3 * 0.25) / 4, rel=1e-5)


def test_prepared_tiles_carry_types_and_crops_keep_them_with_their_masks(tmp_path):
    from PIL import Image

    from wsinuclei.data import CropSampler, Source, load_tiles, prepare_sources

    folder = tmp_path / "set"
    folder.mkdir()
    img = np.full((128, 128, 3), (230, 160, 200), np.uint8)
    labels = np.zeros((128, 128), np.uint16)
    sizes = [6, 7, 8, 9, 10, 11]  # each nucleus a square of its own size: its area names it after any flip
    for i, size in enumerate(sizes):
        y, x = 20 + 40 * (i // 3), 20 + 40 * (i % 3)
        labels[y : y + size, x : x + size] = i + 1
        img[y : y + size, x : x + size] = (90, 50, 140)
    Image.fromarray(img).save(folder / "a.png")
    Image.fromarray(labels).save(folder / "a_labels.png")
    types = [0, 1, 2, 3, 1, 0]
    (folder / "a_types.csv").write_text("label,type\n" + "".join(f"{i + 1},{TYPE_NAMES[t]}\n"
                                                                   for i, t in enumerate(types)))
    prepare_sources([Source("s", folder, kind="labels", use="train")], tmp_path / "prep", tile=128, progress=False)
    (tile,) = load_tiles(tmp_path / "prep", "train")
    assert tile.types.tolist() == [-1] + types
    sampler = CropSampler([tile], 128, np.random.default_rng(0))  # the whole tile: no nucleus is cut
    for _ in range(6):
        crop = sampler.sample_crop()
        assert len(crop.types) == len(crop.masks) == len(sizes)
        by_size = {int(round(np.sqrt(m.sum()))): int(t) for m, t in zip(crop.masks, crop.types)}
        assert by_size == dict(zip(sizes, types))


def test_need_cannot_be_called_inside_a_test_body():
    """need() refuses to run while a test runs (PYTEST_CURRENT_TEST set), so a body call fails loudly instead of
    building a mark that does nothing; checked in a separate process that sets the variable as pytest does.
    And no test file calls it anywhere but as a decorator."""
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    code = "import conftest; conftest.need(conftest.SHARED)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tests, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTEST_CURRENT_TEST": "t.py::t (call)"})
    assert proc.returncode != 0 and "RuntimeError: need() is a decorator" in proc.stderr
    for f in tests.glob("test_*.py"):
        tree = ast.parse(f.read_text())
        decorators = {id(d) for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                      for d in n.decorator_list}
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "need"]
        assert all(id(c) in decorators for c in calls), f"{f.name}: need() called outside a decorator"


def test_types_reach_every_output_of_a_whole_slide_run(tmp_path, stub_detector):
    """A typed stub (conftest.StubDetector.types: wide blobs epithelial, narrow ones inflammatory) on small tiles:
    every nucleus keeps its own type through seams and merging, in the CSV, the GeoJSON classification, the DSA
    groups, run.json and the summary."""
    import csv
    import json

    from wsinuclei.nucleus_types import TYPE_COLOURS
    from wsinuclei.pipeline import RunOptions, format_report, run_slide
    from wsinuclei.synth import write_pyramid_tiff
    from conftest import synthetic_he

    stub_detector.types = True
    stub_detector.loaded.config.star_head = {"n_types": 4}
    img, truth = synthetic_he(700, 800, seed=13, n_nuclei=120)
    path = tmp_path / "typed.tiff"
    write_pyramid_tiff(path, img, mpp=0.25, compression="zlib", min_level_size=300)
    out = tmp_path / "out"
    report = run_slide(path, out, RunOptions(tile_size=256, overlap=32, progress=False, tissue_mask=False,
                                             min_score=0.1), log=lambda *_: None)
    with open(out / "typed.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-5:] == ["type", "p_epithelial", "p_inflammatory", "p_stromal", "p_other"]
    for r in rows:
        wide = float(r["x1"]) - float(r["x0"]) >= stub_detector.big_px
        assert r["type"] == ("epithelial" if wide else "inflammatory")
        assert float(r["p_epithelial"]) == pytest.approx(0.8 if wide else 0.1, abs=1e-4)
    want = {"epithelial": sum(r["type"] == "epithelial" for r in rows),
            "inflammatory": sum(r["type"] == "inflammatory" for r in rows), "stromal": 0, "other": 0}
    assert want["epithelial"] > 5 and want["inflammatory"] > 5
    assert report.nuclei_by_type == want
    assert json.loads((out / "typed.run.json").read_text())["nuclei_by_type"] == want
    assert "by type: epithelial %d, inflammatory %d" % (want["epithelial"], want["inflammatory"]) in format_report(report)
    feats = json.loads((out / "typed.geojson").read_text())["features"]
    assert [f["properties"]["classification"]["name"] for f in feats] == [r["type"] for r in rows]
    assert feats[0]["properties"]["classification"]["color"] == list(TYPE_COLOURS[rows[0]["type"]])
    els = json.loads((out / "typed.anot.json").read_text())["elements"]
    assert [e["group"] for e in els] == [r["type"] for r in rows]
    assert {e["lineColor"] for e in els if e["group"] == "epithelial"} == {"rgb(220,50,47)"}


def test_a_typed_star_model_types_the_same_on_torch_and_on_openvino(tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="OpenVINO is a wsinuclei dependency; not installed here (pip install openvino)")
    from wsinuclei import stain
    from wsinuclei.checkpoint import save_model
    from wsinuclei.inference import OpenVinoStarDetector, load_detector
    from wsinuclei.models import build_detector, load_preset
    from wsinuclei.models.builder import calibrate_fixed_norms
    from conftest import synthetic_he

    monkeypatch.setenv("WSINUCLEI_CACHE", str(tmp_path / "cache"))
    cfg = load_preset("experiments/recipes/star_types.toml")
    cfg.star_head["score_thresh"] = 0.0
    torch.manual_seed(0)
    model = build_detector(cfg)
    calibrate_fixed_norms(model.backbone, model.batch([torch.rand(3, 128, 128)]))
    path = save_model(model, cfg, tmp_path / "typed.safetensors", target_mu=stain.DEFAULT_TARGET_MU,
                      target_sigma=stain.DEFAULT_TARGET_SIGMA, half=False)
    tile = synthetic_he(256, 320, seed=5)[0]
    torch_det = load_detector(path, backend="torch")
    assert torch_det.type_names == TYPE_NAMES
    load_detector(path)  # converts and checks the float32 network; the next load runs it without torch
    ov_det = load_detector(path)
    assert isinstance(ov_det, OpenVinoStarDetector)
    (b1, s1, o1, t1), = torch_det.predict_typed([tile])
    (b2, s2, o2, t2), = ov_det.predict_typed([tile])
    assert len(b1) > 10 and t1.shape == (len(b1), 4) and np.allclose(t1.sum(1), 1, atol=1e-5)
    near = np.abs(b2[:, None, :] - b1[None, :, :]).max(axis=2).argmin(axis=1)
    np.testing.assert_allclose(t2, t1[near], atol=1e-4)


def test_evaluate_scores_types_beside_label_images_and_centres(tmp_path):
    """``wsinuclei evaluate`` with ``*_types.csv`` beside the truth: the F_t of each type as HoVer-Net defines
    it, accuracy and the confusion matrix, on a case where each number is known."""
    import json

    from PIL import Image

    from wsinuclei.cli import main

    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir(), pred.mkdir()
    labels = np.zeros((100, 200), np.uint16)
    for i, x in enumerate((10, 50, 90, 130)):  # four 10x10 nuclei at x, y 10
        labels[10:20, x : x + 10] = i + 1
    Image.fromarray(labels).save(truth / "a_labels.png")
    (truth / "a_types.csv").write_text("label,type\n1,epithelial\n2,epithelial\n3,inflammatory\n4,stromal\n")
    # predictions: the first three nuclei (types epithelial, inflammatory, inflammatory), one far off (epithelial)
    rows = [(10, 10, 20, 20, "epithelial"), (50, 10, 60, 20, "inflammatory"), (90, 10, 100, 20, "inflammatory"),
            (170, 80, 180, 90, "epithelial")]
    (pred / "a.csv").write_text("x0,y0,x1,y1,score,type\n" + "".join(f"{a},{b},{c},{d},0.9,{t}\n"
                                                                     for a, b, c, d, t in rows))
    # a centre-only image: two typed centres and one untyped, all found, one mistyped
    (truth / "b_points.csv").write_text("x,y\n20,20\n60,20\n100,20\n")
    (truth / "b_types.csv").write_text("x,y,type\n20,20,stromal\n60,20,stromal\n")
    (pred / "b.csv").write_text("x0,y0,x1,y1,score,type\n15,15,25,25,0.9,stromal\n55,15,65,25,0.9,other\n"
                                "95,15,105,25,0.9,stromal\n")
    code = main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(tmp_path / "rep"),
                 "--no-overlays", "--mpp", "1"])
    assert code == 0
    t = json.loads((tmp_path / "rep" / "metrics.json").read_text())["types"]
    assert t["images"] == 2 and (t["tp"], t["fp"], t["fn"]) == (6, 1, 1)
    # epithelial: TP 1, FN 1 (said inflammatory), FP_d 1 (the far prediction): 2 / (2 + 2 + 1)
    assert t["f_t_epithelial"] == pytest.approx(2 / 5)
    # inflammatory: TP 1, FP 1: 2 / 4;  stromal: TP 1 (b), FN 1 (b said other), FN_d 1 (a's unfound): 2 / 5
    assert t["f_t_inflammatory"] == pytest.approx(0.5)
    assert t["f_t_stromal"] == pytest.approx(2 / 5)
    assert t["f_t_other"] == 0.0  # said once, wrongly: 0 / (0 + 2)
    assert t["type_accuracy"] == pytest.approx(3 / 5)  # the untyped centre takes no part
    assert t["confusion"][0][:2] == [1, 1] and t["confusion"][2][2:] == [1, 1]


def _typed_folder(folder, seed=0):
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    img = np.full((128, 128, 3), (230, 160, 200), np.uint8)
    labels = np.zeros((128, 128), np.uint16)
    rows = []
    for i in range(6):
        y, x, size = 10 + 40 * (i // 3), 10 + 40 * (i % 3), int(rng.integers(6, 14))
        labels[y : y + size, x : x + size] = i + 1
        img[y : y + size, x : x + size] = (90, 50, 140) if i % 2 else (60, 40, 120)
        rows.append(f"{i + 1},{TYPE_NAMES[i % 2]}\n")
    Image.fromarray(img).save(folder / "a.png")
    Image.fromarray(labels).save(folder / "a_labels.png")
    (folder / "a_types.csv").write_text("label,type\n" + "".join(rows))
    return folder


def _prepared_and_parent(tmp_path, seed=0):
    """A prepared folder of one typed image (train and validation parts) in tmp_path/prep, and a seeded random
    star model file to warm-start from; returns the model file's path."""
    from wsinuclei import stain
    from wsinuclei.checkpoint import save_model
    from wsinuclei.data import Source, prepare_sources
    from wsinuclei.models import build_detector, load_preset

    folder = _typed_folder(tmp_path / "set", seed=seed)
    prepare_sources([Source("tr", folder, kind="labels", use="train"), Source("va", folder, kind="labels", use="val")],
                    tmp_path / "prep", tile=128, progress=False)
    torch.manual_seed(0)
    parent_cfg = load_preset("star")
    return save_model(build_detector(parent_cfg), parent_cfg, tmp_path / "parent.safetensors", half=False,
                      target_mu=stain.DEFAULT_TARGET_MU, target_sigma=stain.DEFAULT_TARGET_SIGMA)


def test_training_the_type_branch_alone_leaves_every_detection_weight_as_it_was(tmp_path):
    """``[train] train_only``: the frozen network's weights come out bit for bit as they went in, the type
    branch's do not, and no detection loss is computed."""
    from safetensors.torch import load_file

    from wsinuclei.models import build_detector, load_preset
    from wsinuclei.train import train

    parent = _prepared_and_parent(tmp_path)
    cfg = load_preset("experiments/recipes/star_types_fused.toml")
    cfg.train.update(steps=3, batch_size=1, crop_size=96, eval_every=3, warmup_steps=0)
    cfg.train.pop("set_weights", None)
    train(cfg, tmp_path / "prep", tmp_path / "run", init=parent, progress=False, log_every=1)
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    before = load_file(parent)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    torch.manual_seed(0)  # the run's seed: its network is the first thing drawn from it, so this is its start
    start = build_detector(cfg).state_dict()
    branch = [k for k in after if k.startswith("backbone.type")]
    assert branch and all(not torch.equal(after[k], start[k]) for k in branch if k.endswith("weight"))
    import csv

    with open(tmp_path / "run" / "log.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["loss"]]
    assert rows and all(float(r["loss_prob"]) == 0 and float(r["loss_dist"]) == 0 and float(r["loss_type"]) > 0
                        for r in rows)


def test_20x_validation_images_are_enlarged_to_the_model_s_resolution():
    from wsinuclei.data import Tile, upsampled_to

    t20 = Tile("c", "crchisto", np.zeros((50, 60, 3), np.uint8), np.zeros((0, 4)), points=np.array([[10.0, 20.0]]),
               mpp=0.5, point_types=np.array([1]))
    t40 = Tile("m", "monuseg", np.zeros((40, 40, 3), np.uint8), np.zeros((0, 4)), mpp=None)
    a, b = upsampled_to([t20, t40], 0.25)
    assert a.image.shape == (100, 120, 3) and a.mpp == 0.25 and a.set == "crchisto"
    np.testing.assert_allclose(a.points, [[20.5, 40.5]])  # pixel centres scale: (10 + 0.5) * 2 - 0.5
    assert a.point_types.tolist() == [1] and b is t40


def test_slow_parameters_learn_at_their_fraction_of_the_rate(tmp_path):
    """``fast_params`` with ``slow_lr_scale = 0``: every loss is computed, the branch learns, the rest of the
    network does not move at all (a scale of 0.1 moves it a tenth as fast)."""
    import csv

    from wsinuclei.models import build_detector, load_preset
    from wsinuclei.train import train

    parent = _prepared_and_parent(tmp_path, seed=1)
    cfg = load_preset("experiments/recipes/star_types_joint.toml")
    cfg.train.update(steps=3, batch_size=1, crop_size=96, eval_every=3, warmup_steps=0, slow_lr_scale=0.0)
    train(cfg, tmp_path / "prep", tmp_path / "run", init=parent, progress=False, log_every=1)
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    from safetensors.torch import load_file

    for k, v in load_file(parent).items():
        assert torch.equal(after[k], v), k
    torch.manual_seed(0)
    start = build_detector(cfg).state_dict()
    assert not torch.equal(after["backbone.types.weight"], start["backbone.types.weight"])
    with open(tmp_path / "run" / "log.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["loss"]]
    assert all(float(r["loss_prob"]) > 0 and float(r["loss_dist"]) > 0 for r in rows)
