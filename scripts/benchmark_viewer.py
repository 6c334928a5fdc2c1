"""The viewer in headless Chromium: a screenshot of a run (for docs/viewer.md), and the benchmark BENCHMARKS.md
quotes: time from page load to the first overlay frame, and frame times while panning, with many nuclei.

    python scripts/benchmark_viewer.py screenshot out/demo --out docs/images/viewer.jpg [--zoom 2.5]
    python scripts/benchmark_viewer.py bench out/demo --nuclei 200000 [--json out/viewer_bench.json]

``bench`` writes a copy of the run with N nuclei spread over the slide's tissue-sized area (boxes 24-48 px, scores
uniform 0.1-1) into a scratch folder, so the overlay draws as many as a large slide holds; the slide is the run's.
Run it on a quiet machine (no training beside it): it measures wall time in the browser.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def _serve(target):
    from wsinuclei.viewer import ViewerServer, resolve_source

    srv = ViewerServer(resolve_source(target))
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


def _browser(p):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("benchmark_viewer: no chromium on PATH (apt-get install chromium)")
    return p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)


def screenshot(target: str, out: str, zoom: float, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    srv = _serve(target)
    with sync_playwright() as p:
        b = _browser(p)
        page = b.new_page(viewport={"width": width, "height": height})
        page.goto(srv.url)
        page.wait_for_function("window.wsinuclei && window.wsinuclei.ready", timeout=120_000)
        if zoom != 1:
            page.evaluate("z => { const v = window.wsinuclei.viewer; v.viewport.zoomBy(z, undefined, true); "
                          "v.viewport.applyConstraints(true); }", zoom)
            page.wait_for_timeout(500)
            page.wait_for_function("() => { const v = window.wsinuclei.viewer; "
                                   "return v.world.getItemAt(0).getFullyLoaded(); }", timeout=120_000)
            page.wait_for_timeout(300)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=out)
        print(f"wrote {out}: {page.inner_text('#count-view')} nuclei in view of {page.inner_text('#count-total')}")
        b.close()
    srv.shutdown()
    srv.server_close()


def _synthetic_run(target: Path, n: int, work: Path, seed: int = 0) -> Path:
    run_json = next(target.glob("*.run.json")) if target.is_dir() else target
    run = json.loads(run_json.read_text())
    from wsinuclei.slide import Slide

    with Slide(run["slide"], mpp=run.get("mpp")) as s:
        w, h = s.dimensions
    rng = np.random.default_rng(seed)
    size = rng.uniform(24, 48, (n, 2))
    xy = rng.uniform([0, 0], [w, h], (n, 2))
    boxes = np.hstack([xy - size / 2, xy + size / 2])
    scores = rng.uniform(0.1, 1.0, n)
    name = run_json.name[: -len(".run.json")]
    np.savetxt(work / f"{name}.csv", np.hstack([boxes, scores[:, None]]), fmt="%.1f,%.1f,%.1f,%.1f,%.4f",
               header="x0,y0,x1,y1,score", comments="")
    (work / f"{name}.run.json").write_text(json.dumps({**run, "score_cut": 0.5, "min_score": 0.1}))
    return work


def bench(target: str, nuclei: int, frames: int, out_json: str | None) -> dict:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        srv = _serve(_synthetic_run(Path(target), nuclei, Path(tmp)))
        with sync_playwright() as p:
            b = _browser(p)
            page = b.new_page(viewport={"width": 1280, "height": 900})
            t0 = time.perf_counter()
            page.goto(srv.url)
            page.wait_for_function("window.wsinuclei && window.wsinuclei.frames > 0", timeout=120_000, polling=10)
            first_frame_s = time.perf_counter() - t0
            page.wait_for_function("window.wsinuclei.ready", timeout=120_000)
            results = {"nuclei": nuclei, "first_overlay_frame_s": round(first_frame_s, 3),
                       "total": int(page.inner_text("#count-total").replace(",", ""))}
            # pan at three zooms: whole slide (density map), mid (boxes or density), close (boxes)
            for label, zoom in (("whole slide", 1), ("4x", 4), ("16x", 16)):
                stats = page.evaluate("""async ([zoom, frames]) => {
                    const s = window.wsinuclei, v = s.viewer;
                    v.viewport.goHome(true); v.viewport.zoomTo(zoom, undefined, true);
                    const times = [], overlay = [], inView = [];
                    let last = performance.now();
                    for (let k = 0; k < frames; k++) {
                      v.viewport.panBy(new OpenSeadragon.Point(0.004 / zoom, 0.003 / zoom), true);
                      await new Promise(r => requestAnimationFrame(r));
                      const now = performance.now(); times.push(now - last); last = now;
                      overlay.push(s.lastFrameMs); inView.push(s.inView);
                    }
                    return {times, overlay, inView, mode: s.mode};
                }""", [zoom, frames])
                t = stats["times"][1:]
                results[label] = {
                    "mode": stats["mode"], "in_view_median": int(statistics.median(stats["inView"])),
                    "frame_ms_median": round(statistics.median(t), 2),
                    "frame_ms_p95": round(sorted(t)[int(0.95 * (len(t) - 1))], 2),
                    "overlay_draw_ms_median": round(statistics.median(stats["overlay"]), 2),
                }
            b.close()
        srv.shutdown()
        srv.server_close()
    print(json.dumps(results, indent=1))
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(results, indent=1))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("screenshot")
    s.add_argument("target")
    s.add_argument("--out", required=True)
    s.add_argument("--zoom", type=float, default=1.0)
    s.add_argument("--width", type=int, default=1200)
    s.add_argument("--height", type=int, default=800)
    s = sub.add_parser("bench")
    s.add_argument("target")
    s.add_argument("--nuclei", type=int, default=200_000)
    s.add_argument("--frames", type=int, default=120)
    s.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.cmd == "screenshot":
        screenshot(a.target, a.out, a.zoom, a.width, a.height)
    else:
        bench(a.target, a.nuclei, a.frames, a.json)


if __name__ == "__main__":
    main()
