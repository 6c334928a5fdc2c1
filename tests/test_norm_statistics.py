"""Slide-level normalisation statistics (``--norm-statistics slide``, models/norm_statistics.py): measured as
GroupNorm measures them, held exactly by the torch and OpenVINO networks, and the same nuclei whatever the
tiling."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from wsinuclei.checkpoint import DEFAULT_MODEL, load_model
from wsinuclei.errors import WsinucleiError
from wsinuclei.models import DetectorConfig, build_detector
from wsinuclei.models import norm_statistics as ns
from wsinuclei.models.builder import calibrate_fixed_norms
from wsinuclei.pipeline import RunOptions, run_slide
from wsinuclei.pipeline.plan import LATTICE, norm_windows
from wsinuclei.slide import Slide
from wsinuclei.tissue import slide_tissue
from conftest import MONUSEG, need, synthetic_he

needs_model = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason=f"no shipped model at {DEFAULT_MODEL}")
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")


def _input(net, images):
    return net.batch([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1).float().div_(255.0) for i in images])


@pytest.fixture(scope="module")
def shipped():
    return load_model(DEFAULT_MODEL)


@needs_model
def test_one_window_held_fixed_gives_group_norm_exactly(shipped):
    # the statistics of one image, held fixed, are what GroupNorm computes on that image: the same outputs
    img = synthetic_he(256, 288, seed=3)[0]
    net = shipped.model.eval()
    x = _input(net, [img])
    stats = ns.torch_statistics(net.backbone, x)
    assert len(stats) == 14 and all(m.shape == v.shape and (v > 0).all() for m, v in stats.values())
    fixed = ns.torch_fixed(net, stats)
    assert not ns.group_norms(fixed.backbone) and ns.group_norms(net.backbone)  # a copy; the original untouched
    with torch.no_grad():
        a, b = net.backbone(x), fixed.backbone(x)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=2e-5, rtol=1e-4)
    other = synthetic_he(256, 288, seed=4, n_nuclei=90)[0]  # another image's statistics change the outputs
    with torch.no_grad():
        c = ns.torch_fixed(net, ns.torch_statistics(net.backbone, _input(net, [other]))).backbone(x)
    k = next(iter(a))
    assert np.abs(c[k].numpy() - a[k].numpy()).max() > 1e-3


@needs_model
def test_shared_statistics_are_the_mean_over_windows_layer_after_layer(shipped):
    # an independent route: the same weights in a FixedNorm network calibrated by builder.calibrate_fixed_norms
    images = [synthetic_he(256, 256, seed=s, n_nuclei=20 + 30 * s)[0] for s in range(3)]
    net = shipped.model.eval()
    stats = ns.torch_statistics(net.backbone, _input(net, images))
    cfg = shipped.config.to_dict()
    cfg["backbone"]["norm"] = "fixed"
    other = build_detector(DetectorConfig.from_dict(cfg)).eval()
    other.load_state_dict(net.state_dict(), strict=False)
    calibrate_fixed_norms(other.backbone, _input(other, images))
    for name, (mean, var) in stats.items():
        m = other.backbone.get_submodule(name)
        per = m.num_features // m.groups
        np.testing.assert_allclose(np.repeat(mean, per), m.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.repeat(var, per), m.running_var.numpy(), rtol=1e-4, atol=1e-6)
    # not the statistics of the windows pooled into one (GroupNorm measures each window on its own)
    pooled = ns.torch_statistics(net.backbone, _input(net, [np.concatenate(images, axis=1)]))
    assert not np.allclose(pooled["body.stem.1"][1], stats["body.stem.1"][1], rtol=1e-3)


@needs_model
@needs_openvino
def test_openvino_measures_and_holds_statistics_as_torch_does(shipped):
    import openvino as ov

    from wsinuclei.inference import measure_norm_statistics
    from wsinuclei.models.openvino_star import tile_input, with_normalisation

    core = ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    net = shipped.model.eval()
    images = [synthetic_he(256, 256, seed=s, n_nuclei=40)[0] for s in range(2)]
    x = _input(net, images)
    st = ns.torch_statistics(net.backbone, x)
    # float32 (the trunk converted as the openvino backend converts it): the same statistics, the same outputs
    measuring, names = ns.ov_measuring(ov.convert_model(net.backbone, example_input=x))
    assert sorted(names) == sorted(st)
    res = core.compile_model(measuring, "CPU", f32)(x.numpy())
    first = len(res) - 2 * len(names)
    so = {n: (np.asarray(res[first + 2 * k]).reshape(-1), np.asarray(res[first + 2 * k + 1]).reshape(-1))
          for k, n in enumerate(names)}
    for k in st:
        np.testing.assert_allclose(so[k][0], st[k][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(so[k][1], st[k][1], rtol=1e-4)
    held = core.compile_model(ns.ov_fixed(ov.convert_model(net.backbone, example_input=x), st), "CPU", f32)
    with torch.no_grad():
        want = ns.torch_fixed(net, st).backbone(x)
    got = held(x.numpy())
    for k, key in enumerate(want):
        np.testing.assert_allclose(np.asarray(got[k]), want[key].numpy(), atol=1e-4, rtol=1e-4)
    # the INT8 network: activations are quantised, so within a few percent of float32's statistics
    s8, runtime = measure_norm_statistics(None, images, backend="auto")
    assert runtime == "openvino-int8" and s8.keys() == st.keys()
    for k in st:
        np.testing.assert_allclose(s8[k][1], st[k][1], rtol=0.08)
        np.testing.assert_allclose(s8[k][0], st[k][0], atol=0.05 * float(np.sqrt(st[k][1].max())))
    # and one image's own statistics held in it give about GroupNorm's INT8 outputs (rounding moves a few
    # quantisation steps: measured 0.055 mean on centre logits of about -5)
    one, _ = measure_norm_statistics(None, images[:1], backend="auto")
    base = core.compile_model(with_normalisation(core.read_model(*shipped.int8)), "CPU")
    fixed = core.compile_model(with_normalisation(ns.ov_fixed(core.read_model(*shipped.int8), one)), "CPU")
    p0, p1 = np.asarray(base(tile_input(images[0]))[0]), np.asarray(fixed(tile_input(images[0]))[0])
    assert np.abs(p0 - p1).mean() < 0.1


def _slide(tmp_path, w=1400, h=900):
    from wsinuclei.synth import write_pyramid_tiff

    img = synthetic_he(h, w, seed=1, n_nuclei=300, tissue=(100, 80, w - 150, h - 60))[0]
    path = tmp_path / "syn.tiff"
    write_pyramid_tiff(path, img, 0.25, compression="zlib")
    return path


def test_windows_lie_on_the_lattice_inside_the_tissue_and_are_seeded(tmp_path):
    path = _slide(tmp_path)
    with Slide(path) as s:
        _, ds, mask = slide_tissue(s)
        a = norm_windows(s, mask, ds, 0.25, n=8, size=512)
        b = norm_windows(s, mask, ds, 0.25, n=8, size=512)
        whole = norm_windows(s, mask, ds, 0.25, n=3, size=4096)
    assert a == b and len(a) == 8
    for x, y, w, h in a:
        assert (w, h) == (512, 512) and x % LATTICE == 0 and y % LATTICE == 0
        assert 0 <= x and x + w <= 1400 and 0 <= y and y + h <= 900
        cx, cy = x + w / 2, y + h / 2  # centred near tissue (within half a lattice step of a tissue point)
        assert 100 - w / 2 - LATTICE <= cx <= 1250 + LATTICE and 80 - LATTICE <= cy + h / 2
    assert whole == [(0.0, 0.0, 1400, 900)] * 3  # a slide smaller than a window: the whole slide


def test_a_model_without_group_norm_is_refused_with_one_line(tmp_path, random_model):
    path = _slide(tmp_path)
    with pytest.raises(WsinucleiError, match="not a star model with GroupNorm"):
        run_slide(path, tmp_path / "out", RunOptions(model=str(random_model), norm_statistics="slide", progress=False),
                  log=lambda *_: None)
    with pytest.raises(WsinucleiError, match="--norm-statistics sometimes"):
        RunOptions(norm_statistics="sometimes").validate()


def _nuclei(out, name):
    import csv

    with open(out / f"{name}.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if float(r["score"]) >= 0.5]
    return np.array([[float(r[k]) for k in ("x0", "y0", "x1", "y1")] for r in rows]).reshape(-1, 4)


def _kept(ref, other, roi=None):
    from wsinuclei.evaluate import box_iou

    if roi is not None:
        x, y, w, h = roi

        def inside(b):
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            return (cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h)
        ref, other = ref[inside(ref)], other[inside(other)]
    return float((box_iou(ref, other).max(1) >= 0.9).mean()), len(other) / len(ref) - 1


@needs_model
@need(MONUSEG)
def test_slide_statistics_give_the_same_nuclei_whatever_the_tiling(tmp_path):
    """Two real images (MoNuSeg validation split) on one slide, run with 1024-px tiles, 512-px tiles and as an ROI
    at an origin off the 32-px lattice: with the slide's statistics >= 99 % of the nuclei keep their outline
    (box IoU >= 0.9) and counts move <= 0.5 %. With each tile's own statistics about 80-86 % do
    (BENCHMARKS.md), so this fails without them."""
    from wsinuclei.synth import build_slide

    slide = tmp_path / "two.tiff"
    build_slide(MONUSEG / "train", slide, grid=(2, 1), margin=100,
                names=["TCGA-21-5786-01Z-00-DX1", "TCGA-HE-7130-01Z-00-DX1"], compression="zlib")
    roi = (333, 217, 1500, 800)
    runs = {"ref": {}, "512": {"tile_size": 512}, "roi": {"roi": roi}}
    boxes, windows = {}, {}
    for k, kw in runs.items():
        out = tmp_path / k
        run_slide(slide, out, RunOptions(overlap=128, norm_statistics="slide", progress=False, **kw), log=lambda *_: None)
        boxes[k] = _nuclei(out, "two")
        windows[k] = json.loads((out / "two.run.json").read_text())["norm_statistics"]
    assert windows["ref"]["windows"] == windows["512"]["windows"] == windows["roi"]["windows"]
    assert windows["ref"]["digest"] == windows["roi"]["digest"] and windows["ref"]["layers"] == 14
    assert len(boxes["ref"]) > 800
    kept, diff = _kept(boxes["ref"], boxes["512"])
    assert kept >= 0.99 and abs(diff) <= 0.005, (kept, diff)
    kept, diff = _kept(boxes["ref"], boxes["roi"], roi)
    assert kept >= 0.99 and abs(diff) <= 0.005, (kept, diff)


@needs_model
def test_slide_statistics_are_the_same_on_dask_and_after_a_resume(pyramid_slide, tmp_path):
    """The statistics travel with the slide's context: Dask workers and a resumed run give the in-process nuclei
    bit for bit; a resume never mixes parts made with each tile's own statistics."""
    path = pyramid_slide[0]
    name = path.name.split(".")[0]
    opts = dict(tile_size=512, overlap=64, norm_statistics="slide", progress=False, min_score=0.1)
    run_slide(path, tmp_path / "a", RunOptions(**opts), log=lambda *_: None)
    ref = (tmp_path / "a" / f"{name}.csv").read_text()
    assert len(ref.splitlines()) > 20
    run_slide(path, tmp_path / "dask", RunOptions(workers=2, **opts), log=lambda *_: None)
    assert (tmp_path / "dask" / f"{name}.csv").read_text() == ref
    info = json.loads((tmp_path / "dask" / f"{name}.run.json").read_text())["norm_statistics"]
    assert info["runtime"] == "openvino-int8" and info["definition"] == ns.DEFINITION
    # parts made with tile statistics are not resumed into a slide-statistics run; its own are
    out = tmp_path / "resumed"
    parts = out / f".{name}.parts"
    run_slide(path, out, RunOptions(keep_parts=True, **{**opts, "norm_statistics": "tile"}), log=lambda *_: None)
    tile_parts = {p.name for p in parts.iterdir()}
    report = run_slide(path, out, RunOptions(keep_parts=True, **opts), log=lambda *_: None)
    assert report.tiles_resumed == 0
    (own,) = [p for p in parts.iterdir() if p.name not in tile_parts]
    files = sorted(own.glob("*.npz"))
    for p in files[::2]:
        p.unlink()
    report = run_slide(path, out, RunOptions(**opts), log=lambda *_: None)
    assert report.tiles_resumed == len(files) - len(files[::2]) > 0
    assert (out / f"{name}.csv").read_text() == ref


