"""Whole-slide coordinates with a detector whose output is known (tests/conftest.py StubDetector): boxes come
back where the nuclei are, at any slide µm/px, once each across tile seams."""

import numpy as np
import pytest
from PIL import Image

from wsinuclei.annotations import read_boxes
from wsinuclei.evaluate import box_iou, match
from wsinuclei.pipeline import RunOptions, run_slide
from wsinuclei.synth import write_pyramid_tiff
from conftest import synthetic_he

QUIET = dict(progress=False, tissue_mask=False, min_score=0.1)


def _slide(tmp_path, mpp, h=1100, w=1300, n=160, seed=11):
    img, truth = synthetic_he(h, w, seed=seed, n_nuclei=n)
    path = tmp_path / f"slide_{mpp}.tiff"
    write_pyramid_tiff(path, img, mpp=mpp, compression="zlib", min_level_size=300)
    return path, truth


def _one_to_one(pred, truth, iou=0.6):
    pi, ti, _ = match(pred, truth, iou)
    return len(pi), len(pred) - len(pi), len(truth) - len(ti)


def _separate(truth):
    """Truth nuclei that touch no other (the stub boxes touching blobs together)."""
    iou = box_iou(truth + [-1, -1, 1, 1], truth + [-1, -1, 1, 1])
    np.fill_diagonal(iou, 0)
    return truth[iou.max(axis=1) == 0]


def test_20x_slide_boxes_are_scaled_back_to_base_pixels(tmp_path, stub_detector):
    """A slide at 0.5 µm/px is read at the model's 0.25 (twice the pixels); boxes must come back halved and
    shifted to each tile's place. Without the scaling they would be twice too large and misplaced."""
    path, truth = _slide(tmp_path, mpp=0.5)
    out = tmp_path / "out"
    run_slide(path, out, RunOptions(tile_size=512, overlap=64, **QUIET), log=lambda *_: None)
    pred = read_boxes(out / f"{path.stem}.csv").boxes
    truth = _separate(truth)
    tp, _, fn = _one_to_one(pred, truth)
    assert fn == 0 and tp == len(truth)
    pi, ti, q = match(pred, truth, 0.6)
    assert np.median(q) > 0.8
    np.testing.assert_allclose(pred[pi], truth[ti], atol=1.0)  # within a base pixel


def test_every_nucleus_once_across_seams(tmp_path, stub_detector):
    """Small tiles (256 px, 32 px overlap) cut through many nuclei: each is kept once, by the tile owning its
    centre, whole (its full box, not the part one tile saw)."""
    path, truth = _slide(tmp_path, mpp=0.25, h=900, w=1000, n=220, seed=12)
    out = tmp_path / "out"
    report = run_slide(path, out, RunOptions(tile_size=256, overlap=32, **QUIET), log=lambda *_: None)
    assert report.tiles_processed >= 16
    pred = read_boxes(out / f"{path.stem}.csv").boxes
    truth = _separate(truth)
    pi, ti, q = match(pred, truth, 0.9)  # whole boxes: near-exact overlap
    assert len(ti) == len(truth)
    # nothing else near a truth nucleus: no second, partial copy from a neighbouring tile
    iou = box_iou(pred, truth)
    assert ((iou > 0.05).sum(axis=0) == 1).all()


def test_contours_are_scaled_and_kept_whole_with_their_nucleus(tmp_path, stub_detector):
    """A contour model's outlines go through the same scaling, ownership and seam merging as the boxes: on a
    20x slide with small tiles, every written polygon spans exactly its nucleus's box, and the CSV gains the
    area in µm² (polygon area at the slide's µm/px)."""
    import csv
    import json

    stub_detector.outlines = True
    path, _ = _slide(tmp_path, mpp=0.5, h=700, w=800, n=90, seed=13)
    out = tmp_path / "out"
    run_slide(path, out, RunOptions(tile_size=256, overlap=32, **QUIET), log=lambda *_: None)
    rows = list(csv.DictReader(open(out / f"{path.stem}.csv")))
    feats = json.loads((out / f"{path.stem}.geojson").read_text())["features"]
    assert len(rows) == len(feats) > 50
    for row, f in zip(rows, feats):
        ring = np.array(f["geometry"]["coordinates"][0])
        x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
        np.testing.assert_allclose([ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()],
                                   [x0, y0, x1, y1], atol=0.11)
        assert float(row["area_um2"]) == pytest.approx((x1 - x0) * (y1 - y0) * 0.25, rel=0.02, abs=0.02)


