import json

import numpy as np
import pytest
import torch

from wsinuclei.checkpoint import load_model, save_model
from wsinuclei import stain
from wsinuclei.data import prepare
from wsinuclei.errors import WsinucleiError
from wsinuclei.models import build_detector, count_parameters, list_presets, load_preset, set_num_units
from conftest import write_labelled_images


def test_presets_listed():
    assert {"fast", "resnet50", "resnet101"} <= set(list_presets())
    with pytest.raises(WsinucleiError, match="unknown preset"):
        load_preset("nope")


@pytest.mark.parametrize("name", ["fast", "resnet50", "resnet101"])
def test_every_preset_builds_and_runs(name):
    torch.manual_seed(0)
    cfg = load_preset(name)
    model = build_detector(cfg)
    x = torch.rand(3, 128, 128)
    model.train()
    losses = model([x], [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 34.0]]), "labels": torch.tensor([1])}])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model([x])[0]
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) == len(out["scores"])
    assert model.roi_heads.detections_per_img >= 2000  # dense tiles are never truncated
    # the transform never rescales (torchvision's default would take every tile to 800 px): a 200-px tile
    # stays 200 px, padded only to a multiple of 32, and the finest feature map is a quarter of that
    images, _ = model.transform([torch.rand(3, 200, 200)])
    assert images.image_sizes == [(200, 200)] and images.tensors.shape[-2:] == (224, 224)
    feats = model.backbone(images.tensors)
    assert next(iter(feats.values())).shape[-2:] == (56, 56)


def test_contours_preset_learns_masks_and_returns_small_grids():
    """The mask preset trains on masks, and in eval mode gives each box its own 14x14 grid: torchvision's
    paste into a full-size image (gigabytes on a dense tile) never happens."""
    torch.manual_seed(0)
    cfg = load_preset("contours")
    model = build_detector(cfg)
    x = torch.rand(3, 128, 128)
    mask = torch.zeros(1, 128, 128, dtype=torch.uint8)
    mask[0, 10:34, 10:30] = 1
    model.train()
    losses = model([x], [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 34.0]]), "labels": torch.tensor([1]),
                          "masks": mask}])
    assert "loss_mask" in losses and torch.isfinite(losses["loss_mask"])
    model.eval()
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        out = model([x])[0]
    assert len(out["boxes"]) > 0 and out["masks"].shape == (len(out["boxes"]), 1, 14, 14)


def test_resnet101_units_and_cut():
    cfg = load_preset("resnet101")
    assert cfg.backbone["num_units"] == 18
    model = build_detector(cfg)
    assert len(model.backbone.body.layer3) == 18
    # built from random weights nothing is frozen (frozen random layers would stay random)...
    assert all(p.requires_grad for p in model.parameters())
    # ...fine-tuning loaded weights freezes what comes before block 2 (the study's fine_tune_from)
    from wsinuclei.models import freeze_before_fine_tune_block

    assert freeze_before_fine_tune_block(model, cfg) == ["stem", "block1"]
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())
    assert not model.backbone.body.conv1.weight.requires_grad
    assert all(p.requires_grad for p in model.backbone.body.layer2.parameters())
    cut = set_num_units(model, 6)
    assert len(cut.backbone.body.layer3) == 6 and len(model.backbone.body.layer3) == 18
    assert count_parameters(cut) < count_parameters(model)
    cfg.backbone["num_units"] = 30
    with pytest.raises(WsinucleiError, match="num_units"):
        build_detector(cfg)


def test_checkpoint_round_trip_identical_outputs(tmp_path):
    torch.manual_seed(1)
    cfg = load_preset("fast")
    model = build_detector(cfg).eval()
    path = save_model(model, cfg, tmp_path / "m.safetensors", target_mu=stain.DEFAULT_TARGET_MU,
                      target_sigma=stain.DEFAULT_TARGET_SIGMA, half=False, extra={"command": "test"})
    loaded = load_model(path)
    assert loaded.mpp == 0.25 and loaded.input_channels == "rgb" and loaded.extra["command"] == "test"
    x = torch.rand(3, 192, 192)
    with torch.no_grad():
        a, b = model([x])[0], loaded.model([x])[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])
    half = save_model(model, cfg, tmp_path / "h.safetensors", target_mu=stain.DEFAULT_TARGET_MU,
                      target_sigma=stain.DEFAULT_TARGET_SIGMA, half=True)
    assert half.stat().st_size < path.stat().st_size * 0.6


