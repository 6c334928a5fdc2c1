"""The OpenVINO trunk: the same detections as torch on a real tile, and a quiet fall-back to torch."""

import sys

import numpy as np
import pytest

from conftest import MONUSEG, need
from wsinuclei.errors import WsinucleiError

ov = pytest.importorskip("openvino", reason="OpenVINO is a wsinuclei dependency; not installed here (pip install openvino)")


@need(MONUSEG / "train")
def test_openvino_gives_torchs_detections_on_a_real_tile(tmp_path, monkeypatch):
    from PIL import Image

    from wsinuclei import stain
    from wsinuclei.evaluate import match
    from wsinuclei.inference import NucleusDetector

    monkeypatch.setenv("WSINUCLEI_CACHE", str(tmp_path))
    rgb = np.array(Image.open(MONUSEG / "train" / "TCGA-18-5592-01Z-00-DX1.png").convert("RGB"))[:768, :1000]
    tile = stain.reinhard(rgb, stain.DEFAULT_TARGET_MU, stain.DEFAULT_TARGET_SIGMA)
    torch_det = NucleusDetector.from_file(None, backend="torch")
    ov_det = NucleusDetector.from_file(None, backend="openvino")
    assert (torch_det.backend, ov_det.backend) == ("torch", "openvino")
    (b1, s1, _), = torch_det.predict_instances([tile])
    (b2, s2, _), = ov_det.predict_instances([tile])
    keep1, keep2 = s1 >= 0.1, s2 >= 0.1
    assert keep1.sum() > 100 and abs(int(keep1.sum()) - int(keep2.sum())) <= 2
    pi, ti, _ = match(b2[keep2], b1[keep1], 0.9)
    assert len(pi) >= keep1.sum() - 2
    assert np.abs(b2[keep2][pi] - b1[keep1][ti]).max() <= 0.5
    assert np.abs(s2[keep2][pi] - s1[keep1][ti]).max() <= 1e-3
    # the conversion is cached on disk: a second process start reads it instead of converting again
    assert list((tmp_path / "openvino").glob("*.xml"))


def test_auto_falls_back_to_torch_and_openvino_insists(random_model, monkeypatch, tmp_path):
    from wsinuclei.checkpoint import load_model
    from wsinuclei.models import backends

    monkeypatch.setenv("WSINUCLEI_CACHE", str(tmp_path))
    model = load_model(random_model).model.eval()
    trunk = model.backbone
    # feature maps that do not agree: auto keeps torch's trunk, openvino refuses
    monkeypatch.setattr(backends, "AGREEMENT", -1.0)
    assert backends.use_backend(model, "auto", "cpu", "k") == "torch" and model.backbone is trunk
    with pytest.raises(WsinucleiError, match="differ from torch's"):
        backends.use_backend(model, "openvino", "cpu", "k")
    monkeypatch.undo()
    # not installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert backends.use_backend(model, "auto", "cpu", "k") == "torch"
    with pytest.raises(WsinucleiError, match="not installed"):
        backends.use_backend(model, "openvino", "cpu", "k")
    with pytest.raises(WsinucleiError, match="runs on the CPU"):
        backends.use_backend(model, "openvino", "cuda", "k")


def test_thread_infer_first_call_runs_alone():
    """OpenVINO's binding can deadlock when two threads make their first infer call at once (a whole-slide run
    hung that way about one run in ten): ThreadInfer lets the first call finish before any other starts, then
    lets calls overlap (one infer request per thread)."""
    import threading
    import time

    from wsinuclei.models.openvino_star import ThreadInfer

    state = {"now": 0, "peak_during_first": 0, "peak": 0, "calls": 0, "requests": 0}
    lock = threading.Lock()

    class Request:
        def infer(self, x, share_inputs):
            with lock:
                state["now"] += 1
                state["calls"] += 1
                first = state["calls"] == 1
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.05)
            with lock:
                if first:
                    state["peak_during_first"] = state["peak"]
                state["now"] -= 1
            return x * 2

    class Compiled:
        def create_infer_request(self):
            with lock:
                state["requests"] += 1
            return Request()

    infer = ThreadInfer(Compiled())
    barrier = threading.Barrier(4)
    results = [None] * 8

    def work(k):
        barrier.wait()
        for j in (k, k + 4):
            results[j] = infer(np.full(2, j))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r[0] for r in results] == [2 * j for j in range(8)]
    assert state["peak_during_first"] == 1  # nothing else ran while the first call did
    assert state["peak"] > 1  # afterwards the threads' calls overlapped
    assert state["requests"] == 4  # one request per thread
