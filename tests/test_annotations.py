import json

import numpy as np
import pytest
from PIL import Image

from wsinuclei.annotations import collect_box_files, read_boxes, stem_of
from wsinuclei.errors import WsinucleiError
from conftest import MONUSEG, need

XML = """<?xml version="1.0"?>
<Annotations MicronsPerPixel="0.252700"><Annotation Id="1"><Regions>
<Region Id="1"><Vertices><Vertex X="10" Y="20"/><Vertex X="30" Y="22"/><Vertex X="25" Y="40"/></Vertices></Region>
<Region Id="2"><Vertices><Vertex X="5" Y="5"/><Vertex X="6" Y="6"/></Vertices></Region>
<Region Id="3"><Vertices><Vertex X="1" Y="1"/><Vertex X="1" Y="9"/><Vertex X="1" Y="4"/></Vertices></Region>
<Region Id="4"><Vertices><Vertex X="100.5" Y="50"/><Vertex X="110" Y="50"/><Vertex X="110" Y="61.5"/></Vertices></Region>
</Regions></Annotation></Annotations>"""


def test_aperio_xml_boxes_and_degenerates(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(XML)
    b = read_boxes(p)
    assert b.boxes.tolist() == [[10, 20, 30, 40], [100.5, 50, 110, 61.5]]
    assert b.skipped == 2  # two points; zero width
    assert b.meta["mpp"] == pytest.approx(0.2527)


def test_xml_entity_expansion_is_refused(tmp_path):
    p = tmp_path / "bomb.xml"
    p.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><Annotations>&b;</Annotations>')
    with pytest.raises(WsinucleiError):
        read_boxes(p)


def test_label_image_boxes(tmp_path):
    lab = np.zeros((50, 60), np.uint16)
    lab[10:20, 5:9] = 1
    lab[30:31, 40:41] = 700  # one pixel, high label value
    p = tmp_path / "img_labels.png"
    Image.fromarray(lab).save(p)
    b = read_boxes(p)
    assert sorted(b.boxes.tolist()) == [[5, 10, 9, 20], [40, 30, 41, 31]]


def test_geojson_and_csv(tmp_path):
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 3], [0, 3], [0, 0]]]},
         "properties": {"measurements": {"score": 0.8}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}},
    ]}
    (tmp_path / "g.geojson").write_text(json.dumps(fc))
    b = read_boxes(tmp_path / "g.geojson")
    assert b.boxes.tolist() == [[0, 0, 4, 3]] and b.scores.tolist() == [0.8] and b.skipped == 1
    (tmp_path / "c.csv").write_text("x0,y0,x1,y1,score\n1,2,3,4,0.5\n5,5,5,9,0.9\n")
    c = read_boxes(tmp_path / "c.csv")
    assert c.boxes.tolist() == [[1, 2, 3, 4]] and c.scores.tolist() == [0.5] and c.skipped == 1
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(WsinucleiError, match="x0,y0,x1,y1"):
        read_boxes(tmp_path / "bad.csv")


def test_stems_pair_files(tmp_path):
    assert stem_of("A_labels.png") == stem_of("A.xml") == stem_of("A.geojson.gz") == stem_of("A.csv") == "A"
    for n in ("A.csv", "B.csv", "B.profile.csv"):
        (tmp_path / n).write_text("x0,y0,x1,y1\n")
    assert sorted(collect_box_files(tmp_path)) == ["A", "B"]


@need(MONUSEG)
def test_monuseg_totals():
    test = sorted((MONUSEG / "test").glob("*.xml"))
    assert len(test) == 14
    boxes = [read_boxes(p) for p in test]
    assert sum(len(b) for b in boxes) == 6697
    assert sum(b.skipped for b in boxes) == 0
    train = sorted((MONUSEG / "train").glob("*_labels.png"))
    assert len(train) == 30
    assert sum(len(read_boxes(p)) for p in train) == 16958


@pytest.mark.parametrize("body, message", [
    ('<Vertex Y="1"/><Vertex X="3" Y="4"/><Vertex X="5" Y="9"/>', "Vertex's X is missing"),
    ('<Vertex X="abc" Y="1"/><Vertex X="3" Y="4"/><Vertex X="5" Y="9"/>', "Vertex's X is 'abc'"),
    ('<Vertex X="nan" Y="1"/><Vertex X="3" Y="4"/><Vertex X="5" Y="9"/>', "not a finite number"),
    ('<Vertex X="1" Y="inf"/><Vertex X="3" Y="4"/><Vertex X="5" Y="9"/>', "not a finite number"),
])
def test_bad_xml_vertices_are_one_clear_error(tmp_path, body, message):
    p = tmp_path / "a.xml"
    p.write_text(f'<Annotations><Annotation><Regions><Region><Vertices>{body}</Vertices></Region></Regions>'
                 '</Annotation></Annotations>')
    with pytest.raises(WsinucleiError, match=message) as e:
        read_boxes(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_a_bad_microns_per_pixel_is_one_clear_error(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text('<Annotations MicronsPerPixel="abc"><Annotation><Regions></Regions></Annotation></Annotations>')
    with pytest.raises(WsinucleiError, match="MicronsPerPixel is 'abc'"):
        read_boxes(p)


@pytest.mark.parametrize("name, text, message", [
    ("p.csv", "x0,y0,x1,y1,score\n0,0,10,10,0.9\n5,5,inf,20,0.8\n", "a box of row 2"),
    ("p.csv", "x0,y0,x1,y1,score\n0,0,10,10,nan\n", "the score of row 1"),
    ("t.csv", "x0,y0,x1,y1\nnan,0,10,10\n", "a box of row 1"),
    ("a_points.csv", "x,y\n1,2\nnan,4\n", "a centre of row 2"),
    ("g.geojson", '{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Polygon",'
                  '"coordinates":[[[0,0],[NaN,0],[5,5],[0,0]]]}}]}', "a coordinate"),
    ("s.geojson", '{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Polygon",'
                  '"coordinates":[[[0,0],[9,0],[5,5],[0,0]]]},"properties":{"score":"abc"}}]}', "score is not a number"),
])
def test_non_finite_boxes_and_scores_are_refused_not_scored(tmp_path, name, text, message):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(WsinucleiError, match=message):
        read_boxes(p)
