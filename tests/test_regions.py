"""`wsinuclei regions`: a finished run's nuclei counted inside drawn regions, from a QuPath GeoJSON export and
from a Digital Slide Archive annotation, checked against counts computed here by plain inequalities."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_cli import assert_clean_error, run_here

MPP = 0.25
TYPES = ("epithelial", "inflammatory", "stromal", "other")


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as `wsinuclei detect` leaves it: NAME.run.json and NAME.csv (nuclei on a 40 px grid, some
    below the score cut), a typed model's columns, and the slide (a 2,000 x 1,600 px image) the summary names."""
    rng = np.random.default_rng(0)
    out = tmp_path / "run"
    out.mkdir()
    slide = tmp_path / "slide.png"
    Image.new("RGB", (2000, 1600), (240, 230, 235)).save(slide)
    xs, ys = np.meshgrid(np.arange(20, 2000, 40.0), np.arange(20, 1600, 40.0))
    cx, cy = xs.ravel() + rng.uniform(-5, 5, xs.size), ys.ravel() + rng.uniform(-5, 5, xs.size)
    score = rng.uniform(0.1, 1.0, cx.size)
    kind = rng.integers(0, 4, cx.size)
    area = rng.uniform(10, 60, cx.size)
    with open(out / "s.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x0", "y0", "x1", "y1", "score", "area_um2", "type", *(f"p_{t}" for t in TYPES)])
        for i in range(cx.size):
            w.writerow([cx[i] - 6, cy[i] - 5, cx[i] + 6, cy[i] + 5, f"{score[i]:.4f}", f"{area[i]:.2f}",
                        TYPES[kind[i]], 0.25, 0.25, 0.25, 0.25])
    keep = np.round(score, 4) >= 0.5
    counts = {t: int((kind[keep] == k).sum()) for k, t in enumerate(TYPES)}
    (out / "s.run.json").write_text(json.dumps({"name": "s", "slide": str(slide), "mpp": MPP, "score_cut": 0.5,
                                                "nuclei_by_type": counts}))
    return out, dict(x=cx[keep], y=cy[keep], kind=kind[keep], area=area[keep])


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_qupath_regions_with_a_hole_and_a_class_of_two_polygons(run_dir, tmp_path, capsys):
    out, n = run_dir
    geo = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "T1", "classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [_square(100, 100, 900, 700), _square(300, 300, 500, 500)]}},
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "MultiPolygon", "coordinates": [[_square(800, 600, 1200, 1000)],
                                                              [_square(1500, 100, 1900, 300)]]}},
        {"type": "Feature", "properties": {"name": "a point, not a region"},
         "geometry": {"type": "Point", "coordinates": [5, 5]}}]}
    path = tmp_path / "regions.geojson"
    path.write_text(json.dumps(geo))
    proc = run_here(capsys, "regions", out, "--regions", path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(out / "s.regions.csv")))
    assert [(r["level"], r["region"], r["class"]) for r in rows] == [
        ("region", "T1", "Tumor"), ("region", "Tumor 2", "Tumor"), ("class", "Tumor", "Tumor")]
    x, y = n["x"], n["y"]
    inb = lambda x0, y0, x1, y1: (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)  # noqa: E731
    t1 = inb(100, 100, 900, 700) & ~(inb(300, 300, 500, 500) & ~((x == 300) | (x == 500) | (y == 300) | (y == 500)))
    t2 = inb(800, 600, 1200, 1000) | inb(1500, 100, 1900, 300)
    mm2 = (MPP / 1000) ** 2
    for row, sel, area_px in ((rows[0], t1, 800 * 600 - 200 * 200), (rows[1], t2, 400 * 400 + 400 * 200),
                              (rows[2], t1 | t2, 800 * 600 - 200 * 200 + 400 * 400 + 400 * 200 - 100 * 100)):
        assert int(row["nuclei"]) == sel.sum() > 10
        assert float(row["area_mm2"]) == pytest.approx(area_px * mm2, rel=1e-5)
        assert float(row["nuclei_per_mm2"]) == pytest.approx(sel.sum() / (area_px * mm2), rel=1e-5)
        for k, t in enumerate(TYPES):
            assert int(row[f"nuclei_{t}"]) == (n["kind"][sel] == k).sum()
        assert float(row["median_area_um2"]) == pytest.approx(np.median(n["area"][sel]), rel=1e-4)


