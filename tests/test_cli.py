"""The command line: help, info, and every kind of bad input giving one clear line and a non-zero exit."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_he


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "wsinuclei.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def run_here(capsys, *args):
    """The CLI's main() in this process (the same code path as the command, without starting Python again)."""
    from wsinuclei.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def assert_clean_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith("wsinuclei: error:")
    for n in needles:
        assert n in err


def test_help_explains_every_detect_option():
    proc = run("detect", "--help")
    assert proc.returncode == 0
    for opt in ("--out", "--mpp", "--roi", "--tile-size", "--overlap", "--min-tissue", "--model", "--workers",
                "--scheduler", "--device", "--batch-size", "--force", "--gzip"):
        assert opt in proc.stdout


def test_info_on_generated_slide(pyramid_slide):
    proc = run("info", pyramid_slide[0])
    assert proc.returncode == 0
    assert "2100 x 1500" in proc.stdout and "0.25" in proc.stdout and "downsample 2.000" in proc.stdout


@pytest.fixture
def bad_inputs(tmp_path, pyramid_slide):
    d = tmp_path / "in"
    d.mkdir()
    (d / "notaslide.svs").write_text("hello, I am text")
    data = pyramid_slide[0].read_bytes()
    (d / "truncated.tiff").write_bytes(data[: len(data) // 3])
    png = d / "region.png"
    img, _ = synthetic_he(300, 300)
    Image.fromarray(img).save(png)
    (d / "truncated.png").write_bytes(png.read_bytes()[:2000])
    Image.fromarray(np.full((300, 300, 3), 250, np.uint8)).save(d / "blank.png")
    (d / "folder").mkdir()
    return d


@pytest.mark.parametrize("name,needle", [
    ("missing.svs", "no such file"),
    ("notaslide.svs", "not a slide"),
    ("truncated.tiff", ""),
    ("truncated.png", "not a readable image"),
    ("folder", "folder"),
    ("blank.png", "no tissue"),
])
def test_bad_input_one_line_no_output(bad_inputs, tmp_path, random_model, name, needle):
    out = tmp_path / "out"
    proc = run("detect", bad_inputs / name, "--out", out, "--mpp", "0.25", "--model", random_model, "--quiet")
    assert_clean_error(proc, needle)
    assert not out.exists() or not any(p.suffix in (".csv", ".geojson") for p in out.iterdir())


def test_missing_mpp_names_the_flag(bad_inputs, tmp_path, random_model):
    proc = run("detect", bad_inputs / "region.png", "--out", tmp_path / "o", "--model", random_model)
    assert_clean_error(proc, "--mpp")


def test_bad_roi_and_options(bad_inputs, tmp_path, random_model):
    base = ["detect", bad_inputs / "region.png", "--out", tmp_path / "o", "--mpp", "0.25", "--model", random_model]
    assert_clean_error(run(*base, "--roi", "0,0,5000,10"), "--roi")
    assert_clean_error(run(*base, "--overlap", "2000"), "--overlap")
    assert_clean_error(run(*base, "--min-tissue", "3"), "--min-tissue")
    proc = run(*base, "--roi", "abc")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "x,y,w,h" in proc.stderr


def test_bad_model_file(bad_inputs, tmp_path):
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(b"\x00" * 100)
    proc = run("detect", bad_inputs / "region.png", "--out", tmp_path / "o", "--mpp", "0.25", "--model", bad)
    assert_clean_error(proc, "model")


def test_evaluate_reports_unpaired_stems(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir(), truth.mkdir()
    (pred / "a.csv").write_text("x0,y0,x1,y1,score\n0,0,10,10,0.9\n50,50,60,60,0.8\n")
    (pred / "b.csv").write_text("x0,y0,x1,y1,score\n")
    (truth / "a.csv").write_text("x0,y0,x1,y1\n0,0,10,10\n100,100,110,110\n")
    (truth / "c.csv").write_text("x0,y0,x1,y1\n0,0,10,10\n")
    proc = run("evaluate", "--pred", pred, "--truth", truth, "--out", tmp_path / "rep", "--no-overlays")
    assert proc.returncode == 0, proc.stderr
    assert "no truth for: b" in proc.stdout and "no predictions for: c" in proc.stdout
    import json

    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    # c has annotations and no predictions: its nucleus is missed (FN), not left out of the pooled figures
    assert m["pooled"]["tp"] == 1 and m["pooled"]["fp"] == 1 and m["pooled"]["fn"] == 2
    assert m["only_in_predictions"] == ["b"] and m["only_in_truth"] == ["c"] and m["images"] == 2
    assert (tmp_path / "rep" / "pr_curve.png").is_file() and (tmp_path / "rep" / "per_image.csv").is_file()


def test_evaluate_overlays(tmp_path):
    img, boxes = synthetic_he(120, 120, n_nuclei=5)
    truth = tmp_path / "truth"
    truth.mkdir()
    Image.fromarray(img).save(truth / "x.png")
    (truth / "x.csv").write_text("x0,y0,x1,y1\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in boxes))
    pred = tmp_path / "x.csv"
    pred.write_text("x0,y0,x1,y1,score\n" + f"{boxes[0][0]},{boxes[0][1]},{boxes[0][2]},{boxes[0][3]},0.9\n1,1,9,9,0.8\n")
    proc = run("evaluate", "--pred", pred, "--truth", truth / "x.csv", "--out", tmp_path / "rep")
    assert proc.returncode == 0, proc.stderr
    ov = np.array(Image.open(tmp_path / "rep" / "overlay_x.png"))
    assert ((ov == [0, 200, 0]).all(-1)).any()  # a TP in green
    assert ((ov == [0, 0, 255]).all(-1)).any()  # an FP in blue
    assert ((ov == [255, 0, 0]).all(-1)).any()  # FNs in red


def test_cuda_without_gpu_is_a_clear_error(bad_inputs, tmp_path, random_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run("detect", bad_inputs / "region.png", "--out", tmp_path / "o", "--mpp", "0.25", "--model", random_model,
               "--device", "cuda")
    assert_clean_error(proc, "no CUDA GPU")


@pytest.mark.parametrize("option, value, needle", [
    ("--batch-size", "0", "--batch-size"),       # spun at 100 % CPU forever
    ("--batch-size", "-3", "--batch-size"),
    ("--workers", "-1", "--workers"),
    ("--readers", "0", "--readers"),
    ("--tile-size", "32", "--tile-size"),
    ("--tile-size", "100000", "--tile-size"),
    ("--overlap", "-1", "--overlap"),
    ("--overlap", "1024", "--overlap"),         # a tile's whole width leaves no core
    ("--min-score", "1.5", "--min-score"),
    ("--min-score", "-0.1", "--min-score"),
    ("--min-tissue", "2", "--min-tissue"),
    ("--mpp", "-0.25", "--mpp"),
    ("--mpp", "nan", "--mpp"),
    ("--batch-size", "abc", "--batch-size"),    # argparse's own errors are one line too
    ("--device", "tpu", "--device"),
    ("--mpp", "1e9", "--mpp must be from 0.05 to 20"),   # listed ~10^12 tiles for ever
    ("--mpp", "1e-9", "--mpp must be from 0.05 to 20"),  # ran out of memory
    ("--mpp", "5", "enlarge it 20x"),                    # a 0.25 µm/px image enlarged 20 times unseen
    ("--roi", "0.5,0,100,100", "whole base pixels"),     # was cut to 0 unseen
    ("--roi", "-10,0,100,100", "x and y must be >= 0"),  # argparse took the value for an option
    ("--workers", "1000", "this machine has"),           # no tile ran, memory fell by 14 GB
    ("--overlap", "48", "multiple of 32"),
    ("--tile-size", "1000", "multiple of 32"),
])
def test_every_numeric_option_is_validated(bad_inputs, tmp_path, option, value, needle, capsys):
    assert_clean_error(run_here(capsys, "detect", bad_inputs / "region.png", "--out", tmp_path / "o", "--mpp", "0.25",
                                option, value), needle)
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize("args, needle", [
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "give one of them"),
    (["--workers", "2", "--batch-size", "4"], "--batch-size"),
    (["--workers", "2", "--device", "cuda:1"], "own GPU"),
    (["--device", "cuda"], "no CUDA GPU"),                    # in-process on a machine without one
    (["--workers", "2", "--device", "cuda"], "no CUDA GPU"),  # local cluster likewise (it used to hang)
])
def test_executor_and_device_combinations_refused_clearly(bad_inputs, tmp_path, args, needle, capsys):
    assert_clean_error(run_here(capsys, "detect", bad_inputs / "region.png", "--out", tmp_path / "o", "--mpp", "0.25",
                                *args), needle)


def test_local_cluster_with_gpus_offers_a_gpu_per_worker():
    """Tiles ask for resources={'GPU': 1}; a LocalCluster started without that resource never ran one."""
    from wsinuclei.errors import WsinucleiError
    from wsinuclei.pipeline import RunOptions, check_remote_workers, local_cluster_kwargs

    kw = local_cluster_kwargs(RunOptions(workers=2, device="cuda"), gpus=2)
    assert kw["resources"] == {"GPU": 1} and kw["n_workers"] == 2
    assert "resources" not in local_cluster_kwargs(RunOptions(workers=2), gpus=0)
    with pytest.raises(WsinucleiError, match="one GPU per worker"):
        local_cluster_kwargs(RunOptions(workers=3, device="cuda"), gpus=2)
    with pytest.raises(WsinucleiError, match="no workers"):
        check_remote_workers({"workers": {}}, "cpu", "tcp://x:1")
    with pytest.raises(WsinucleiError, match="offers a GPU"):
        check_remote_workers({"workers": {"a": {"resources": {}}}}, "cuda", "tcp://x:1")
    check_remote_workers({"workers": {"a": {"resources": {"GPU": 1}}}}, "cuda", "tcp://x:1")


def test_evaluate_centroid_radius_converts_microns_to_pixels(tmp_path):
    """3 µm at 0.5 µm/px is 6 px: a prediction 5 px from its nucleus pairs, one 7 px away does not."""
    import json

    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir(), truth.mkdir()
    (truth / "a.csv").write_text("x0,y0,x1,y1\n0,0,10,10\n100,0,110,10\n")
    (pred / "a.csv").write_text("x0,y0,x1,y1,score\n5,0,15,10,0.9\n107,0,117,10,0.9\n")
    proc = run("evaluate", "--pred", pred, "--truth", truth, "--out", tmp_path / "rep", "--no-overlays",
               "--mpp", "0.5", "--radius-um", "3")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert m["settings"]["radius_px"] == 6.0
    c = m["pooled_centroid"]
    assert (c["tp"], c["fp"], c["fn"]) == (1, 1, 1)


def test_a_bad_slide_does_not_stop_the_others(bad_inputs, tmp_path, random_model):
    """Three slides, the middle one not a slide: the others are detected, the error is one line, exit 2."""
    import shutil

    shutil.copy(bad_inputs / "region.png", bad_inputs / "second.png")
    proc = run("detect", bad_inputs / "region.png", bad_inputs / "notaslide.svs", bad_inputs / "second.png",
               "--out", tmp_path / "o", "--mpp", "0.25", "--model", random_model, "--quiet", "--min-tissue", "0")
    assert proc.returncode == 2
    assert (tmp_path / "o" / "region.csv").is_file() and (tmp_path / "o" / "second.csv").is_file()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wsinuclei: error:")]
    assert len(errors) == 2 and "notaslide.svs" in errors[0] and "1 of 3 slides failed" in errors[1]
    assert "Traceback" not in proc.stderr


def test_evaluate_adds_segmentation_metrics_for_outlined_truth(tmp_path):
    """Truth as a label image, predictions as GeoJSON polygons: AJI/PQ/Dice are reported. One 10x10 nucleus
    predicted by a 10x8 polygon (IoU 0.8) and a missed 4x4 one: AJI 80 / 116, PQ = 2/3 * 0.8."""
    import json

    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir(), pred.mkdir()
    lab = np.zeros((30, 30), np.uint16)
    lab[0:10, 0:10] = 1
    lab[20:24, 20:24] = 2
    Image.fromarray(lab).save(truth / "a_labels.png")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(truth / "a.png")
    feat = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [8, 0], [8, 10], [4, 10],
                                                                                  [0, 10], [0, 0]]]},
            "properties": {"measurements": {"score": 0.9}}}
    (pred / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feat]}))
    proc = run("evaluate", "--pred", pred, "--truth", truth, "--out", tmp_path / "rep", "--no-overlays")
    assert proc.returncode == 0, proc.stderr
    seg = json.loads((tmp_path / "rep" / "metrics.json").read_text())["segmentation"]
    assert seg["pooled"]["aji"] == pytest.approx(80 / 116)
    assert seg["pooled"]["pq"] == pytest.approx(2 / 3 * 0.8) and seg["predictions"] == ["outlines"]
    assert "AJI" in proc.stdout and "PQ" in (tmp_path / "rep" / "per_image.csv").read_text()


