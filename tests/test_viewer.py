"""`wsinuclei view`: the server's routes, and the page in a real browser (Debian's chromium, headless)."""

import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from wsinuclei.errors import WsinucleiError
from wsinuclei.pipeline import RunOptions, run_slide
from wsinuclei.viewer import ViewerServer, resolve_source

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OVERLAY_RGB = (0x00, 0xE0, 0x5A)  # the page's box colour


@pytest.fixture
def detected(pyramid_slide, stub_detector, tmp_path):
    out = tmp_path / "out"
    report = run_slide(pyramid_slide[0], out, RunOptions(tile_size=256, overlap=32, progress=False),
                       log=lambda *_: None)
    return out, report


@pytest.fixture
def server(detected):
    srv = ViewerServer(resolve_source(detected[0]))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(url, method="GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_routes_serve_only_the_slide_and_its_results(server, detected):
    out, report = detected
    assert server.server_address[0] == "127.0.0.1" and server.server_address[1] > 0
    status, body, _ = get(server.url + "api/info")
    info = json.loads(body)
    assert status == 200 and info["nuclei"] == report.nuclei and info["candidates"] == report.candidates
    assert info["width"] == 2100 and info["height"] == 1500 and info["mpp"] == pytest.approx(0.25)
    status, body, _ = get(server.url + "api/nuclei")
    rows = np.frombuffer(body, "<f4").reshape(-1, 5)
    csv = np.loadtxt(out / "synthetic.csv", delimiter=",", skiprows=1, ndmin=2)
    assert np.allclose(rows, csv, atol=0.05)
    status, body, headers = get(server.url + "dzi/slide.dzi")
    assert status == 200 and b'Width="2100"' in body and b'Height="1500"' in body
    status, body, headers = get(server.url + "dzi/slide_files/12/1_1.jpeg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    for path in ("dzi/slide_files/12/99_0.jpeg", "dzi/slide_files/40/0_0.jpeg", "static/../server.py",
                 "static/%2e%2e/server.py", "etc/passwd", "dzi/slide_files/12/1_1.png", "static/"):
        assert get(server.url + path)[0] == 404, path
    assert get(server.url + "api/info", method="POST")[0] == 405
    assert b"openseadragon.min.js" in get(server.url)[1]
    assert get(server.url + "static/openseadragon/LICENSE.txt")[1].startswith(b"Copyright")


def test_requests_for_another_host_name_are_refused(server):
    """DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 sends Host: evil.example."""
    import http.client

    port = server.server_address[1]

    def status(host):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("GET", "/api/info", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, body

    assert status("evil.example")[0] == 403
    assert status(f"evil.example:{port}")[0] == 403
    assert status("127.0.0.1")[0] == 403  # no port: not how a browser addresses this server
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        code, body = status(host)
        assert code == 200 and b'"nuclei"' in body, host


def test_targets_resolve_or_fail_in_one_line(detected, pyramid_slide, tmp_path):
    out, _ = detected
    assert resolve_source(out).slide == Path(pyramid_slide[0]).resolve()
    assert resolve_source(out / "synthetic.run.json").detections is not None
    src = resolve_source(pyramid_slide[0], results=out)
    assert src.slide == pyramid_slide[0] and len(src.detections.scores) > 0
    assert resolve_source(pyramid_slide[0]).detections is None  # the slide alone
    with pytest.raises(WsinucleiError, match="no NAME.run.json here"):
        resolve_source(tmp_path / "out" / ".." / "out" / "..")
    with pytest.raises(WsinucleiError, match="no such file"):
        resolve_source(tmp_path / "missing")
    (out / "other.run.json").write_text("{}")
    with pytest.raises(WsinucleiError, match="holds 2 runs"):
        resolve_source(out)


def test_view_command_refuses_a_bad_port_in_one_line(detected):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "wsinuclei.cli", "view", str(detected[0]), "--port", "70000",
                        "--no-browser"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--port" in r.stderr


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium browser installed (Debian: apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield b
        b.close()


def test_page_shows_slide_nuclei_counts_and_scores(server, detected, browser, tmp_path):
    from PIL import Image

    out, report = detected
    geo = json.loads((out / "synthetic.geojson").read_text())
    page = browser.new_page(viewport={"width": 1000, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    page.wait_for_function("window.wsinuclei && window.wsinuclei.ready", timeout=60_000)
    assert page.get_attribute("#status", "data-ready") == "1"
    # the displayed count is the file's: the nuclei in the GeoJSON (those at the cut)
    assert int(page.inner_text("#count-total").replace(",", "")) == len(geo["features"]) == report.nuclei > 0
    # the whole slide is in view at first: every nucleus is in view
    assert int(page.inner_text("#count-view").replace(",", "")) == report.nuclei
    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot))
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    tissue = (r - g > 30) & (b - g > 10)  # pink/purple H&E, not glass, not the page's grey
    overlay = (np.abs(r - OVERLAY_RGB[0]) < 40) & (np.abs(g - OVERLAY_RGB[1]) < 40) & (np.abs(b - OVERLAY_RGB[2]) < 40)
    assert tissue.sum() > 20_000, "no slide tiles on screen"
    assert overlay.sum() > 500, "no nuclei drawn"
    # click the first nucleus: its score is shown
    x0, y0, x1, y1 = geo["features"][0]["geometry"]["coordinates"][0][0] + \
        geo["features"][0]["geometry"]["coordinates"][0][2]
    pos = page.evaluate("""([x, y]) => { const v = window.wsinuclei.viewer;
        const p = v.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
        const r = v.element.getBoundingClientRect(); return [p.x + r.left, p.y + r.top]; }""",
                        [(x0 + x1) / 2, (y0 + y1) / 2])
    page.mouse.click(*pos)
    page.wait_for_selector("#details:not([hidden])", timeout=10_000)
    score = geo["features"][0]["properties"]["measurements"]["score"]
    assert f"score {score:.3f}" in page.inner_text("#details")
    # the slider re-filters live: above every score (the stub scores 0.9) nothing is left
    page.eval_on_selector("#cut", "el => { el.value = 0.95; el.dispatchEvent(new Event('input')); }")
    assert page.inner_text("#count-total") == "0" and page.inner_text("#count-view") == "0"
    page.eval_on_selector("#cut", "el => { el.value = 0.5; el.dispatchEvent(new Event('input')); }")
    assert int(page.inner_text("#count-total").replace(",", "")) == report.nuclei
    assert not errors, errors


def test_zoomed_out_the_nuclei_are_dots_until_they_would_merge(server, detected, browser):
    """Outlines while they are big enough to see; then a dot per nucleus while the densest part of the slide
    keeps dots apart on screen; only then the density map. The page's own rule (``modeAt``) at three scales,
    and a real zoomed-out frame drawn as dots, each dot on a nucleus' centre."""
    page = browser.new_page(viewport={"width": 1000, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url)
    page.wait_for_function("window.wsinuclei && window.wsinuclei.ready", timeout=60_000)
    spacing = page.evaluate("window.wsinuclei.denseSpacing")
    width = page.evaluate("window.wsinuclei.typicalWidth")
    assert 5 < spacing < 500  # image px between neighbouring nuclei where the slide is densest
    assert 4 / spacing < 3 / width  # this slide has zooms where boxes are under 3 px and dots 4 px apart
    dots = (4 / spacing + 3 / width) / 2  # such a zoom (screen px per image px)
    modes = page.evaluate("(z) => z.map((s) => window.wsinuclei.modeAt(s, 100))", [10, dots, 1 / spacing])
    assert modes == ["boxes", "dots", "density"], modes
    assert page.evaluate("window.wsinuclei.modeAt(10, 10000000)") == "density"  # too many to draw one by one
    # a frame at that zoom: dots, drawn
    page.evaluate("""(s) => { const v = window.wsinuclei.viewer; v.viewport.minZoomImageRatio = 0.0001;
        v.viewport.zoomTo(v.viewport.imageToViewportZoom(s), null, true); v.forceRedraw(); }""",
                  dots)
    page.wait_for_function("window.wsinuclei.mode === 'dots'", timeout=20_000)
    assert "dots" in page.inner_text("#mode")
    assert not errors, errors


def test_contours_are_matched_to_their_rows(pyramid_slide, stub_detector, tmp_path):
    stub_detector.outlines = True  # a contour model: each blob's outline (its box's corners)
    out = tmp_path / "contours"
    report = run_slide(pyramid_slide[0], out, RunOptions(tile_size=256, overlap=32, progress=False, min_score=0.1),
                       log=lambda *_: None)
    det = resolve_source(out).detections
    assert det.areas_um2 is not None and det.outline_offsets is not None
    has = np.diff(det.outline_offsets) > 0
    assert has.sum() == report.nuclei > 0 and (det.scores[has] >= 0.5).all()
    for i in np.flatnonzero(has)[:50]:
        poly = det.outline_xy[det.outline_offsets[i]:det.outline_offsets[i + 1]]
        assert np.allclose(poly.min(0), det.boxes[i, :2], atol=0.11) and np.allclose(poly.max(0), det.boxes[i, 2:], atol=0.11)
    srv = ViewerServer(resolve_source(out))
    try:
        assert json.loads(srv.info)["outlines"] is True
        assert len(srv.outlines) == 4 * (len(det.scores) + 1) + 8 * int(det.outline_offsets[-1])
    finally:
        srv.server_close()


def test_view_command_serves_prints_its_address_and_stops_on_sigterm(detected):
    import re
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "wsinuclei.cli", "view", str(detected[0]), "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"at (http://127\.0\.0\.1:(\d+)/)", line)
        assert m, line
        status, body, _ = get(m[1] + "api/info")
        assert status == 200 and json.loads(body)["nuclei"] == detected[1].nuclei
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_typed_run_is_coloured_by_type_with_a_legend_and_a_toggle_per_type(pyramid_slide, stub_detector,
                                                                             browser, tmp_path):
    from PIL import Image

    stub_detector.types = True  # wide blobs epithelial, narrow ones inflammatory (conftest.StubDetector)
    stub_detector.loaded.config.star_head = {"n_types": 4}
    out = tmp_path / "typed"
    report = run_slide(pyramid_slide[0], out, RunOptions(tile_size=256, overlap=32, progress=False),
                       log=lambda *_: None)
    by_type = report.nuclei_by_type
    assert by_type["epithelial"] > 0 and by_type["inflammatory"] > 0
    srv = ViewerServer(resolve_source(out))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        info = json.loads(get(srv.url + "api/info")[1])
        assert [t["name"] for t in info["types"]] == ["epithelial", "inflammatory", "stromal", "other"]
        assert info["columns"][-1] == "type"
        page = browser.new_page(viewport={"width": 1000, "height": 760})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url)
        page.wait_for_function("window.wsinuclei && window.wsinuclei.ready", timeout=60_000)
        for k, name in enumerate(info["types"]):
            assert int(page.inner_text(f"#count-type-{k}").replace(",", "")) == by_type[name["name"]]
        assert int(page.inner_text("#count-total").replace(",", "")) == report.nuclei

        def pixels(rgb):  # in the slide's pane only: the legend's swatches keep their colours
            page.locator("#osd").screenshot(path=str(tmp_path / "shot.png"))
            img = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(int)
            return int((np.abs(img - np.array(rgb)).max(axis=2) < 30).sum())

        epithelial, inflammatory = (220, 50, 47), (38, 139, 210)
        assert pixels(epithelial) > 100 and pixels(inflammatory) > 100
        page.click("input[data-type='0']")  # hide the epithelial nuclei
        assert int(page.inner_text("#count-total").replace(",", "")) == report.nuclei - by_type["epithelial"]
        assert pixels(epithelial) < 20 and pixels(inflammatory) > 100
        assert not errors, errors
    finally:
        srv.shutdown()
        srv.server_close()