def test_dsa_rectangles_and_closed_polylines(run_dir, tmp_path, capsys):
    out, n = run_dir
    ann = {"annotation": {"name": "margin", "elements": [
        # 400 x 200 rotated a quarter turn about its centre (1000, 800): 200 wide, 400 high
        {"type": "rectangle", "center": [1000, 800, 0], "width": 400, "height": 200, "rotation": np.pi / 2,
         "label": {"value": "R"}},
        {"type": "polyline", "closed": True, "points": [[0, 0, 0], [600, 0, 0], [0, 600, 0]], "group": "stroma"},
        {"type": "polyline", "closed": False, "points": [[0, 0, 0], [10, 10, 0]]}]}}
    path = tmp_path / "regions.anot.json"
    path.write_text(json.dumps(ann))
    proc = run_here(capsys, "regions", out / "s.run.json", "--regions", path, "--out", tmp_path / "t.csv")
    assert proc.returncode == 0, proc.stderr
    rows = {r["region"]: r for r in csv.DictReader(open(tmp_path / "t.csv"))}
    x, y = n["x"], n["y"]
    rect = (np.abs(x - 1000) <= 100) & (np.abs(y - 800) <= 200)
    tri = (x >= 0) & (y >= 0) & (x + y <= 600)
    assert rows["R"]["class"] == "margin" and int(rows["R"]["nuclei"]) == rect.sum() > 10
    assert rows["stroma 2"]["class"] == "stroma" and int(rows["stroma 2"]["nuclei"]) == tri.sum() > 10
    assert float(rows["stroma 2"]["area_mm2"]) == pytest.approx(600 * 600 / 2 * (MPP / 1000) ** 2, rel=1e-6)
    assert set(rows) == {"R", "stroma 2", "margin", "stroma"}  # the open line is no region; one row per class


def test_a_self_intersecting_outline_is_repaired_and_said_so(run_dir, tmp_path, capsys):
    out, n = run_dir
    bowtie = [[1000, 1000], [1400, 1400], [1400, 1000], [1000, 1400], [1000, 1000]]
    path = tmp_path / "r.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {"name": "bow"},
                                "geometry": {"type": "Polygon", "coordinates": [bowtie]}}))
    proc = run_here(capsys, "regions", out, "--regions", path)
    assert proc.returncode == 0 and "crosses itself" in proc.stdout
    row = next(csv.DictReader(open(out / "s.regions.csv")))
    assert float(row["area_mm2"]) == pytest.approx(2 * 200 * 400 / 2 * (MPP / 1000) ** 2, rel=1e-6)
    dx, dy = np.abs(n["x"] - 1200), n["y"] - 1200  # two triangles meeting at (1200, 1200), opening left and right
    assert int(row["nuclei"]) == ((n["x"] >= 1000) & (n["x"] <= 1400) & (np.abs(dy) <= dx)).sum()


@pytest.mark.parametrize("content,needle", [
    ("", "not a JSON file"),
    (json.dumps({"type": "FeatureCollection", "features": []}), "holds no polygon"),
    (json.dumps({"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
        _square(10**6, 10**6, 10**6 + 50, 10**6 + 50)]}}), "lies outside the slide"),
    (json.dumps({"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
        [[0, 0], [10, 0], [20, 0], [0, 0]]]}}), "encloses no area"),
])
def test_bad_regions_get_one_line(run_dir, tmp_path, capsys, content, needle):
    out, _ = run_dir
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert_clean_error(run_here(capsys, "regions", out, "--regions", path), needle)
    assert not (out / "s.regions.csv").exists()


def test_a_folder_without_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "r.geojson").write_text("{}")
    assert_clean_error(run_here(capsys, "regions", tmp_path, "--regions", tmp_path / "r.geojson"), "NAME.run.json")