@needs_model
def test_the_command_runs_slide_statistics_at_overlap_128_unless_told(tmp_path, random_model, capsys):
    from wsinuclei.cli import main

    path = _slide(tmp_path)
    for extra, want in (([], "overlap 128"), (["--overlap", "96"], "overlap 96")):
        assert main(["detect", str(path), "--out", str(tmp_path / "o"), "--dry-run", "--norm-statistics", "slide",
                     *extra]) == 0
        assert want in capsys.readouterr().out
    assert main(["detect", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "overlap 64" in capsys.readouterr().out
    # a model without GroupNorm: one line on stderr, exit status 2
    code = main(["detect", str(path), "--out", str(tmp_path / "o"), "--norm-statistics", "slide", "--model",
                 str(random_model), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not a star model with GroupNorm" in err
    assert not (tmp_path / "o" / "syn.csv").exists()


@needs_model
def test_the_dsa_cli_runs_an_roi_with_slide_statistics(pyramid_slide, tmp_path, capsys):
    # invoked as slicer_cli_web invokes it: the ROI's nuclei are those of the whole slide's run inside it
    from test_dsa import slicer_cli_web_args
    from wsinuclei.dsa import xml_path
    from wsinuclei.dsa.NucleiDetection.NucleiDetection import main

    slide = pyramid_slide[0]
    roi = (333, 217, 900, 700)
    common = {"analysis_tile_size": 512, "min_fgnd_frac": 0.0,  # Tile Overlap at its default: 128 with slide statistics
              "score_cut": 0.5,
              "device": "cpu", "scheduler": "", "num_workers": 0, "mpp": -1, "norm_statistics": "slide",
              "inputImageFile": slide}
    docs = {}
    for k, r in (("whole", (-1, -1, -1, -1)), ("roi", roi)):
        out = tmp_path / k / "synthetic-outputNucleiAnnotationFile.anot"
        assert main(slicer_cli_web_args(xml_path("NucleiDetection"), {**common, "analysis_roi": r,
                                                                      "outputNucleiAnnotationFile": out})) == 0
        docs[k] = json.loads(out.read_text())
    capsys.readouterr()
    assert docs["roi"]["attributes"]["params"]["norm_statistics"] == "slide"

    def centres(doc):  # rectangles carry a centre, the star model's closed polylines their vertices
        return np.array([e["center"][:2] if "center" in e else np.mean(np.array(e["points"])[:, :2], axis=0)
                         for e in doc["elements"]]).reshape(-1, 2)
    whole, part = centres(docs["whole"]), centres(docs["roi"])
    x, y, w, h = roi
    inside = whole[(whole[:, 0] >= x) & (whole[:, 0] < x + w) & (whole[:, 1] >= y) & (whole[:, 1] < y + h)]
    # (the ROI keeps nuclei by box centre; these are vertex means, so one at the very edge may fall either side)
    assert len(part) > 5 and abs(len(part) - len(inside)) <= 1
    nearest = np.sqrt(((part[:, None, :] - whole[None, :, :]) ** 2).sum(-1)).min(1)
    assert (nearest <= 1.0).mean() >= 0.99


def test_an_overlap_left_out_follows_the_normalisation_statistics():
    # the library, the command and the DSA form share one rule: 64 with each tile's statistics, 128 with the slide's
    from wsinuclei.pipeline.options import DEFAULT_OVERLAP

    assert DEFAULT_OVERLAP == {"tile": 64, "slide": 128}
    assert RunOptions().validate().overlap == 64
    assert RunOptions(norm_statistics="slide").validate().overlap == 128
    assert RunOptions(norm_statistics="slide", overlap=96).validate().overlap == 96
    assert RunOptions(overlap=0).validate().overlap == 0


def test_a_plan_from_options_never_validated_gets_the_default_overlap(tmp_path):
    # plan_slide is public: a library caller's RunOptions reach it without validate()
    from wsinuclei.pipeline import plan_slide

    opts = RunOptions(progress=False)
    plan = plan_slide(_slide(tmp_path), opts, 0.25, "rgb", [0, 0, 0], [1, 1, 1], None)
    assert plan.grid.overlap == 64 and opts.overlap == 64
    plan.slide.close()


def test_the_dsa_form_default_overlap_follows_the_normalisation_statistics(tmp_path):
    # as slicer_cli_web invokes it: the Tile Overlap parameter left at its XML default (-1)
    from test_dsa import slicer_cli_web_args
    from wsinuclei.dsa import xml_path
    from wsinuclei.dsa.NucleiDetection.NucleiDetection import _parser, run_options

    def overlap(**values):
        base = {"inputImageFile": tmp_path / "slide.svs", "outputNucleiAnnotationFile": tmp_path / "o.anot"}
        return run_options(_parser().parse_args(slicer_cli_web_args(xml_path("NucleiDetection"), {**base, **values}))).overlap

    assert overlap() == 64
    assert overlap(norm_statistics="slide") == 128
    assert overlap(norm_statistics="slide", tile_overlap_value=96) == 96
    with pytest.raises(WsinucleiError, match="overlap"):
        overlap(tile_overlap_value=-2)
