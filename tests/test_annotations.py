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
