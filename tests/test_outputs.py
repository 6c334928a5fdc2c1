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
    paths = write_outputs(tmp_path, "s", BOXES, SCORES, gzip_json=True)
    assert paths["geojson"].name == "s.geojson.gz" and paths["dsa"].name == "s.anot.json.gz"
    assert len(json.loads(gzip.decompress(paths["dsa"].read_bytes()))["elements"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.anot.json.gz", "s.csv", "s.geojson.gz"]


def test_empty_result_files_are_well_formed(tmp_path):
    paths = write_outputs(tmp_path, "e", np.zeros((0, 4)), np.zeros(0))
    assert paths["csv"].read_text() == "x0,y0,x1,y1,score\n"
    assert json.loads(paths["geojson"].read_text())["features"] == []