def test_evaluate_centre_annotations_reports_centroid_figures_only(tmp_path):
    import json

    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir(), pred.mkdir()
    (truth / "a_points.csv").write_text("x,y\n5,5\n50,50\n")
    (pred / "a.csv").write_text("x0,y0,x1,y1,score\n0,0,10,10,0.9\n")
    proc = run("evaluate", "--pred", pred, "--truth", truth, "--out", tmp_path / "rep", "--no-overlays")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert m["annotation"] == "points" and "pooled" not in m and "AP@0.5" not in m
    c = m["pooled_centroid"]
    assert (c["tp"], c["fp"], c["fn"]) == (1, 0, 1)
    # the score-cut table has no IoU columns either
    assert (tmp_path / "rep" / "score_cuts.csv").read_text().splitlines()[0].startswith("score,centroid_tp,")


def test_evaluate_min_precision_names_the_cut(tmp_path):
    """Two nuclei; a match at 0.9, a stray box at 0.7, a match at 0.4. Cuts 0.10-0.40 keep all three
    (precision 2/3, recall 1), 0.45-0.70 two (1/2, 1/2), 0.75-0.90 one (1, 1/2): only those reach 0.75."""
    import json

    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir(), pred.mkdir()
    (truth / "a.csv").write_text("x0,y0,x1,y1\n0,0,10,10\n50,50,60,60\n")
    (pred / "a.csv").write_text("x0,y0,x1,y1,score\n0,0,10,10,0.9\n100,100,110,110,0.7\n50,50,60,60,0.4\n")
    proc = run("evaluate", "--pred", pred, "--truth", truth, "--out", tmp_path / "rep", "--no-overlays",
               "--min-precision", "0.75")
    assert proc.returncode == 0, proc.stderr
    assert "highest recall with precision >= 0.75: by IoU 0.500 at 0.75 (precision 1.000)" in proc.stdout
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert m["operating_points"]["boxes"]["highest_recall"]["score"] == 0.75
    assert m["operating_points"]["boxes"]["best_f1"]["score"] == 0.1  # F1 0.8 against 0.667
    lines = (tmp_path / "rep" / "score_cuts.csv").read_text().splitlines()
    assert len(lines) == 18 and lines[1].startswith("0.10,2,1,0,0.6667,1.0000,0.8000,")
    proc = run("evaluate", "--pred", pred, "--truth", truth, "--out", tmp_path / "rep2", "--min-precision", "0")
    assert_clean_error(proc, "--min-precision")