def test_model_file_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(WsinucleiError, match="not a readable model"):
        load_model(bad)
    with pytest.raises(WsinucleiError, match="no such model"):
        load_model(tmp_path / "missing.safetensors")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    src = write_labelled_images(root / "src", 3, 256, seed=10, n_nuclei=25)
    prepare(src, root / "prep", tile=256, val_fraction=0.34, progress=False)
    return root / "prep"


def _tiny_config(steps_eval):
    cfg = load_preset("fast")
    cfg.train.update(lr=0.01, warmup_steps=5, batch_size=2, crop_size=128, eval_every=steps_eval, lr_milestones=[])
    return cfg


def test_tiny_training_lowers_the_loss(tiny_data, tmp_path):
    import csv

    from wsinuclei.train import train

    best = train(_tiny_config(40), tiny_data, tmp_path / "run", steps=40, log_every=5, progress=False, threads=2)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert losses[-1] < 0.75 * losses[0]
    assert (tmp_path / "run" / "best.safetensors").is_file() and "val_f1" in best


def test_resume_continues_exactly(tiny_data, tmp_path):
    from wsinuclei.train import train

    train(_tiny_config(3), tiny_data, tmp_path / "a", steps=6, progress=False, threads=2)
    train(_tiny_config(3), tiny_data, tmp_path / "b", steps=3, progress=False, threads=2)
    with pytest.raises(WsinucleiError, match="--resume"):
        train(_tiny_config(3), tiny_data, tmp_path / "b", steps=6, progress=False)
    train(_tiny_config(3), tiny_data, tmp_path / "b", steps=6, resume=True, progress=False, threads=2)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["steps"] == 6 and run["seed"] == 0


def test_crop_workers_draw_the_same_steps_whatever_their_number_and_a_resume(tiny_data, tmp_path):
    """--workers: each step's crops come from its own seeded generator, so one worker, two workers and a run
    stopped and resumed train the same weights; the one-generator stream of --workers 0 is another. (Run as the
    command, as users run it: worker processes and their signal handlers stay out of the test process.)"""
    import subprocess
    import sys

    preset = tmp_path / "tiny.toml"
    preset.write_text('base = "fast"\n[train]\nlr = 0.01\nwarmup_steps = 5\nbatch_size = 2\ncrop_size = 128\n'
                      "eval_every = 3\nlr_milestones = []\n")

    def train_cli(run, steps, *extra):
        proc = subprocess.run([sys.executable, "-m", "wsinuclei.cli", "train", "--preset", preset, "--data", tiny_data,
                               "--run-dir", tmp_path / run, "--steps", str(steps), "--threads", "2", "--quiet",
                               *extra], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]

    def weights(run):
        return torch.load(tmp_path / run / "last.pt", weights_only=True)["model"]

    train_cli("one", 6, "--workers", "1")
    train_cli("two", 6, "--workers", "2")
    train_cli("cut", 3, "--workers", "2")
    train_cli("cut", 6, "--workers", "3", "--resume")
    train_cli("zero", 6)
    one, zero = weights("one"), weights("zero")
    for run in ("two", "cut"):
        other = weights(run)
        for k in one:
            torch.testing.assert_close(one[k], other[k], rtol=0, atol=0)
    assert any(not torch.equal(one[k], zero[k]) for k in one if one[k].is_floating_point())
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["workers"] == 3