def test_cohort_gathers_three_runs_and_their_regions(run_dir, tmp_path, capsys):
    """`wsinuclei cohort` over three runs (one with regions counted) writes one table; read back, it holds a
    row per slide with the summary's figures and the region rows of the run that has them."""
    import shutil

    out, n = run_dir
    runs = []
    for k in range(3):
        d = tmp_path / f"run{k}"
        shutil.copytree(out, d)
        meta = json.loads((d / "s.run.json").read_text())
        meta.update(slide=f"/slides/s{k}.svs", nuclei=100 + k, model={"file": "/m/star_default.safetensors",
                                                                        "sha1": "abc"}, wsinuclei="0.3.0",
                    tissue_mm2=0.1 * (k + 1))
        (d / "s.run.json").write_text(json.dumps(meta))
        runs.append(d)
    (tmp_path / "r.geojson").write_text(json.dumps({"type": "Feature", "properties": {"name": "A"},
                                                    "geometry": {"type": "Polygon",
                                                                 "coordinates": [_square(0, 0, 400, 400)]}}))
    assert run_here(capsys, "regions", runs[1], "--regions", tmp_path / "r.geojson").returncode == 0
    table = tmp_path / "cohort.csv"
    proc = run_here(capsys, "cohort", *runs, "--out", table)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(table)))
    assert [(r["level"], r["slide"]) for r in rows] == [("slide", "/slides/s0.svs"), ("slide", "/slides/s1.svs"),
                                                        ("region", "/slides/s1.svs"), ("slide", "/slides/s2.svs")]
    assert [int(r["nuclei"]) for r in rows if r["level"] == "slide"] == [100, 101, 102]
    assert all(r["model"] == "star_default.safetensors" and r["wsinuclei"] == "0.3.0" for r in rows)
    counts = json.loads((out / "s.run.json").read_text())["nuclei_by_type"]
    assert int(rows[0]["nuclei_inflammatory"]) == counts["inflammatory"]
    assert float(rows[0]["fraction_inflammatory"]) == pytest.approx(counts["inflammatory"] / 100, rel=1e-5)
    # densities per mm² of the run's tissue (run.json), slide by slide
    for k, r in enumerate(r for r in rows if r["level"] == "slide"):
        assert float(r["tissue_mm2"]) == pytest.approx(0.1 * (k + 1))
        assert float(r["inflammatory_per_mm2_tissue"]) == pytest.approx(counts["inflammatory"] / (0.1 * (k + 1)))
    # the plotting example of docs/regions.md runs on the table as written
    doc = (Path(__file__).resolve().parents[1] / "docs" / "regions.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "til_density.png" in b)
    pytest.importorskip("pandas")
    subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, check=True, env={**os.environ, "MPLBACKEND": "Agg"})
    assert (tmp_path / "til_density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    inside = (n["x"] <= 400) & (n["y"] <= 400)
    assert rows[2]["region"] == "A" and int(rows[2]["nuclei"]) == inside.sum()
    # the same slide twice is refused, as is a run with failed tiles
    assert_clean_error(run_here(capsys, "cohort", runs[0], runs[0], "--out", table), "already in the table")
    meta = json.loads((runs[2] / "s.run.json").read_text())
    (runs[2] / "s.run.json").write_text(json.dumps({**meta, "tiles_failed": 2}))
    assert_clean_error(run_here(capsys, "cohort", runs[0], runs[2], "--out", table), "2 tiles failed")


def test_detect_runs_only_the_regions_and_counts_them(stub_detector, pyramid_slide, tmp_path, capsys):
    """`detect --regions`: the tiles whose core touches no region do not run; the nuclei kept are the whole-slide
    run's nuclei whose centre lies in a region (the stub detector finds every blob exactly, whatever the tiling);
    NAME.regions.csv/.parquet count them per region and class with the tissue inside each, as `wsinuclei
    regions` then counts the same run."""
    import pyarrow.parquet as pq
    import shapely

    path, _, _ = pyramid_slide
    geo = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "A", "classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": [_square(100, 100, 500, 600)]}},
        {"type": "Feature", "properties": {"name": "B", "classification": {"name": "Stroma"}},
         "geometry": {"type": "Polygon", "coordinates": [[[1000, 1000], [1350, 1000], [1200, 1400], [1000, 1000]]]}}]}
    regions = tmp_path / "drawn.geojson"
    regions.write_text(json.dumps(geo))
    whole, inside = tmp_path / "whole", tmp_path / "inside"
    proc = run_here(capsys, "detect", path, "--out", whole, "--tile-size", "512", "--quiet")
    assert proc.returncode == 0, proc.stderr
    proc = run_here(capsys, "detect", path, "--out", inside, "--tile-size", "512", "--regions", regions)
    assert proc.returncode == 0, proc.stderr
    assert "outside the regions" in proc.stdout + proc.stderr
    run = json.loads((inside / "synthetic.run.json").read_text())
    full = json.loads((whole / "synthetic.run.json").read_text())
    assert 0 < run["tiles_processed"] < full["tiles_processed"] and run["tiles_outside_regions"] > 0

    def at_cut(folder):
        rows = list(csv.DictReader(open(folder / "synthetic.csv")))
        b = np.array([[float(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows if float(r["score"]) >= 0.5])
        return b[np.lexsort(b.T[::-1])]

    union = shapely.union_all([shapely.box(100, 100, 500, 600),
                               shapely.Polygon([(1000, 1000), (1350, 1000), (1200, 1400)])])
    b_all, b_in = at_cut(whole), at_cut(inside)
    centre = lambda b: ((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2)  # noqa: E731
    expected = b_all[shapely.intersects_xy(union, *centre(b_all))]
    assert len(b_in) > 10 and np.allclose(b_in, expected)
    rows = list(csv.DictReader(open(inside / "synthetic.regions.csv")))
    assert [(r["level"], r["region"]) for r in rows] == [("region", "A"), ("region", "B"), ("class", "Stroma"),
                                                         ("class", "Tumor")]
    cx, cy = centre(b_in)
    in_a = shapely.intersects_xy(shapely.box(100, 100, 500, 600), cx, cy)
    assert int(rows[0]["nuclei"]) == in_a.sum() and int(rows[1]["nuclei"]) == len(b_in) - in_a.sum()
    for r in rows:
        assert 0 < float(r["tissue_mm2"]) <= float(r["area_mm2"]) * 1.05  # mask pixels whose centre is inside
        assert float(r["nuclei_per_mm2_tissue"]) == pytest.approx(int(r["nuclei"]) / float(r["tissue_mm2"]), rel=1e-4)
    table = pq.read_table(inside / "synthetic.regions.parquet").to_pylist()
    assert [t["nuclei"] for t in table] == [int(r["nuclei"]) for r in rows]
    # counting the finished run again gives the same table
    (inside / "synthetic.regions.csv").rename(tmp_path / "from_detect.csv")
    proc = run_here(capsys, "regions", inside, "--regions", regions)
    assert proc.returncode == 0, proc.stderr
    again = list(csv.DictReader(open(inside / "synthetic.regions.csv")))
    assert [(r["nuclei"], r["tissue_mm2"]) for r in again] == [(r["nuclei"], r["tissue_mm2"]) for r in rows]


def test_detect_regions_outside_the_slide_or_with_an_roi_is_refused(stub_detector, pyramid_slide, tmp_path, capsys):
    path, _, _ = pyramid_slide
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "X"},
         "geometry": {"type": "Polygon", "coordinates": [_square(50000, 50000, 51000, 51000)]}}]}))
    assert_clean_error(run_here(capsys, "detect", path, "--out", tmp_path / "o", "--regions", far), "outside the slide")
    assert_clean_error(run_here(capsys, "detect", path, "--out", tmp_path / "o", "--regions", far, "--roi",
                                "0,0,100,100"), "--roi and --regions")
    assert not (tmp_path / "o" / "synthetic.csv").exists()