def test_20x_slide_runs_at_its_own_resolution_when_the_model_serves_it(tmp_path, stub_detector):
    """A model trained for 0.25-0.5 µm/px reads a 0.5 µm/px slide as it is: a quarter of the tiles of reading
    it at 0.25, and the same nuclei in the same base-pixel places."""
    from wsinuclei.pipeline import run_mpp

    assert run_mpp(0.5, 0.25, (0.25, 0.5)) == 0.5 and run_mpp(0.12, 0.25, (0.25, 0.5)) == 0.25
    assert run_mpp(0.5, 0.25, None) == 0.25 and run_mpp(1.0, 0.25, (0.25, 0.5)) == 0.5
    path, truth = _slide(tmp_path, mpp=0.5, h=1400, w=1600, n=200, seed=13)
    stub_detector.loaded.config.raw["mpp_range"] = [0.25, 0.5]
    native = run_slide(path, tmp_path / "native", RunOptions(tile_size=256, overlap=32, **QUIET), log=lambda *_: None)
    upsampled = run_slide(path, tmp_path / "up", RunOptions(tile_size=256, overlap=32, native_resolution=False, **QUIET),
                          log=lambda *_: None)
    assert native.read_mpp == 0.5 and upsampled.read_mpp == 0.25
    assert upsampled.tiles_processed >= 3.5 * native.tiles_processed
    truth = _separate(truth)
    for out in ("native", "up"):
        pred = read_boxes(tmp_path / out / f"{path.stem}.csv").boxes
        pi, ti, q = match(pred, truth, 0.6)
        assert len(ti) == len(truth)
        np.testing.assert_allclose(pred[pi], truth[ti], atol=1.0)


def test_read_mpp_reads_a_40x_slide_at_20x_inside_the_models_range(tmp_path, stub_detector):
    """--read-mpp 0.5 on a 0.25 µm/px slide: a quarter of the pixels, the same nuclei in base pixels; a value
    outside the model's range is a clear error."""
    from wsinuclei.errors import WsinucleiError

    path, truth = _slide(tmp_path, mpp=0.25, h=1400, w=1600, n=150, seed=17)
    stub_detector.loaded.config.raw["mpp_range"] = [0.25, 0.5]
    fast = run_slide(path, tmp_path / "half", RunOptions(tile_size=256, overlap=32, read_mpp=0.5, **QUIET),
                     log=lambda *_: None)
    full = run_slide(path, tmp_path / "full", RunOptions(tile_size=256, overlap=32, **QUIET), log=lambda *_: None)
    assert fast.read_mpp == 0.5 and full.read_mpp == 0.25
    assert full.tiles_processed >= 3.5 * fast.tiles_processed
    pred = read_boxes(tmp_path / "half" / f"{path.stem}.csv").boxes
    truth = _separate(truth)
    pi, ti, _ = match(pred, truth, 0.6)
    assert len(ti) == len(truth)
    np.testing.assert_allclose(pred[pi], truth[ti], atol=2.0)  # half-resolution boxes: within 1 read pixel each side
    with pytest.raises(WsinucleiError, match="this model reads 0.25 to 0.5"):
        run_slide(path, tmp_path / "bad", RunOptions(tile_size=256, read_mpp=1.0, **QUIET), log=lambda *_: None)
    with pytest.raises(WsinucleiError, match="give one"):
        RunOptions(read_mpp=0.5, native_resolution=False).validate()
