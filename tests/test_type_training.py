"""``wsinuclei train-types``: clicks read from CSV and QuPath GeoJSON, the head's fit on known cases, and the
command end to end as a user runs it: new class names in every output, nuclei unchanged."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsinuclei.errors import WsinucleiError
from wsinuclei.models.type_head import TypeHead, fit
from wsinuclei.type_training import clicks_file, held_out_split, per_class_report, read_clicks, ClickedNuclei
from conftest import MONUSEG, need


def test_clicks_from_csv_and_qupath_points(tmp_path):
    c = tmp_path / "a_types.csv"
    c.write_text("x,y,type\n10,20,tumour\n30.5,40,lymphocyte\n50,60,\n")
    xy, names = read_clicks(c)
    np.testing.assert_array_equal(xy, [[10, 20], [30.5, 40]])  # the unclassified click is left out
    assert names == ["tumour", "lymphocyte"]
    g = tmp_path / "b.geojson"  # QuPath's export of point annotations: one feature per class, MultiPoint
    g.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
         "properties": {"objectType": "annotation", "classification": {"name": "plasma cell", "color": [1, 2, 3]}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 6]},
         "properties": {"classification": {"name": "macrophage"}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
         "properties": {"classification": {"name": "Tumor"}}},  # a region, not a click
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [7, 8]}, "properties": {}}]}))
    xy, names = read_clicks(g)
    np.testing.assert_array_equal(xy, [[1, 2], [3, 4], [5, 6]])
    assert names == ["plasma cell", "plasma cell", "macrophage"]
    bad = tmp_path / "c_types.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(WsinucleiError, match="needs the columns x,y,type"):
        read_clicks(bad)
    bad.write_text("x,y,type\none,2,a\n")
    with pytest.raises(WsinucleiError, match="row 2: x, y must be numbers"):
        read_clicks(bad)
    # centres without classes (an evaluation file) are not clicks; a file with types is
    img = tmp_path / "d.png"
    img.write_bytes(b"")
    (tmp_path / "d_points.csv").write_text("x,y\n1,2\n")
    assert clicks_file(img) is None
    (tmp_path / "d_types.csv").write_text("x,y,type\n1,2,a\n")
    assert clicks_file(img) == tmp_path / "d_types.csv"


def test_the_head_separates_what_is_separable_and_folds_its_scaling_in():
    rng = np.random.default_rng(0)
    # two classes apart along one feature whose scale is large, the others noise: after standardisation the
    # feature decides, and the folded weights give the same probabilities as the standardised ones would
    x = rng.normal(0, 1, (400, 8))
    y = (np.arange(400) % 2)
    x[:, 3] = 1000 + 50 * (2 * y - 1) + rng.normal(0, 5, 400)
    head = fit(x, y, ("a", "b"), lam=1e-3)
    p = head.probabilities(x)
    assert p.shape == (400, 2) and np.allclose(p.sum(1), 1)
    assert (p.argmax(1) == y).all()
    # in standardised units (the folded weights times each feature's spread) the feature outweighs the noise
    spread = np.abs(head.weight[1] - head.weight[0]) * x.std(0)
    assert spread[3] > 10 * spread[[0, 1, 2, 4, 5, 6, 7]].max()
    again = fit(x, y, ("a", "b"), lam=1e-3)  # convex, deterministic: the same points, the same head
    np.testing.assert_array_equal(again.weight, head.weight)
    # balanced: a rare class still gets its share of the decision
    keep = (y == 0) | (np.arange(400) < 40)
    rare = fit(x[keep], y[keep], ("a", "b"))
    assert (rare.probabilities(x[keep]).argmax(1) == y[keep]).mean() == 1.0
    h = TypeHead(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.zeros(2, np.float32), ("u", "v"))
    np.testing.assert_allclose(h.probabilities(np.array([[np.log(3.0), 0.0]])), [[0.75, 0.25]], rtol=1e-6)


def test_held_out_split_and_report_are_counted_as_stated():
    data = ClickedNuclei(("a", "b"), np.zeros((10, 2)), np.array([0] * 6 + [1] * 4), np.arange(10) // 5)
    mask, how = held_out_split(data, 0.5, 0)  # two images: a share of each class
    assert (mask & (data.labels == 0)).sum() == 3 and (mask & (data.labels == 1)).sum() == 2
    assert "each class" in how
    data.image = np.arange(10) % 5  # five images: whole images
    mask, how = held_out_split(data, 0.2, 0)
    assert how == "1 of 5 images" and len(np.unique(data.image[mask])) == 1
    rep = per_class_report(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), ("a", "b"))
    assert rep["confusion"] == [[1, 1], [1, 2]]
    assert rep["classes"]["b"]["precision"] == pytest.approx(2 / 3) and rep["classes"]["b"]["recall"] == pytest.approx(2 / 3)
    assert rep["classes"]["a"]["f1"] == pytest.approx(0.5) and rep["accuracy"] == pytest.approx(0.6)
    # a typed parent's class outside the clicked ones (-1) is wrong and in no column: b's recall falls, a's
    # precision does not
    rep = per_class_report(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, -1, 0]), ("a", "b"))
    assert rep["confusion"] == [[1, 1], [1, 1]] and rep["accuracy"] == pytest.approx(0.4)
    assert rep["classes"]["b"]["recall"] == pytest.approx(1 / 3) and rep["classes"]["b"]["support"] == 3
    assert rep["classes"]["a"]["precision"] == pytest.approx(0.5)


def two_kinds(folder: Path, n_images: int, seed: int):
    """Images with two kinds of nucleus the user tells apart by eye: large pale ovals ("tumour") and small dark
    discs ("lymphocyte"), at 0.25 µm/px; their centres written as clicks (NAME_types.csv)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512]
    for i in range(n_images):
        img = np.clip((230, 160, 200) + rng.normal(0, 6, (512, 512, 3)), 0, 255)
        rows = []
        for gy in range(6):
            for gx in range(6):
                cx, cy = 45 + gx * 84 + rng.uniform(-8, 8), 45 + gy * 84 + rng.uniform(-8, 8)
                big = rng.random() < 0.5
                rx, ry = (22, 16) if big else (11, 11)
                m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
                img[m] = (140, 90, 170) if big else (60, 30, 110)
                rows.append((cx + 0.5, cy + 0.5, "tumour" if big else "lymphocyte"))
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i}.png")
        with open(folder / f"img{i}_types.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([("x", "y", "type"), *rows])
    return folder


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "wsinuclei.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_train_types_end_to_end_learns_new_classes_and_leaves_the_nuclei(tmp_path):
    data = two_kinds(tmp_path / "clicks", 5, seed=1)
    model = tmp_path / "mine.safetensors"
    res = _cli("train-types", data, "--mpp", 0.25, "--out", model)
    assert res.returncode == 0, res.stderr
    assert "held out: 1 of 5 images" in res.stdout and "confusion" in res.stdout
    assert "nothing held out" not in res.stdout and "parent model's own types" not in res.stdout  # an untyped parent
    acc = float(res.stdout.split("held-out accuracy ")[1].split()[0])
    assert acc >= 0.9, res.stdout  # size and darkness are in the embedding
    # detect with the new model and with its parent: the same nuclei, now with the new classes
    test = two_kinds(tmp_path / "test", 1, seed=9) / "img0.png"
    out_new, out_old = tmp_path / "new", tmp_path / "old"
    for out, extra in ((out_new, ["--model", model]), (out_old, [])):
        r = _cli("detect", test, "--mpp", 0.25, "--no-tissue-mask", "--out", out, "--quiet", *extra)
        assert r.returncode == 0, r.stderr
    new = list(csv.reader(open(out_new / "img0.csv")))
    old = list(csv.reader(open(out_old / "img0.csv")))
    assert new[0] == old[0] + ["type", "p_lymphocyte", "p_tumour"]
    assert [r[:len(old[0])] for r in new] == old  # nuclei bit for bit (as the CSV writes them)
    geo = json.loads((out_new / "img0.geojson").read_text())
    classes = {f["properties"]["classification"]["name"] for f in geo["features"]}
    assert classes == {"lymphocyte", "tumour"}
    dsa = json.loads((out_new / "img0.anot.json").read_text())
    assert {g for e in dsa["elements"] for g in [e.get("group")]} == {"lymphocyte", "tumour"}
    run = json.loads((out_new / "img0.run.json").read_text())
    assert set(run["nuclei_by_type"]) == {"lymphocyte", "tumour"}
    # and the types are right on the unseen image: each detection paired with its drawn nucleus
    truth = list(csv.DictReader(open(test.with_name("img0_types.csv"))))
    txy = np.array([(float(t["x"]), float(t["y"])) for t in truth])
    rows = [r for r in new[1:] if float(r[4]) >= 0.5]
    pxy = np.array([((float(r[0]) + float(r[2])) / 2, (float(r[1]) + float(r[3])) / 2) for r in rows])
    from wsinuclei.type_metrics import pair_centres

    pi, ti = pair_centres(pxy, txy, 12.0)
    assert len(pi) >= 0.8 * len(truth)
    assert np.mean([rows[p][6] == truth[t]["type"] for p, t in zip(pi, ti)]) >= 0.9


def test_train_types_says_what_is_wrong(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    r = _cli("train-types", folder, "--out", tmp_path / "m.safetensors")
    assert r.returncode == 2 and "no image with clicked centres found" in r.stderr and "Traceback" not in r.stderr
    one = two_kinds(tmp_path / "one", 1, seed=2)
    rows = list(csv.reader(open(one / "img0_types.csv")))
    with open(one / "img0_types.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([rows[0]] + [(x, y, "tumour") for x, y, _ in rows[1:]])
    r = _cli("train-types", one, "--mpp", 0.25, "--out", tmp_path / "m.safetensors")
    assert r.returncode == 2 and "a type head needs at least two" in r.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_clicked_images_are_embedded_from_the_tables_alone_and_glass_is_skipped(tmp_path):
    """Each clicked image is detected for its tables only (no CSV, GeoJSON, DSA file or thumbnail is written);
    an image of glass alone is skipped by its error type, its clicks counted as unpaired."""
    from PIL import Image

    from wsinuclei.type_training import embed_clicks, find_clicked_images

    data = two_kinds(tmp_path / "clicks", 2, seed=4)
    Image.fromarray(np.full((256, 256, 3), 250, np.uint8)).save(data / "glass.png")
    (data / "glass_types.csv").write_text("x,y,type\n10,10,tumour\n20,20,lymphocyte\n30,30,tumour\n")
    said, work = [], tmp_path / "work"
    got = embed_clicks(find_clicked_images([data]), None, 0.25, work, said.append)
    assert any(s.startswith("glass.png: skipped (") and "no tissue found" in s for s in said), said
    assert got.clicks == 2 * 36 + 3 and got.unpaired >= 3
    assert got.names == ("lymphocyte", "tumour") and got.embeddings.shape == (len(got.labels), 64)
    assert len(got.labels) >= 0.8 * 72 and set(np.unique(got.image)) == {1, 2}  # glass.png is 0
    written = {p.name for p in work.rglob("*") if p.is_file() and not any(q.startswith(".") for q in p.parts)}
    assert {n.split(".", 1)[1] for n in written} <= {"nuclei.parquet", "bag.parquet", "run.json", "profile.csv"}
    assert any(n.endswith(".nuclei.parquet") for n in written), written
    from wsinuclei.pipeline import RunOptions

    with pytest.raises(WsinucleiError, match="tables_only writes the feature and embedding tables only"):
        RunOptions(tables_only=True).validate()  # no table asked for: nothing would be written


def test_a_large_image_runs_only_around_its_clicks(tmp_path):
    """A slide-sized image with clicks in one corner: only the tiles near the clicks run, and the clicks are
    paired there as on the small image."""
    from PIL import Image

    from wsinuclei.type_training import embed_clicks

    small = two_kinds(tmp_path / "small", 1, seed=6)
    rng = np.random.default_rng(0)
    canvas = np.clip((238, 234, 238) + rng.normal(0, 3, (2304, 2304, 3)), 0, 255).astype(np.uint8)
    canvas[96:608, 96:608] = np.asarray(Image.open(small / "img0.png"))
    big = tmp_path / "big" / "slide.png"
    big.parent.mkdir()
    Image.fromarray(canvas).save(big)
    rows = list(csv.DictReader(open(small / "img0_types.csv")))
    with open(big.with_name("slide_types.csv"), "w", newline="") as fh:
        csv.writer(fh).writerows([("x", "y", "type")] + [(float(r["x"]) + 96, float(r["y"]) + 96, r["type"])
                                                          for r in rows])
    work = tmp_path / "work"
    got = embed_clicks([(big, big.with_name("slide_types.csv"))], None, 0.25, work, lambda *_: None)
    assert (work / "0.clicks.geojson").is_file()  # the squares around the clicks, as a regions file
    run = json.loads(next((work / "0").glob("*.run.json")).read_text())
    assert run["tiles_total"] == run["tiles_processed"] == 1  # the whole image: 3 x 3 tiles
    assert not list((work / "0").glob("*.regions.*"))  # the squares say where to run; nothing is counted in them
    assert got.clicks == 36 and len(got.labels) >= 0.8 * 36
    alone = embed_clicks([(small / "img0.png", small / "img0_types.csv")], None, 0.25, tmp_path / "w2",
                         lambda *_: None)
    assert not (tmp_path / "w2" / "0.clicks.geojson").exists()  # a small image runs whole
    assert abs(len(alone.labels) - len(got.labels)) <= 2


BRCA_TRAIN = MONUSEG.parent / "brca" / "train"


@need(BRCA_TRAIN)
def test_a_typed_parent_s_own_types_are_scored_beside_the_new_head(tmp_path):
    """`train-types --model star_types` (the shipped typed model, by name) on five BRCA-M2C training images: the
    new head's held-out report, then the parent's own types on the same held-out nuclei (its training data, so
    most are right: 0.87 measured); the written file carries both reports."""
    import shutil

    for i in range(1, 6):
        for suffix in (".jpg", "_types.csv"):
            shutil.copy(BRCA_TRAIN / f"brca_train_{i:02d}{suffix}", tmp_path)
    model = tmp_path / "mine.safetensors"
    res = _cli("train-types", tmp_path, "--mpp", 0.51, "--model", "star_types", "--out", model)
    assert res.returncode == 0, res.stderr
    head_part, parent_part = res.stdout.split("the parent model's own types on the same held-out nuclei")
    assert "held-out accuracy" in head_part and "confusion" in parent_part
    assert float(parent_part.split("held-out accuracy ")[1].split()[0]) >= 0.7
    from wsinuclei.checkpoint import read_model_file

    record = read_model_file(model)[0].extra["type_head"]
    assert record["parent"]["file"] == "star_types.safetensors"
    assert record["parent_held_out"]["classes"]["inflammatory"]["support"] == \
        record["held_out"]["classes"]["inflammatory"]["support"] > 0