def test_fine_tune_logs_its_starting_weights_at_step_0(tiny_data, tmp_path):
    """With --init, the log's first validation row is step 0: the loaded weights' own score (the bar the
    fine-tune must beat), computed on the same validation images as every later row, the 20x read included."""
    import csv

    from wsinuclei.train import train, validate
    from wsinuclei.data import as_read_at, load_tiles

    cfg = _tiny_config(3)
    cfg.train["val_read_mpp"] = [0.5]
    train(cfg, tiny_data, tmp_path / "a", steps=3, progress=False, threads=2)
    train(cfg, tiny_data, tmp_path / "b", steps=3, progress=False, threads=2, init=tmp_path / "a" / "best.safetensors")
    rows = [r for r in csv.DictReader(open(tmp_path / "b" / "log.csv")) if r["val_f1"]]
    assert [int(r["step"]) for r in rows] == [0, 3]
    model = build_detector(cfg)
    from wsinuclei.train import load_init

    load_init(model, tmp_path / "a" / "best.safetensors")
    val = load_tiles(tiny_data, "val_full")
    expected = validate(model, val + as_read_at(val, 0.5))
    assert float(rows[0]["val_f1"]) == pytest.approx(expected["val_f1"], abs=1e-9)
    assert rows[0]["val_src_0.5mpp_f1"] != ""  # the 20x read is a set of its own in the log


def test_score_calibration_moves_the_best_threshold_to_one_half():
    from wsinuclei.checkpoint import fit_score_calibration, shift_scores

    truth = np.array([[i * 30.0, 0.0, i * 30.0 + 20, 20.0] for i in range(10)])
    fp = truth + [0, 100, 0, 100]
    boxes = np.concatenate([truth, fp])
    scores = np.r_[np.full(10, 0.30), np.full(10, 0.20)]
    cal = fit_score_calibration([(boxes, scores)], [truth])
    assert 0.2 < cal["raw_threshold"] <= 0.3 and cal["validation_f1"] == 1.0
    shifted = shift_scores(scores, cal["logit_shift"])
    assert (shifted[:10] >= 0.5).all() and (shifted[10:] < 0.5).all()
    assert np.all(np.diff(shift_scores(np.linspace(0.01, 0.99, 50), 1.3)) > 0)  # monotone: AP unchanged


def test_calibration_is_applied_at_inference(tmp_path):
    from wsinuclei.inference import NucleusDetector

    torch.manual_seed(2)
    cfg = load_preset("fast")
    model = build_detector(cfg).eval()
    kw = dict(target_mu=stain.DEFAULT_TARGET_MU, target_sigma=stain.DEFAULT_TARGET_SIGMA, half=False)
    plain = save_model(model, cfg, tmp_path / "a.safetensors", **kw)
    cal = save_model(model, cfg, tmp_path / "b.safetensors", extra={"score_calibration": {"logit_shift": 1.0}}, **kw)
    tile = (np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)
    (b1, s1), = NucleusDetector.from_file(plain).predict([tile])
    (b2, s2), = NucleusDetector.from_file(cal).predict([tile])
    np.testing.assert_allclose(b1, b2)
    expected = 1 / (1 + np.exp(-(np.log(s1 / (1 - s1)) + 1.0)))
    np.testing.assert_allclose(s2, expected, rtol=1e-5)


def test_calibration_by_sets_does_not_let_the_largest_set_choose():
    from wsinuclei.checkpoint import fit_score_calibration

    def boxes(n, row):
        return np.array([[i * 30.0, row * 30.0, i * 30.0 + 20, row * 30.0 + 20] for i in range(n)])

    # set A (large) is best cut low, set B (small) high
    a_truth = np.concatenate([boxes(100, 0), boxes(100, 1)])
    a_pred = (np.concatenate([a_truth, boxes(20, 5)]), np.r_[np.full(100, 0.30), np.full(100, 0.15), np.full(20, 0.10)])
    b_truth = boxes(5, 0)
    b_pred = (np.concatenate([b_truth, boxes(50, 5)]), np.r_[np.full(5, 0.30), np.full(50, 0.15)])
    pooled = fit_score_calibration([a_pred, b_pred], [a_truth, b_truth])
    by_set = fit_score_calibration([a_pred, b_pred], [a_truth, b_truth], groups=["a", "b"])
    assert pooled["raw_threshold"] == 0.11 and "per_set" not in pooled
    assert by_set["raw_threshold"] == 0.16
    assert by_set["per_set"]["b"] == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert by_set["per_set"]["a"]["recall"] == 0.5 and by_set["validation_f1"] == pytest.approx((2 / 3 + 1) / 2)


