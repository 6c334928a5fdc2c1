"""Random input, as a careless or hostile user gives it: every outcome is a result or one clear error (exit 2),
never a traceback and never a hang. ``detect --dry-run`` plans without running a tile, so many option sets fit
in a few seconds."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from wsinuclei.errors import WsinucleiError

NUMBERS = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["", "abc", "1e9", "-0", "0x10", "1,2", "½", "--", "-1"]))
OPTIONS = ["--mpp", "--tile-size", "--overlap", "--min-tissue", "--min-score", "--score-cut", "--batch-size",
           "--readers", "--workers", "--read-mpp", "--roi", "--backend", "--device", "--retries"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from conftest import synthetic_he

    path = tmp_path_factory.mktemp("hostile") / "region.png"
    Image.fromarray(synthetic_he(256, 256, seed=3)[0]).save(path)
    return path


def _main(argv) -> tuple[int, str]:
    from wsinuclei.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    return code, err.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(OPTIONS), NUMBERS), max_size=4))
@example(pairs=[("--device", "--")])  # found by the search: Python 3.11's argparse turned the value into []
@example(pairs=[("--mpp", "--")])
def test_detect_options_give_a_plan_or_one_clear_error(image, tmp_path, pairs):
    argv = ["detect", image, "--out", tmp_path / "o", "--dry-run", "--mpp", "0.25"]
    for opt, value in pairs:
        argv += [f"{opt}={value}"]  # the = form: a value starting with '-' stays a value
    code, err = _main(argv)
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("wsinuclei: error:"), err
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=6),
                   st.integers(-10**6, 10**6).map(str))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(VALUES, VALUES), min_size=0, max_size=5), VALUES, st.sampled_from(["xml", "csv", "points",
                                                                                             "geojson"]))
def test_annotation_readers_read_or_refuse_in_one_line(tmp_path, vertices, extra, kind):
    from xml.sax.saxutils import quoteattr

    from wsinuclei.annotations import read_boxes

    if kind == "xml":
        body = "".join(f"<Vertex X={quoteattr(x)} Y={quoteattr(y)}/>" for x, y in vertices)
        text = (f"<Annotations MicronsPerPixel={quoteattr(extra)}><Annotation><Regions><Region><Vertices>{body}"
                "</Vertices></Region></Regions></Annotation></Annotations>")
        path = tmp_path / "a.xml"
    elif kind == "csv":
        text = "x0,y0,x1,y1,score\n" + "".join(f"{x},{y},{y},{x},{extra}\n" for x, y in vertices)
        path = tmp_path / "a.csv"
    elif kind == "points":
        text = "x,y\n" + "".join(f"{x},{y}\n" for x, y in vertices)
        path = tmp_path / "a_points.csv"
    else:
        coords = ",".join(f"[{x},{y}]" for x, y in vertices)
        text = ('{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Polygon",'
                f'"coordinates":[[{coords}]]}},"properties":{{"score":{extra!r}}}}}]}}')
        path = tmp_path / "a.geojson"
    path.write_bytes(text.encode("utf-8", "replace"))  # hypothesis' text may hold lone surrogates
    try:
        boxes = read_boxes(path)
    except WsinucleiError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert np.isfinite(boxes.boxes).all()
    assert boxes.scores is None or np.isfinite(boxes.scores).all()


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_writes(tmp_path, stub_detector,
                                                                            pyramid_slide):
    import fcntl

    from wsinuclei.pipeline import RunOptions, run_slide

    out = tmp_path / "out"
    out.mkdir()
    with open(out / f".{pyramid_slide[0].stem}.lock", "a+") as held:  # the first run, still writing
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(WsinucleiError, match="another wsinuclei run is writing"):
            run_slide(pyramid_slide[0], out, RunOptions(tile_size=256, overlap=32, progress=False), log=lambda *_: None)
    assert stub_detector.calls == 0
    report = run_slide(pyramid_slide[0], out, RunOptions(tile_size=256, overlap=32, progress=False), log=lambda *_: None)
    assert report.nuclei > 0  # once the first has finished
