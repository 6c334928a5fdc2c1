import csv
import gzip
import json

import numpy as np
import pytest
import shapely.geometry

from wsinuclei.annotations import read_boxes
from wsinuclei.outputs import write_outputs

BOXES = np.array([[10.0, 20.0, 30.0, 44.0], [100.5, 7.0, 118.0, 19.5]])
SCORES = np.array([0.91, 0.42])


def test_csv_contract(tmp_path):
    paths = write_outputs(tmp_path, "slide", BOXES, SCORES)
    lines = paths["csv"].read_text().splitlines()
    assert lines[0] == "x0,y0,x1,y1,score"
    rows = list(csv.DictReader(lines))
    assert [float(rows[1][k]) for k in ("x0", "y0", "x1", "y1", "score")] == [100.5, 7.0, 118.0, 19.5, 0.42]
    np.testing.assert_allclose(read_boxes(paths["csv"]).boxes, BOXES)


def test_geojson_is_valid_and_qupath_shaped(tmp_path):
    paths = write_outputs(tmp_path, "slide", BOXES, SCORES)
    data = json.loads(paths["geojson"].read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    for f, box, s in zip(data["features"], BOXES, SCORES):
        geom = shapely.geometry.shape(f["geometry"])
        assert geom.is_valid and geom.geom_type == "Polygon"
        assert geom.bounds == pytest.approx(tuple(box))
        assert f["properties"]["objectType"] == "detection"
        assert f["properties"]["measurements"]["score"] == pytest.approx(s)
    back = read_boxes(paths["geojson"])
    np.testing.assert_allclose(back.boxes, BOXES)
    np.testing.assert_allclose(back.scores, SCORES)


def test_dsa_annotation_elements(tmp_path):
    paths = write_outputs(tmp_path, "slide", BOXES, SCORES)
    data = json.loads(paths["dsa"].read_text())
    assert isinstance(data["name"], str) and len(data["elements"]) == 2
    for el, (x0, y0, x1, y1) in zip(data["elements"], BOXES):
        assert el["type"] == "rectangle" and el["rotation"] == 0
        assert el["center"] == pytest.approx([(x0 + x1) / 2, (y0 + y1) / 2, 0])
        assert el["width"] == pytest.approx(x1 - x0) and el["height"] == pytest.approx(y1 - y0)
        assert set(el) >= {"type", "center", "width", "height", "rotation"}


def test_gzip_outputs_and_no_temporary_files_left(tmp_path):
    """--gzip compresses the GeoJSON; the DSA file stays plain JSON, the only form the DSA ingests."""
    paths = write_outputs(tmp_path, "s", BOXES, SCORES, gzip_json=True)
    assert paths["geojson"].name == "s.geojson.gz" and paths["dsa"].name == "s.anot.json"
    assert len(json.loads(gzip.decompress(paths["geojson"].read_bytes()))["features"]) == 2
    assert len(json.loads(paths["dsa"].read_text())["elements"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.anot.json", "s.csv", "s.geojson.gz"]


def test_empty_result_files_are_well_formed(tmp_path):
    paths = write_outputs(tmp_path, "e", np.zeros((0, 4)), np.zeros(0))
    assert paths["csv"].read_text() == "x0,y0,x1,y1,score\n"
    assert json.loads(paths["geojson"].read_text())["features"] == []


def test_contours_become_polygons_and_polylines_and_csv_gains_area(tmp_path):
    square = np.array([[10, 20], [30, 20], [30, 44], [10, 44]], float)
    tri = np.array([[100.5, 7.0], [118.0, 7.0], [110.0, 19.5]])
    areas = np.array([480 * 0.0625, 109.375 * 0.0625])
    paths = write_outputs(tmp_path, "c", BOXES, SCORES, polygons=[square, tri], areas_um2=areas)
    feats = json.loads(paths["geojson"].read_text())["features"]
    geom = shapely.geometry.shape(feats[1]["geometry"])
    assert geom.is_valid and len(feats[1]["geometry"]["coordinates"][0]) == 4  # closed triangle
    assert geom.area == pytest.approx(109.375)
    assert feats[0]["properties"]["measurements"]["Area \u00b5m^2"] == pytest.approx(30.0)
    el = json.loads(paths["dsa"].read_text())["elements"][1]
    assert el["type"] == "polyline" and el["closed"] is True and el["points"][2] == [110.0, 19.5, 0]
    rows = list(csv.DictReader(paths["csv"].read_text().splitlines()))
    assert list(rows[0]) == ["x0", "y0", "x1", "y1", "score", "area_um2"] and float(rows[0]["area_um2"]) == 30.0


def test_several_chunks_join_into_valid_files(tmp_path):
    from wsinuclei.outputs import CHUNK

    n = 2 * CHUNK + 7
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 10_000, (n, 2))
    boxes, scores = np.hstack([xy, xy + 10]), rng.uniform(0.1, 1, n)
    paths = write_outputs(tmp_path, "m", boxes, scores, gzip_json=True)
    feats = json.loads(gzip.decompress(paths["geojson"].read_bytes()))["features"]
    assert len(feats) == n and feats[CHUNK]["properties"]["measurements"]["score"] == round(scores[CHUNK], 4)
    assert len(json.loads(paths["dsa"].read_text())["elements"]) == n
    np.testing.assert_allclose(read_boxes(paths["csv"]).boxes, boxes, atol=0.051)


MILLION = """
import resource, sys
import numpy as np
from wsinuclei.outputs import write_outputs
rng = np.random.default_rng(0)
n = 1_000_000
xy = rng.uniform(0, 100_000, (n, 2))
boxes = np.hstack([xy, xy + rng.uniform(8, 40, (n, 2))])
scores = rng.uniform(0.1, 1, n)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
write_outputs(sys.argv[1], "big", boxes, scores)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_a_million_nuclei_stream_in_bounded_memory(tmp_path):
    """The old writer built every feature as a dict and then one JSON string: +1.7 GiB for 500,000 nuclei.
    Streamed, writing 1,000,000 nuclei raises the process's peak memory by less than 128 MiB (measured in a
    process of its own, beyond the input arrays)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", MILLION, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip()) < 128, proc.stdout
    with open(tmp_path / "big.csv") as fh:
        assert sum(1 for _ in fh) == 1_000_001
    for f, head in (("big.geojson", '{"type":"FeatureCollection","features":[{"type":"Feature"'),
                    ("big.anot.json", '{"name":"wsinuclei nuclei: big"')):
        with open(tmp_path / f, "rb") as fh:
            assert fh.read(len(head)).decode() == head
            fh.seek(-3, 2)
            assert fh.read() == b"}]}"


def test_polygon_text_is_each_coordinate_formatted_alone():
    """The one-format-per-polygon writer gives the text of formatting each coordinate on its own (rounding
    included: .x5 cases and float32 input), closed or not."""
    from wsinuclei.outputs import _polygon_text

    rng = np.random.default_rng(1)
    polys = [rng.uniform(0, 9000, (n, 2)) for n in (3, 17, 32)] + [np.array([[0.05, 1.25], [2.35, 3.45], [9.95, 0.0]])]
    polys.append(rng.uniform(0, 500, (8, 2)).astype(np.float32))
    for p in polys:
        pts = [(float(x), float(y)) for x, y in p]
        assert _polygon_text(p, "[%.1f,%.1f]", close=True) == ",".join(f"[{x:.1f},{y:.1f}]" for x, y in pts + pts[:1])
        assert _polygon_text(p, "[%.1f,%.1f,0]", close=False) == ",".join(f"[{x:.1f},{y:.1f},0]" for x, y in pts)