def test_export_stores_the_filter_and_calibrates_after_it(tmp_path):
    from wsinuclei.checkpoint import load_model
    from wsinuclei.cli import main

    torch.manual_seed(0)
    cfg = load_preset("fast")
    cfg.raw["mpp_range"] = [0.25, 0.5]
    model = build_detector(cfg).eval()
    src = save_model(model, cfg, tmp_path / "m.safetensors", target_mu=stain.DEFAULT_TARGET_MU,
                     target_sigma=stain.DEFAULT_TARGET_SIGMA, half=False)
    val = tmp_path / "prep" / "val_full"
    val.mkdir(parents=True)
    (tmp_path / "prep" / "manifest.json").write_text("{}")
    rng = np.random.default_rng(0)
    for name in ("setA__1", "setB__1"):
        np.savez(val / f"{name}.npz", image=(rng.random((96, 96, 3)) * 255).astype(np.uint8),
                 boxes=np.array([[10.0, 10, 30, 30]]), mpp=np.float64(0.25))
    out = tmp_path / "out.safetensors"
    assert main(["export", str(src), "--out", str(out), "--nested", "0.8", "--min-area-um2", "6",
                 "--calibrate", str(tmp_path / "prep")]) == 0
    assert load_model(out).config.mpp_range == (0.25, 0.5)
    assert main(["export", str(src), "--out", str(out), "--nested", "0.8", "--min-area-um2", "6", "--single-resolution",
                 "--calibrate", str(tmp_path / "prep")]) == 0
    m = load_model(out)
    assert "mpp_range" not in m.config.raw and m.config.mpp_range == (0.25, 0.25)
    assert m.config.raw["postprocess"] == {"nested": 0.8, "min_area_um2": 6.0}
    cal = m.extra["score_calibration"]
    assert set(cal["per_set"]) == {"setA", "setB"} and len(cal["images"]) == 2
    assert main(["export", str(src), "--out", str(out), "--nested", "1.5"]) != 0


def test_a_recipe_file_changes_only_what_it_sets_on_its_base(tmp_path):
    base = load_preset("resnet50")
    recipe = tmp_path / "r.toml"
    recipe.write_text('base = "resnet50"\n[train]\nlr = 0.02\nsteps = 123\n[backbone]\nfine_tune_from = "block2"\n')
    cfg = load_preset(recipe)
    assert cfg.train["lr"] == 0.02 and cfg.train["steps"] == 123
    assert cfg.train["momentum"] == base.train["momentum"] and cfg.train["crop_size"] == base.train["crop_size"]
    assert cfg.raw["backbone"]["fine_tune_from"] == "block2" and cfg.raw["backbone"]["num_units"] == 6
    assert "base" not in cfg.raw
    recipe.write_text('base = "resnet5"\n')
    with pytest.raises(WsinucleiError, match="base preset 'resnet5' unknown"):
        load_preset(recipe)


def test_budgets_grow_with_the_tissue_a_coarser_tile_holds(random_model):
    """Read at 0.5 µm/px, a 0.25 µm/px model's tile holds 4x the tissue: its proposal and detection budgets grow
    4x (no nucleus cut off at a budget meant for a quarter of the area), and come back at the model's own µm/px;
    budgets a caller set itself stay while the resolution does not change."""
    from conftest import synthetic_he
    from wsinuclei.inference import NucleusDetector

    det = NucleusDetector.from_file(random_model, backend="torch")
    tile, _ = synthetic_he(256, 256, seed=2, n_nuclei=60)
    native = det.predict([tile])[0][0]
    assert len(native) == 100  # the random model fills its budget (detections_per_img = 100)
    coarse_det = NucleusDetector.from_file(random_model, backend="torch", read_mpp=0.5)
    assert coarse_det.model.roi_heads.detections_per_img == 400
    assert coarse_det.model.rpn._post_nms_top_n["testing"] == 800
    coarse = coarse_det.predict([tile])[0][0]
    assert 100 < len(coarse) <= 400
    coarse_det.set_read_mpp(0.25)
    assert coarse_det.model.roi_heads.detections_per_img == 100 and coarse_det.model.rpn._post_nms_top_n["testing"] == 200
    np.testing.assert_array_equal(coarse_det.predict([tile])[0][0], native)
    det.model.roi_heads.detections_per_img = 7  # a script's own budget
    det.set_read_mpp(0.2)  # finer than the model: the same budgets
    assert len(det.predict([tile])[0][0]) == 7