def test_a_closed_stdout_ends_the_command_quietly(pyramid_slide):
    """`wsinuclei info SLIDE | head -c 0`: the reader is gone before the command writes; it stops with the
    shell's code for a closed pipe (141) and no traceback."""
    r = subprocess.run(f'"{sys.executable}" -m wsinuclei.cli info "{pyramid_slide[0]}" | head -c 0; '
                       'echo "${PIPESTATUS[0]}" >&2', shell=True, executable="/bin/bash", capture_output=True,
                       text=True, timeout=300)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "141"


def test_a_folder_given_as_the_model_is_one_clear_error(bad_inputs, tmp_path, capsys):
    assert_clean_error(run_here(capsys, "detect", bad_inputs / "region.png", "--out", tmp_path / "o", "--mpp", "0.25",
                                "--model", tmp_path), "is a folder, not a model file")


def test_an_image_with_no_tissue_says_why(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.full((300, 300, 3), 250, np.uint8)).save(tmp_path / "white.png")
    for extra in ((), ("--no-tissue-mask",)):
        proc = run_here(capsys, "detect", tmp_path / "white.png", "--out", tmp_path / "o", "--mpp", "0.25", *extra)
        assert_clean_error(proc, "no tissue found", "mean colour is RGB 250, 250, 250")
    assert "colour normalisation is measured on tissue" in proc.stderr


