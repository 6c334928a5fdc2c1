"""A star model's INT8 network: made at export (NNCF), carried in the model file, run by OpenVINO alone,
chosen by ``--backend auto``, and refused or passed over in words when it cannot run."""

import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import MONUSEG, detect_in_fresh_process, need, synthetic_he, write_labelled_images

ov = pytest.importorskip("openvino", reason="OpenVINO is a wsinuclei dependency; not installed here (pip install openvino)")
torch = pytest.importorskip("torch")

from wsinuclei.checkpoint import DEFAULT_MODEL, load_model, read_model_file, save_model  # noqa: E402
from wsinuclei.errors import WsinucleiError  # noqa: E402
from wsinuclei.inference import NucleusDetector, OpenVinoStarDetector, load_detector  # noqa: E402
from wsinuclei.models import build_detector, load_preset  # noqa: E402


def _star(tmp_path, name="star.safetensors", int8=None):
    from wsinuclei import stain

    torch.manual_seed(0)
    cfg = load_preset("star")
    cfg.star_head["score_thresh"] = 0.0
    return save_model(build_detector(cfg), cfg, tmp_path / name, target_mu=stain.DEFAULT_TARGET_MU,
                      target_sigma=stain.DEFAULT_TARGET_SIGMA, int8=int8)


def _float_ir(model_path) -> tuple[bytes, bytes]:
    """The float32 network as IR bytes: stands in for an INT8 one where only the carrying is tested."""
    from wsinuclei.models.backends import convert_trunk

    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "n.xml"
        ov.save_model(convert_trunk(load_model(model_path).model.backbone), str(xml), compress_to_fp16=False)
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


def test_a_model_file_carries_a_network_that_auto_runs_without_torch(tmp_path):
    plain = _star(tmp_path)
    network = _float_ir(plain)
    carried = _star(tmp_path, "carried.safetensors", int8=network)
    loaded, _ = read_model_file(carried)
    assert loaded.int8 == network and read_model_file(plain)[0].int8 is None
    # the torch model loads from the same file (the network's tensor is not a weight)
    torch_det = load_detector(carried, backend="torch")
    assert isinstance(torch_det, NucleusDetector)
    det = load_detector(carried)
    assert isinstance(det, OpenVinoStarDetector) and det.backend == "openvino-int8"
    tile = synthetic_he(256, 320, seed=3)[0]
    (b1, s1, _), = torch_det.predict_instances([tile])
    (b2, s2, _), = det.predict_instances([tile])
    assert len(b1) > 20 and len(b2) == len(b1)  # the same network, so the same nuclei
    np.testing.assert_allclose(np.sort(s2), np.sort(s1), atol=1e-4)
    # a fresh process runs it without importing torch, on the first start (no conversion to check)
    got = detect_in_fresh_process(carried, tile, tmp_path)
    assert (got["backend"], got["nuclei"], got["torch"]) == ("openvino-int8", len(b1), False)


