"""Whole-slide runs: outputs, seams, resume after kill -9, local Dask, a real Dask cluster, a killed worker."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wsinuclei.evaluate import box_iou
from wsinuclei.pipeline import RunOptions, run_slide

OPTS = dict(tile_size=256, overlap=32, progress=False)


def read_csv(path):
    with open(path) as fh:
        return [tuple(r) for r in csv.reader(fh)]


def assert_same_detections(a_path, b_path):
    """The same nuclei, box for box. Runs with different torch thread counts (Dask workers use one thread,
    in-process runs two) sum floats in another order, so scores may differ in the 4th decimal and a
    coordinate by a rounding step; anything more is a real difference."""
    from wsinuclei.annotations import read_boxes
    from wsinuclei.evaluate import match

    a, b = read_boxes(a_path), read_boxes(b_path)
    assert len(a) == len(b)
    pi, ti, q = match(a.boxes, b.boxes, 0.95)
    assert len(pi) == len(a)
    assert np.abs(a.scores[pi] - b.scores[ti]).max() < 2e-3


@pytest.fixture(scope="module")
def reference_run(pyramid_slide, random_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    report = run_slide(pyramid_slide[0], out, RunOptions(model=str(random_model), **OPTS), log=lambda *_: None)
    return out, report


def test_in_process_outputs(reference_run, pyramid_slide):
    out, report = reference_run
    name = Path(pyramid_slide[0]).stem
    rows = read_csv(out / f"{name}.csv")
    assert rows[0] == ("x0", "y0", "x1", "y1", "score")
    assert len(rows) - 1 == report.candidates > 0
    boxes = np.array([[float(v) for v in r[:4]] for r in rows[1:]])
    iou = box_iou(boxes, boxes)
    np.fill_diagonal(iou, 0)
    # no duplicates anywhere, seams included (NMS at 0.5; the CSV rounds to 0.1 px, hence the tolerance)
    assert iou.max() <= 0.52
    assert report.tiles_skipped_tissue > 0 and report.tiles_processed > 0  # the glass on the right is skipped
    prof = list(csv.DictReader(open(out / f"{name}.profile.csv")))
    assert len(prof) == report.tiles_processed
    assert {"read_s", "reinhard_s", "deconvolution_s", "inference_s", "postprocess_s", "nuclei"} <= set(prof[0])
    assert sum(int(p["nuclei"]) for p in prof) >= report.candidates
    # the tissue check is the plan's, made on the clipped core: every run tile holds tissue (--min-tissue 0:
    # any at all), edge tiles included (their cores reach to infinity before clipping)
    assert all(float(p["tissue_fraction"]) > 0 for p in prof)
    assert (out / f"{name}.thumbnail.png").is_file()
    run = json.loads((out / f"{name}.run.json").read_text())
    assert run["tiles_failed"] == 0 and run["candidates"] == report.candidates
    # the summary's nuclei are those at the score cut (the operating point), not every candidate in the CSV;
    # the GeoJSON and the DSA file hold exactly those
    n = report.nuclei
    csv_scores = np.array([float(r[4]) for r in rows[1:]])  # rounded to 4 decimals in the CSV
    assert (csv_scores >= 0.50005).sum() <= n <= (csv_scores >= 0.49995).sum() < report.candidates
    assert run["nuclei"] == n and run["score_cut"] == 0.5 and run["min_score"] == 0.1
    geo = json.loads((out / f"{name}.geojson").read_text())
    assert len(geo["features"]) == n
    assert min(f["properties"]["measurements"]["score"] for f in geo["features"]) >= 0.5
    dsa = json.loads((out / f"{name}.anot.json").read_text())
    assert len(dsa["elements"]) == n
    assert dsa["attributes"]["params"]["score_cut"] == 0.5 and dsa["attributes"]["version"]
    assert len(dsa["attributes"]["src_mu_lab"]) == 3 and dsa["attributes"]["model"]["sha1"]
    from wsinuclei.pipeline import format_report

    assert format_report(report).startswith(f"{name}: {n} nuclei at score >= 0.5 ({report.candidates} "
                                            "candidates >= 0.1)")
    assert not list(out.glob(".*.parts"))  # parts are removed once the run is complete


def test_roi_limits_the_run(pyramid_slide, random_model, tmp_path, reference_run):
    roi = (300, 200, 600, 500)
    report = run_slide(pyramid_slide[0], tmp_path, RunOptions(model=str(random_model), roi=roi, **OPTS), log=lambda *_: None)
    rows = read_csv(tmp_path / f"{Path(pyramid_slide[0]).stem}.csv")[1:]
    c = np.array([[(float(r[0]) + float(r[2])) / 2, (float(r[1]) + float(r[3])) / 2] for r in rows])
    assert len(c) and (c[:, 0] >= 300).all() and (c[:, 0] < 900).all() and (c[:, 1] >= 200).all() and (c[:, 1] < 700).all()
    assert report.tiles_total < reference_run[1].tiles_total


def _cli(*args):
    return [sys.executable, "-m", "wsinuclei.cli", *map(str, args)]


def test_resume_after_kill_gives_identical_output(pyramid_slide, random_model, tmp_path, reference_run):
    name = Path(pyramid_slide[0]).stem
    cmd = _cli("detect", pyramid_slide[0], "--out", tmp_path, "--model", random_model, "--tile-size", 256,
               "--overlap", 32, "--quiet")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finished_parts():  # a part being written is ".<key>.tmp.npz" until os.replace names it: not yet done
        return [p for p in tmp_path.glob(f".{name}.parts/*/*.npz") if not p.name.startswith(".")]

    deadline = time.time() + 120
    while time.time() < deadline:
        parts = finished_parts()
        if len(parts) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / f"{name}.csv").exists()  # an interrupted run leaves no result that looks complete
    done = len(finished_parts())
    assert done >= 5
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{done} resumed" in res.stdout or f"({done} done before)" in res.stdout
    assert read_csv(tmp_path / f"{name}.csv") == read_csv(reference_run[0] / f"{name}.csv")


def test_local_dask_equals_in_process(pyramid_slide, random_model, tmp_path, reference_run):
    name = Path(pyramid_slide[0]).stem
    environ = dict(os.environ)
    report = run_slide(pyramid_slide[0], tmp_path, RunOptions(model=str(random_model), workers=2, features=True, **OPTS),
                       log=lambda *_: None)
    assert report.executor.startswith("local dask")
    # Dask's nanny sets OMP_NUM_THREADS=1 and the like here to start its workers: put back, or every process
    # started after the run (the CLI below, a user's own) would compute on one thread
    assert dict(os.environ) == environ
    assert_same_detections(tmp_path / f"{name}.csv", reference_run[0] / f"{name}.csv")
    profile = list(csv.DictReader(open(tmp_path / f"{name}.profile.csv")))
    assert len({p["worker"] for p in profile}) == 2  # both workers took tiles
    # features are measured on the workers, where the tiles are (box-only model: intensity and gradient)
    import pyarrow.parquet as pq

    assert all(float(p["features_s"]) > 0 for p in profile if int(p["nuclei"]))
    table = pq.read_table(tmp_path / f"{name}.nuclei.parquet", columns=["score", "Nucleus.Intensity.Mean"])
    assert table.num_rows == report.nuclei
    # random weights overlap boxes heavily: a nucleus wholly covered by higher-scoring ones has no pixels (NaN)
    assert np.isfinite(table["Nucleus.Intensity.Mean"].to_numpy()).mean() > 0.5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    time.sleep(2)
    for i in range(2):
        procs.append(subprocess.Popen([str(bindir / "dask"), "worker", addr, "--nthreads", "1", "--nworkers", "1",
                                       "--no-dashboard", "--name", f"w{i}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    from distributed import Client

    with Client(addr, timeout="30s") as c:
        c.wait_for_workers(2, timeout=60)
    yield addr, procs
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_remote_scheduler_equals_in_process(pyramid_slide, random_model, tmp_path, reference_run, dask_cluster):
    addr, _ = dask_cluster
    name = Path(pyramid_slide[0]).stem
    res = subprocess.run(_cli("detect", pyramid_slide[0], "--out", tmp_path, "--model", random_model, "--tile-size",
                              256, "--overlap", 32, "--scheduler", addr, "--quiet"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert_same_detections(tmp_path / f"{name}.csv", reference_run[0] / f"{name}.csv")


def test_killed_worker_costs_only_its_tiles(pyramid_slide, random_model, tmp_path, reference_run, dask_cluster):
    addr, procs = dask_cluster
    name = Path(pyramid_slide[0]).stem
    proc = subprocess.Popen(_cli("detect", pyramid_slide[0], "--out", tmp_path, "--model", random_model,
                                 "--tile-size", 256, "--overlap", 32, "--scheduler", addr, "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob(f".{name}.parts/*/*.npz"))) < 4:
        time.sleep(0.05)
    # kill one worker process outright (the nanny's child and the nanny: nothing restarts it)
    victim = procs[1]
    subprocess.run(["pkill", "-9", "-P", str(victim.pid)])
    victim.kill()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_same_detections(tmp_path / f"{name}.csv", reference_run[0] / f"{name}.csv")


def test_unreadable_tile_is_retried_then_reported(pyramid_slide, random_model, tmp_path, monkeypatch):
    from wsinuclei.errors import WsinucleiError
    from wsinuclei.slide import Slide

    calls = {"n": 0}
    real = Slide.read_region

    def flaky(self, x, y, w, h, mpp, **kwargs):
        if x == 0 and y == 0:  # the top-left tile is "corrupt"
            calls["n"] += 1
            raise WsinucleiError("corrupt JPEG data in region")
        return real(self, x, y, w, h, mpp, **kwargs)

    monkeypatch.setattr(Slide, "read_region", flaky)
    roi = (0, 0, 700, 500)
    report = run_slide(pyramid_slide[0], tmp_path, RunOptions(model=str(random_model), roi=roi, readers=1, **OPTS),
                       log=lambda *_: None)
    assert calls["n"] == 3  # one try and two retries
    assert report.tiles_failed == 1 and report.failed[0]["tile"] == "00000_00000"
    run = json.loads((tmp_path / f"{Path(pyramid_slide[0]).stem}.run.json").read_text())
    assert run["tiles_failed"] == 1 and "corrupt" in run["failed"][0]["error"]
    assert report.candidates > 0  # the other tiles' nuclei are there


def test_batched_inference_equals_one_at_a_time(pyramid_slide, random_model, tmp_path):
    """The GPU path's batching (here on the CPU): batches of tiles give the tiles' own results."""
    name = Path(pyramid_slide[0]).stem
    roi = (200, 200, 900, 700)
    for bs in (1, 3):
        run_slide(pyramid_slide[0], tmp_path / f"b{bs}", RunOptions(model=str(random_model), roi=roi, batch_size=bs,
                                                                   **OPTS), log=lambda *_: None)
    assert_same_detections(tmp_path / "b1" / f"{name}.csv", tmp_path / "b3" / f"{name}.csv")


def test_one_slide_handle_per_process_closed_after_each_slide(pyramid_slide, random_model, tmp_path, monkeypatch,
                                                            stub_detector):
    """Three slides in one command: each opened once (reader threads share the handle) and closed when done.
    Before, every reader thread opened its own, and none was ever closed (6 left open after 3 slides)."""
    import shutil

    from wsinuclei import pipeline
    from wsinuclei.slide import Slide

    opened, closed = [], []
    real_init, real_close = Slide.__init__, Slide.close

    def init(self, *a, **k):
        real_init(self, *a, **k)
        opened.append(id(self))

    def close(self):
        closed.append(id(self))
        real_close(self)

    monkeypatch.setattr(Slide, "__init__", init)
    monkeypatch.setattr(Slide, "close", close)
    paths = []
    for i in range(3):
        p = tmp_path / f"s{i}.tiff"
        shutil.copy(pyramid_slide[0], p)
        paths.append(p)
    for p in paths:
        pipeline.run_slide(p, tmp_path / "out", pipeline.RunOptions(model=str(random_model), readers=2, tile_size=512,
                                                                    progress=False), log=lambda *_: None)
    assert len(opened) == 3 and sorted(opened) == sorted(closed)
    assert not [k for k in pipeline._STATE if k[0] == "slide"]


def test_contour_model_writes_polygons_end_to_end(pyramid_slide, tmp_path):
    """A contours-preset model file (random weights) through the whole pipeline: every nucleus gets a
    24-vertex outline in the GeoJSON (QuPath) and a closed polyline in the DSA file, and the CSV its area."""
    import csv

    import torch

    from wsinuclei import stain
    from wsinuclei.checkpoint import save_model
    from wsinuclei.models import build_detector, load_preset
    from wsinuclei.pipeline import RunOptions, run_slide

    torch.manual_seed(0)
    cfg = load_preset("contours")
    cfg.roi_heads["detections_per_img"] = 100
    cfg.rpn["post_nms_top_n_test"] = 200
    model_path = tmp_path / "contours.safetensors"
    save_model(build_detector(cfg), cfg, model_path, target_mu=stain.DEFAULT_TARGET_MU,
               target_sigma=stain.DEFAULT_TARGET_SIGMA)
    out = tmp_path / "out"
    run_slide(pyramid_slide[0], out, RunOptions(model=str(model_path), tile_size=512, progress=False, min_score=0.0,
                                                score_cut=0.0), log=lambda *_: None)  # random weights: keep all
    feats = json.loads((out / "synthetic.geojson").read_text())["features"]
    elements = json.loads((out / "synthetic.anot.json").read_text())["elements"]
    rows = list(csv.DictReader(open(out / "synthetic.csv")))
    assert len(feats) == len(elements) == len(rows) > 0
    assert all(len(f["geometry"]["coordinates"][0]) == 25 for f in feats)
    assert all(e["type"] == "polyline" and e["closed"] and len(e["points"]) == 24 for e in elements)
    assert all(float(r["area_um2"]) >= 0 for r in rows)


def test_thumbnail_shows_the_nuclei_as_dots_or_density():
    from wsinuclei.pipeline import overlay_nuclei

    grey = np.full((100, 200, 3), 230, np.uint8)
    few = np.array([[100, 100, 120, 120], [1000, 400, 1020, 420], [1500, 900, 1510, 910]], float)
    # a fine thumbnail (2 µm per pixel or less): each nucleus's box
    img, legend = overlay_nuclei(grey.copy(), few, ds=4.0, mpp=0.25)
    green = (img[..., 1] == 200) & (img[..., 0] == 0)
    assert "green boxes" in legend and green[25, 25:30].all() and green[100 // 4 + 2, 25] and not green[27, 27]
    img, legend = overlay_nuclei(grey.copy(), few, ds=10.0, mpp=0.25)
    red = (img[..., 0] == 220) & (img[..., 1] == 0)
    assert red.sum() == 3 and red[11, 11] and red[41, 101] and red[90, 150] and "3 nuclei" in legend
    # a nucleus every 10 base px over the left half: a density map over them, the empty half untouched
    g = np.arange(0, 1000, 10.0) + 5
    c = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    crowd = np.hstack([c - 4, c + 4])
    img, legend = overlay_nuclei(grey.copy(), crowd, ds=10.0, mpp=0.25)
    assert "density" in legend and "10000 nuclei" in legend
    assert (img[:, :100] != 230).any(axis=2).all() and (img[:, 100:] == 230).all()
    # a density cell is 50 µm = 20 thumbnail px = 200 base px wide and holds 20 x 20 nuclei: 400 per 0.0025 mm²
    assert legend.endswith("up to 160,000/mm² (inferno)")


def test_score_cut_below_the_floor_is_refused():
    from wsinuclei.errors import WsinucleiError

    with pytest.raises(WsinucleiError, match="--score-cut 0.05 is below --min-score 0.1"):
        RunOptions(score_cut=0.05).validate()
    RunOptions(score_cut=0.1).validate()


def test_thin_tissue_strip_is_covered_and_glass_detections_dropped(stub_detector, tmp_path):
    """A strip of tissue 150 px wide (a sixth of a tile's core) holds nuclei: they are all found; dark specks
    on the glass far from it are detected by the stub but dropped as off-tissue."""
    from conftest import synthetic_he
    from wsinuclei.synth import write_pyramid_tiff

    img, truth = synthetic_he(1500, 2100, seed=3, n_nuclei=40, tissue=(1000, 0, 1150, 1500))
    # specks on glass > 20 µm from the strip, in the strip's column of tiles (3 columns of 768 px: the middle
    # one owns x 736-1440 and runs; the right one holds no tissue and is skipped)
    for x, y in ((1260, 300), (1330, 1200), (1400, 700)):
        img[y:y + 6, x:x + 6] = (60, 20, 90)
    path = tmp_path / "strip.tiff"
    write_pyramid_tiff(path, img, mpp=0.25, compression="zlib", min_level_size=300)
    report = run_slide(path, tmp_path / "out", RunOptions(tile_size=1024, overlap=64, progress=False),
                       log=lambda *_: None)
    rows = read_csv(tmp_path / "out" / "strip.csv")[1:]
    boxes = np.array([[float(v) for v in r[:4]] for r in rows])
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    assert ((cx > 990) & (cx < 1160)).all()  # nothing off the strip survives
    assert report.dropped_off_tissue >= 3
    from wsinuclei.evaluate import match

    found = len(match(boxes, truth, 0.5)[0])
    assert found >= 0.9 * len(truth), (found, len(truth))
    # the old rule (skip tiles under a quarter tissue) would have skipped every tile of this slide
    with pytest.raises(Exception, match="no tile holds at least 25% tissue"):
        run_slide(path, tmp_path / "old", RunOptions(tile_size=1024, overlap=64, min_tissue=0.25, progress=False),
                  log=lambda *_: None)


def test_post_processing_runs_beside_inference_in_tile_order(pyramid_slide, random_model, tmp_path, monkeypatch):
    """In-process, each batch's post-processing (features) runs on one more thread, at the lowest priority
    where the OS gives threads their own, while the next batch is inferred; results still arrive in tile order
    and a failure there stops the run as before."""
    import threading

    from wsinuclei.pipeline import executors

    seen = []
    real = executors.postprocess

    def recording(ctx, tile, *a, **k):
        seen.append((tile.key, threading.get_ident(),
                     os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) if sys.platform == "linux" else 19))
        return real(ctx, tile, *a, **k)

    monkeypatch.setattr(executors, "postprocess", recording)
    roi = (0, 0, 900, 700)
    report = run_slide(pyramid_slide[0], tmp_path / "a", RunOptions(model=str(random_model), roi=roi, **OPTS),
                       log=lambda *_: None)
    assert len(seen) == report.tiles_processed >= 4
    assert all(ident != threading.get_ident() for _, ident, _ in seen)
    assert {nice for _, _, nice in seen} == {19}
    assert [k for k, _, _ in seen] == sorted(k for k, _, _ in seen)  # tile order (row-major keys)

    def failing(ctx, tile, *a, **k):
        raise RuntimeError("features failed on " + tile.key)

    monkeypatch.setattr(executors, "postprocess", failing)
    with pytest.raises(RuntimeError, match="features failed"):
        run_slide(pyramid_slide[0], tmp_path / "b", RunOptions(model=str(random_model), roi=roi, **OPTS),
                  log=lambda *_: None)


def _parts(out, name):
    (folder,) = (out / f".{name}.parts").iterdir()
    return folder


def test_parts_of_other_tiles_or_with_bad_arrays_are_recomputed(tmp_path, stub_detector, pyramid_slide, caplog):
    """Two finished parts swapped on disk, and a part whose boxes have the wrong shape: each is run again (the
    log says why) and the result is the uninterrupted run's, nucleus for nucleus."""
    import logging

    path = pyramid_slide[0]
    first = tmp_path / "first"
    run_slide(path, first, RunOptions(keep_parts=True, **OPTS), log=lambda *_: None)
    parts = _parts(first, path.stem)
    names = sorted(p.name for p in parts.glob("*.npz"))
    a, b, c = parts / names[0], parts / names[1], parts / names[2]
    tmp = parts / "swap.tmp"
    a.rename(tmp), b.rename(a), tmp.rename(b)
    with np.load(c) as z:
        bad = dict(z)
    bad["boxes"] = np.zeros((len(bad["scores"]) + 1, 3))
    np.savez(c, **bad)
    calls = stub_detector.calls
    with caplog.at_level(logging.WARNING, logger="wsinuclei.pipeline.run"):
        report = run_slide(path, first, RunOptions(keep_parts=True, **OPTS), log=lambda *_: None)
    assert stub_detector.calls - calls == 3 and report.tiles_resumed == report.tiles_processed - 3
    assert sum("does not belong here" in r.getMessage() for r in caplog.records) == 3
    clean = tmp_path / "clean"
    run_slide(path, clean, RunOptions(**OPTS), log=lambda *_: None)
    assert read_csv(first / f"{path.stem}.csv") == read_csv(clean / f"{path.stem}.csv")


def test_backend_and_device_are_in_the_parts_key_and_in_run_json(tmp_path, stub_detector, pyramid_slide):
    path = pyramid_slide[0]
    out = tmp_path / "out"
    report = run_slide(path, out, RunOptions(keep_parts=True, **OPTS), log=lambda *_: None)
    first = _parts(out, path.stem).name
    info = json.loads((out / f"{path.stem}.run.json").read_text())
    assert info["device"] == "cpu" and info["backend"]
    calls = stub_detector.calls
    again = run_slide(path, out, RunOptions(keep_parts=True, backend="torch", **OPTS), log=lambda *_: None)
    assert again.tiles_resumed == 0 and stub_detector.calls - calls == report.tiles_processed  # nothing reused
    assert {p.name for p in (out / f".{path.stem}.parts").iterdir()} >= {first}
    assert json.loads((out / f"{path.stem}.run.json").read_text())["backend"] == "torch"


def test_an_output_folder_that_cannot_be_written_is_one_error_before_any_work(tmp_path, stub_detector, pyramid_slide):
    from wsinuclei.errors import WsinucleiError

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(WsinucleiError, match="cannot write results there") as e:
        run_slide(pyramid_slide[0], blocker / "out", RunOptions(**OPTS), log=lambda *_: None)
    assert "\n" not in str(e.value) and stub_detector.calls == 0


def test_a_disk_that_fills_while_results_are_written_leaves_no_results_and_resumes(tmp_path, stub_detector,
                                                                                    pyramid_slide, monkeypatch):
    """ENOSPC after the CSV is written: no NAME.* file is left to look like a finished run, the tiles are kept,
    and the rerun writes what an uninterrupted run writes."""
    import errno

    from wsinuclei import outputs
    from wsinuclei.errors import WsinucleiError

    path = pyramid_slide[0]
    out = tmp_path / "out"
    real = outputs.write_geojson

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "write_geojson", full_disk)
    with pytest.raises(WsinucleiError, match="No space left on device") as e:
        run_slide(path, out, RunOptions(**OPTS), log=lambda *_: None)
    assert "rerun" in str(e.value)
    assert not [f.name for f in out.iterdir() if f.name.startswith(path.stem + ".")]
    assert list(_parts(out, path.stem).glob("*.npz"))
    monkeypatch.setattr(outputs, "write_geojson", real)
    calls = stub_detector.calls
    report = run_slide(path, out, RunOptions(**OPTS), log=lambda *_: None)
    assert stub_detector.calls == calls and report.tiles_resumed == report.tiles_processed
    clean = tmp_path / "clean"
    run_slide(path, clean, RunOptions(**OPTS), log=lambda *_: None)
    assert read_csv(out / f"{path.stem}.csv") == read_csv(clean / f"{path.stem}.csv")


def test_local_workers_exit_when_the_run_is_killed(tmp_path, random_model, pyramid_slide):
    """kill -9 of `detect --workers 2`: its Dask worker processes do not live on (they held memory for good)."""
    import psutil

    proc = subprocess.Popen(_cli("detect", pyramid_slide[0], "--out", tmp_path, "--model", random_model, "--tile-size",
                                 256, "--overlap", 32, "--workers", 2, "--quiet", "--force"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    workers = []
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        workers = [p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
        time.sleep(0.2)
    assert len(workers) >= 2, "the workers never started"
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=40)
    assert not alive, [p.pid for p in alive]