def test_a_worker_holds_one_detector_per_read_resolution(random_model, monkeypatch):
    """A process running slides at two resolutions (Dask worker threads) gets a detector for each, whose budgets
    never change under the other; at or below the model's µm/px it is the one detector."""
    from wsinuclei.pipeline import worker

    monkeypatch.setattr(worker, "_STATE", {})
    native = worker._detector(random_model, "cpu", "torch")
    assert worker._detector(random_model, "cpu", "torch", 0.25) is native
    assert worker._detector(random_model, "cpu", "torch", 0.2) is native
    coarse = worker._detector(random_model, "cpu", "torch", 0.5)
    assert coarse is not native and coarse.model is not native.model
    assert worker._detector(random_model, "cpu", "torch", 0.5) is coarse
    assert coarse.model.roi_heads.detections_per_img == 400 and native.model.roi_heads.detections_per_img == 100


def test_a_deeper_trunk_warm_started_computes_what_the_shallower_one_did():
    """experiments/recipes/contours_deeper.toml adds trunk blocks that start as the identity (zero_init_residual): loaded
    with the shipped model's weights it gives the shipped model's detections exactly, before any training."""
    from conftest import synthetic_he
    from wsinuclei.checkpoint import load_model
    from wsinuclei.train import load_init

    shipped = load_model("src/wsinuclei/weights/contours_default.safetensors").model.eval()
    cfg = load_preset("experiments/recipes/contours_deeper.toml")
    assert cfg.backbone["blocks"] == [1, 3, 3]
    deeper = build_detector(cfg)
    info = load_init(deeper, "src/wsinuclei/weights/contours_default.safetensors")
    new = {k.split(".")[3] for k in info["left"] if k.startswith("backbone.body.layer")}
    assert info["left"] and all(k.startswith(("backbone.body.layer2.2", "backbone.body.layer3.2")) for k in info["left"])
    assert new == {"2"}
    deeper.eval()
    deeper.roi_heads.score_thresh = shipped.roi_heads.score_thresh  # the shipped file's cut is calibrated
    tile, _ = synthetic_he(256, 256, seed=5, n_nuclei=40)
    x = torch.from_numpy(tile).permute(2, 0, 1).float() / 255
    with torch.inference_mode():
        a, b = deeper([x])[0], shipped([x])[0]
    assert len(a["boxes"]) > 10
    torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0)
    torch.testing.assert_close(a["masks"], b["masks"], rtol=0, atol=0)
    # without the zero init the new blocks change the output
    plain_cfg = load_preset("experiments/recipes/contours_deeper.toml")
    plain_cfg.backbone["zero_init_residual"] = False
    torch.manual_seed(0)
    plain = build_detector(plain_cfg)
    load_init(plain, "src/wsinuclei/weights/contours_default.safetensors")
    plain.roi_heads.score_thresh = shipped.roi_heads.score_thresh
    with torch.inference_mode():
        c = plain.eval()([x])[0]
    assert len(c["boxes"]) != len(b["boxes"]) or not torch.equal(c["boxes"], b["boxes"])