def test_backend_choices_refuse_in_words(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("WSINUCLEI_CACHE", str(tmp_path / "cache"))
    plain = _star(tmp_path)
    with pytest.raises(WsinucleiError, match="carries no INT8 network"):
        load_detector(plain, backend="openvino-int8")
    with pytest.raises(WsinucleiError, match="runs on the CPU"):
        load_detector(plain, device="cuda", backend="openvino-int8")
    with pytest.raises(WsinucleiError, match="expected one of"):
        load_detector(plain, backend="onnx")
    # a network this OpenVINO cannot read: auto says so and runs float32; openvino-int8 refuses
    broken = _star(tmp_path, "broken.safetensors", int8=(b"<net version='11'><layers>", b"\0" * 16))
    with caplog.at_level("WARNING"):
        det = load_detector(broken)
    assert det.backend in ("openvino", "torch") and "INT8 network not used" in caplog.text
    with pytest.raises(WsinucleiError, match="could not read it"):
        load_detector(broken, backend="openvino-int8")
    # openvino = float32 even where the file carries an INT8 network
    assert load_detector(broken, backend="openvino").backend == "openvino"


def test_export_int8_quantises_checks_and_carries_the_network(tmp_path, monkeypatch):
    pytest.importorskip("nncf", reason="NNCF makes INT8 networks at export (pip install nncf)")
    from wsinuclei.cli import main
    from wsinuclei.data import prepare

    monkeypatch.setenv("WSINUCLEI_CACHE", str(tmp_path / "cache"))
    src = write_labelled_images(tmp_path / "src", n=3, size=600, seed=5, n_nuclei=30)
    prepare(src, tmp_path / "prep", tile=512, val_fraction=0.34, progress=False)
    plain = _star(tmp_path)
    out = tmp_path / "int8.safetensors"
    assert main(["export", str(plain), "--out", str(out), "--int8", str(tmp_path / "prep")]) == 0
    loaded, _ = read_model_file(out)
    rec = loaded.extra["int8"]
    assert loaded.int8 is not None and b"FakeQuantize" in loaded.int8[0]  # quantised, not the float network
    assert rec["calibration_crops"] == 96 and rec["images"] >= 1 and 0 <= rec["agreement_f1"] <= 1
    # a later export that does not quantise again keeps the network
    again = tmp_path / "again.safetensors"
    assert main(["export", str(out), "--out", str(again), "--nms", "0.5"]) == 0
    assert read_model_file(again)[0].int8 == loaded.int8
    # the quantised network runs and finds what float32 finds on a tile (random weights: a loose check)
    tile = synthetic_he(256, 256, seed=4)[0]
    (b8, _, _), = load_detector(out).predict_instances([tile])
    (b32, _, _), = load_detector(out, backend="torch").predict_instances([tile])
    assert abs(len(b8) - len(b32)) <= 0.2 * len(b32) + 5


def test_export_int8_refuses_what_it_cannot_quantise(tmp_path, random_model):
    from wsinuclei.cli import main

    assert main(["export", str(random_model), "--out", str(tmp_path / "x.safetensors"), "--int8", str(tmp_path)]) != 0
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason=f"no shipped model at {DEFAULT_MODEL}")
@need(MONUSEG)
def test_the_shipped_int8_network_finds_what_float32_finds_on_a_real_image():
    from PIL import Image

    from wsinuclei.evaluate import count
    from wsinuclei.stain import reinhard

    loaded, _ = read_model_file(DEFAULT_MODEL)
    if loaded.int8 is None:
        pytest.fail("the shipped star model carries no INT8 network (wsinuclei export --int8)")
    # a MoNuSeg training image from the validation split, normalised as the pipeline does
    image = np.asarray(Image.open(MONUSEG / "train" / "TCGA-21-5786-01Z-00-DX1.png").convert("RGB"))
    tile = reinhard(image, loaded.target_mu, loaded.target_sigma)
    int8 = load_detector(DEFAULT_MODEL, backend="openvino-int8")
    fp32 = load_detector(DEFAULT_MODEL, backend="torch")
    (b8, s8, o8), = int8.predict_instances([tile])
    (b32, s32, _), = fp32.predict_instances([tile])
    nuclei32 = b32[s32 >= 0.5]
    agreement = count(b8, s8, nuclei32, score_threshold=0.5)
    assert len(nuclei32) > 300
    assert agreement.f1 > 0.95, f"INT8 agrees with float32 on {agreement.f1:.3f} of the nuclei"
    assert o8.shape[1:] == (32, 2)


def test_threads_sharing_a_detector_each_get_their_own_tiles_nuclei(tmp_path):
    """A Dask worker with several threads runs tiles at once on one detector: every thread must get the nuclei
    of its own tile (one infer request per thread), as a sequential run gives them."""
    from concurrent.futures import ThreadPoolExecutor

    plain = _star(tmp_path)
    det = load_detector(_star(tmp_path, "carried.safetensors", int8=_float_ir(plain)))
    assert det.backend == "openvino-int8"
    tiles = [synthetic_he(192 + 32 * (k % 3), 256, seed=20 + k)[0] for k in range(12)]
    want = [det.predict_instances([t])[0] for t in tiles]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda t: det.predict_instances([t])[0], tiles))
            for (b, s, _), (wb, ws, _) in zip(got, want):
                np.testing.assert_array_equal(b, wb)
                np.testing.assert_array_equal(s, ws)