def test_models_lists_the_shipped_files_with_their_cards_figures(capsys):
    """`wsinuclei models`: every weights file in the package, the default first, with the figures its model
    card reports (the card's test table holds each figure the listing prints)."""
    import json
    from pathlib import Path

    from wsinuclei.checkpoint import DEFAULT_MODEL

    proc = run_here(capsys, "models", "--json")
    assert proc.returncode == 0
    models = json.loads(proc.stdout)
    shipped = sorted(p.stem for p in DEFAULT_MODEL.parent.glob("*.safetensors"))
    assert sorted(m["name"] for m in models) == shipped and models[0]["name"] == DEFAULT_MODEL.stem
    assert [m["default"] for m in models] == [True] + [False] * (len(models) - 1)
    root = Path(__file__).resolve().parents[1]
    for m in models:
        card = (root / m["card"]).read_text()
        assert m["name"] in card.splitlines()[0]
        for key in ("monuseg_test_f1", "monuseg_test_centroid_f1", "monuseg_test_aji"):
            if key in m:
                assert f"{m[key]:.3f}" in card, (m["name"], key)
    star = models[0]
    assert star["preset"] == "star" and star["int8"] and star["mpp"] == 0.25
    text = run_here(capsys, "models").stdout
    assert "* star_default" in text and "F1@0.5 0.846" in text


def test_model_takes_a_shipped_models_name(tmp_path, monkeypatch):
    """`--model fast_default` is the packaged file; a file of that name in the working folder wins; a path that
    does not exist is still 'no such model file' (a bare name is never guessed at beyond the package)."""
    from pathlib import Path

    from wsinuclei.checkpoint import DEFAULT_MODEL, FAST_MODEL, read_model_file, resolve_model_path
    from wsinuclei.errors import WsinucleiError

    monkeypatch.chdir(tmp_path)
    assert resolve_model_path(None) == DEFAULT_MODEL
    assert resolve_model_path("fast_default") == FAST_MODEL
    assert read_model_file("fast_default")[0].config.name == read_model_file(FAST_MODEL)[0].config.name
    (tmp_path / "fast_default").write_bytes(b"not a model")
    assert resolve_model_path("fast_default") == Path("fast_default")
    for missing in ("no_such_model", "sub/fast_default", "fast_default.safetensors"):
        with pytest.raises(WsinucleiError, match="no such model file"):
            read_model_file(missing)