def test_set_weights_override_the_prepared_shares():
    """`[train] set_weights` in a preset replaces the prepared data's share of the sets it names; a set without a
    training part, a bad share or a one-set folder is refused in words."""
    from wsinuclei.errors import WsinucleiError
    from wsinuclei.train import sampling_weights

    sets = {"monuseg": {"weight": 0.35}, "nuinsseg": {"weight": 0.35}, "consep": {"weight": 0.3},
            "crchisto": {"weight": 1.0, "use": "val"}}
    assert sampling_weights(sets) == {"monuseg": 0.35, "nuinsseg": 0.35, "consep": 0.3}
    assert sampling_weights(sets, {"consep": 0.5}) == {"monuseg": 0.35, "nuinsseg": 0.35, "consep": 0.5}
    assert sampling_weights({"monuseg": {"weight": 1.0}}) is None
    for bad, words in (({"crchisto": 1.0}, "no training part"), ({"consep": -1}, "non-negative"),
                       ({"monuseg": 0, "nuinsseg": 0, "consep": 0}, "not all zero"), ({"consep": "many"}, "numbers")):
        with pytest.raises(WsinucleiError, match=words):
            sampling_weights(sets, bad)
    with pytest.raises(WsinucleiError, match="one set"):
        sampling_weights({"monuseg": {"weight": 1.0}}, {"monuseg": 2.0})


def _with_centre_only_tile(prepared, folder):
    """A copy of a prepared folder whose first training tile is marked as centre discs."""
    import shutil

    shutil.copytree(prepared, folder)
    first = sorted((folder / "train").glob("*.npz"))[0]
    with np.load(first) as z:
        arrays = dict(z)
    np.savez(first, **arrays, centre_only=np.bool_(True))
    return folder


def test_centre_only_tiles_reach_a_star_models_loss_and_stop_other_presets(tiny_data, tmp_path, monkeypatch):
    from wsinuclei.models.star import StarNet
    from wsinuclei.train import train

    prepared = _with_centre_only_tile(tiny_data, tmp_path / "prep")
    with pytest.raises(WsinucleiError, match="centres only"):
        train(_tiny_config(5), prepared, tmp_path / "fast", steps=2, progress=False, threads=2)
    seen = []
    losses = StarNet.losses

    def spy(self, out, images, targets):
        seen.extend(bool(t.get("centre_only", False)) for t in targets)
        return losses(self, out, images, targets)

    monkeypatch.setattr(StarNet, "losses", spy)
    cfg = load_preset("star")
    cfg.train.update(warmup_steps=1, batch_size=2, crop_size=128, eval_every=100, lr_milestones=[])
    train(cfg, prepared, tmp_path / "star", steps=4, progress=False, threads=2)
    assert len(seen) == 8 and 0 < sum(seen) < 8  # one of the training tiles is centre-only


def test_a_stop_signalled_to_the_whole_process_group_checkpoints_with_crop_workers(tiny_data, tmp_path):
    """Slurm's time limit and `timeout` signal every process of the job: the crop workers live on until the
    training process has finished its step and saved it, and the command ends cleanly, resumable."""
    import os
    import signal
    import subprocess
    import sys
    import time

    preset = tmp_path / "tiny.toml"
    preset.write_text('base = "fast"\n[train]\nlr = 0.01\nwarmup_steps = 5\nbatch_size = 2\ncrop_size = 128\n'
                      "eval_every = 1000\nlr_milestones = []\n")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "wsinuclei.cli", "train", "--preset", preset, "--data", tiny_data,
                             "--run-dir", run_dir, "--steps", "5000", "--workers", "2", "--threads", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = run_dir / "log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.2)
    assert len(log.read_text().splitlines()) >= 2, "no training step was logged"
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "continue with --resume" in out + err
    step = torch.load(run_dir / "last.pt", weights_only=True)["step"]
    assert 20 <= step < 5000


def test_a_recipe_may_start_from_another_recipe_beside_it(tmp_path):
    (tmp_path / "net.toml").write_text('base = "star"\n[backbone]\nwidths = [48, 96, 192]\n[train]\nlr = 0.02\nsteps = 10\n')
    (tmp_path / "stage2.toml").write_text('base = "net.toml"\n[train]\nlr = 0.01\n')
    cfg = load_preset(tmp_path / "stage2.toml")
    assert cfg.backbone["widths"] == [48, 96, 192] and cfg.backbone["blocks"] == [1, 2, 2]  # net's, then star's
    assert cfg.train["lr"] == 0.01 and cfg.train["steps"] == 10
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(WsinucleiError, match="loop"):
        load_preset(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('base = "missing.toml"\n')
    with pytest.raises(WsinucleiError, match="not found"):
        load_preset(tmp_path / "c.toml")