def test_two_streams_run_a_call_s_tiles_at_once_with_the_same_nuclei(tmp_path, monkeypatch):
    """In-process runs on the CPU load the network with two OpenVINO streams and hand it two tiles per call:
    each tile runs on its own stream, and every tile gets the nuclei a one-stream, one-tile-at-a-time
    detector gives it, in the order given (float32 sums in another order across threads: equal to 1e-5)."""
    import threading

    from wsinuclei.pipeline import worker

    model = _star(tmp_path, "carried.safetensors", int8=_float_ir(_star(tmp_path)))
    one = load_detector(model)
    two = load_detector(model, streams=2)
    assert (one.tiles_at_once, two.tiles_at_once) == (1, 2)
    tiles = [synthetic_he(192 + 32 * (k % 3), 256, seed=40 + k)[0] for k in range(5)]
    seen = set()
    real = two.net._maps
    monkeypatch.setattr(two.net, "_maps", lambda t: (seen.add(threading.get_ident()), real(t))[1])
    got = two.predict_instances(tiles)
    assert len(seen) == 2  # the tiles ran on two threads, one request each
    for (b, s, o), t in zip(got, tiles):
        (wb, ws, wo), = one.predict_instances([t])
        assert len(b) == len(wb) > 10
        np.testing.assert_allclose(b, wb, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(s, ws, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(worker.os, "cpu_count", lambda: 1)  # one core: one stream
    assert worker.in_process_streams("cpu") == 1 and worker.in_process_streams("cuda") == 1


def test_a_coarser_read_shares_the_network_with_its_own_budgets(tmp_path, monkeypatch):
    """A worker's detector for tiles read at 0.5 µm/px (a 20x slide at its own resolution) is the 0.25 one's
    network with four times its detection budget; neither budget changes the other."""
    from wsinuclei.pipeline import worker

    monkeypatch.setattr(worker, "_STATE", {})
    model = _star(tmp_path, "carried.safetensors", int8=_float_ir(_star(tmp_path)))
    native = worker._detector(str(model), "cpu", "auto")
    coarse = worker._detector(str(model), "cpu", "auto", 0.5)
    assert coarse is not native and coarse.net.compiled is native.net.compiled
    assert worker._detector(str(model), "cpu", "auto", 0.5) is coarse
    budget = load_preset("star").star_head.get("detections_per_img", 5000)
    assert (native.net.decoding.max_detections, coarse.net.decoding.max_detections) == (budget, 4 * budget)
    tile = synthetic_he(256, 256, seed=8)[0]
    (b1, s1, _), = native.predict_instances([tile])
    (b2, s2, _), = coarse.predict_instances([tile])
    np.testing.assert_array_equal(b1, b2)  # a budget far above the tile's nuclei: the same detections


def test_non_finite_weights_and_an_int8_network_of_other_weights_are_refused(tmp_path):
    """A model file whose float weights hold NaN is refused on every backend; one whose INT8 network was made
    from other float weights (the digest stored beside it differs) is refused before it runs."""
    import torch
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from wsinuclei import stain
    from wsinuclei.checkpoint import read_model_file, save_model
    from wsinuclei.errors import WsinucleiError
    from wsinuclei.inference import load_detector
    from wsinuclei.models import build_detector, load_preset

    torch.manual_seed(0)
    cfg = load_preset("star")
    model = build_detector(cfg)
    path = save_model(model, cfg, tmp_path / "m.safetensors", target_mu=stain.DEFAULT_TARGET_MU,
                      target_sigma=stain.DEFAULT_TARGET_SIGMA, int8=(b"<net/>", b"\x00" * 16))
    read_model_file(path)  # consistent: read

    with safe_open(str(path), framework="numpy") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    name = next(k for k, v in tensors.items() if v.dtype.kind == "f" and v.ndim == 4)
    other = dict(tensors)
    other[name] = tensors[name] + np.float16(0.01)
    save_file(other, str(tmp_path / "mixed.safetensors"), metadata=meta)
    with pytest.raises(WsinucleiError, match="INT8 network was not made from the float weights"):
        read_model_file(tmp_path / "mixed.safetensors")

    nan = dict(tensors)
    nan[name] = np.full_like(tensors[name], np.nan)
    save_file(nan, str(tmp_path / "nan.safetensors"), metadata=meta)
    for backend in ("torch", "auto"):
        with pytest.raises(WsinucleiError, match="NaN or infinite"):
            load_detector(tmp_path / "nan.safetensors", backend=backend)


def test_weights_of_another_network_are_one_clear_line(tmp_path):
    from wsinuclei import stain
    from wsinuclei.checkpoint import load_model, save_model
    from wsinuclei.errors import WsinucleiError
    from wsinuclei.models import build_detector, load_preset

    small = load_preset("star")
    wide = load_preset("star")
    wide.star_head["channels"] = [32, 32]
    path = save_model(build_detector(wide), small, tmp_path / "m.safetensors", target_mu=stain.DEFAULT_TARGET_MU,
                      target_sigma=stain.DEFAULT_TARGET_SIGMA)  # says 'star' (64-channel head), holds 32 channels
    with pytest.raises(WsinucleiError, match="weights do not fit preset 'star' \\(size mismatch for backbone.head") as e:
        load_model(path)
    assert "\n" not in str(e.value) and "more)" in str(e.value)
