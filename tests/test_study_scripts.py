"""The study's helper scripts, run end to end on tiny data and tiny or random models: carrying a prepared folder
to another machine bit for bit, and timing models per tile (cut ResNet units included)."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_he, write_labelled_images

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pack_prepared  # noqa: E402


@pytest.fixture(scope="module")
def overlapping_prepared(tmp_path_factory):
    """Two 300 px images cut into 256 px tiles (origins 0 and 44: the tiles overlap), one held out whole."""
    from wsinuclei.data import prepare

    root = tmp_path_factory.mktemp("packdata")
    src = write_labelled_images(root / "src", 3, 300, seed=20, n_nuclei=30)
    prepare(src, root / "prep", tile=256, val_fraction=0.34, progress=False)
    return root / "prep"


def _arrays(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.rglob("*.npz")):
        with np.load(f) as z:
            out[str(f.relative_to(folder))] = {k: z[k] for k in z.files}
    return out


def test_pack_and_unpack_give_back_every_array(overlapping_prepared, tmp_path):
    archive = tmp_path / "p.tar"
    pack_prepared.pack(overlapping_prepared, archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    # pixels travel once per image, as WebP; the tiles' own npz members carry no image
    assert sum(n.startswith("whole/") for n in names) == 3
    pack_prepared.unpack(archive, tmp_path / "back")
    before, after = _arrays(overlapping_prepared), _arrays(tmp_path / "back")
    assert before.keys() == after.keys() and len(before) >= 9  # 2 x 4 train tiles, val tiles, whole val image
    for rel, arrays in before.items():
        assert arrays.keys() == after[rel].keys()
        for k in arrays:
            assert arrays[k].dtype == after[rel][k].dtype
            np.testing.assert_array_equal(arrays[k], after[rel][k])
    assert (tmp_path / "back" / "manifest.json").read_text() == (overlapping_prepared / "manifest.json").read_text()


def test_lossy_pack_keeps_every_other_array_exact_and_the_images_close(overlapping_prepared, tmp_path):
    archive = tmp_path / "lossy.tar"
    pack_prepared.pack(overlapping_prepared, archive, lossy=92)
    pack_prepared.pack(overlapping_prepared, tmp_path / "exact.tar")
    assert archive.stat().st_size < 0.7 * (tmp_path / "exact.tar").stat().st_size
    pack_prepared.unpack(archive, tmp_path / "back")
    before, after = _arrays(overlapping_prepared), _arrays(tmp_path / "back")
    assert before.keys() == after.keys()
    changed = 0
    for rel, arrays in before.items():
        assert arrays.keys() == after[rel].keys()
        for k in arrays:
            if k == "image":
                diff = np.abs(arrays[k].astype(int) - after[rel][k].astype(int))
                assert diff.mean() < 6, rel  # WebP at quality 92: close, not equal
                changed += int(diff.any())
            else:
                np.testing.assert_array_equal(arrays[k], after[rel][k])
    assert changed > 0
    # overlapping tiles still agree: both are crops of the one decoded image
    train = tmp_path / "back" / "train"
    a = _arrays(train)
    keys = sorted(a)
    first = next(k for k in keys if k.endswith("_0_0.npz"))
    shifted = first.replace("_0_0.npz", "_44_44.npz")
    np.testing.assert_array_equal(a[first]["image"][44:, 44:], a[shifted]["image"][: a[first]["image"].shape[0] - 44,
                                                                                    : a[first]["image"].shape[1] - 44])


def test_pack_command_line_as_a_device_run_uses_it(overlapping_prepared, tmp_path):
    script = str(ROOT / "scripts" / "pack_prepared.py")
    archive = tmp_path / "p.tar"
    r = subprocess.run([sys.executable, script, "pack", str(overlapping_prepared), str(archive), "--lossy", "92"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "images lossy (WebP 92)" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, script, "unpack", str(archive), str(tmp_path / "back")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "every array but the (WebP 92) images" in r.stdout, r.stderr
    assert _arrays(tmp_path / "back").keys() == _arrays(overlapping_prepared).keys()
    r = subprocess.run([sys.executable, script, "pack", str(overlapping_prepared), str(tmp_path / "q.tar"),
                        "--lossy", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "WebP quality from 1 to 100" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "q.tar").exists()


def test_pack_refuses_tiles_whose_overlap_disagrees(overlapping_prepared, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(overlapping_prepared, bad)
    tile = sorted((bad / "train").glob("*_44_44.npz"))[0]
    with np.load(tile) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["image"][0, 0] ^= 0xFF  # inside the overlap with the tile at (0, 0)
    np.savez(tile, **arrays)
    with pytest.raises(SystemExit, match="does not match"):
        pack_prepared.pack(bad, tmp_path / "bad.tar")
    # nothing left behind that looks like an archive
    assert not (tmp_path / "bad.tar").exists() and not (tmp_path / "bad.tar.partial").exists()


def test_device_time_cuts_resnet_units_and_leaves_other_presets_whole(random_model, tmp_path):
    import torch

    from wsinuclei import stain
    from wsinuclei.checkpoint import save_model
    from wsinuclei.models import build_detector, load_preset

    torch.manual_seed(0)
    cfg = load_preset("resnet50")
    resnet = tmp_path / "r50.safetensors"
    save_model(build_detector(cfg), cfg, resnet, target_mu=stain.DEFAULT_TARGET_MU,
               target_sigma=stain.DEFAULT_TARGET_SIGMA)
    img, _ = synthetic_he(192, 192, seed=3, n_nuclei=15)
    Image.fromarray(img).save(tmp_path / "tile.png")
    out = tmp_path / "t.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "study_device_time.py"), "--device", "cpu",
                    "--threads", "1", "--tile", str(tmp_path / "tile.png"), "--model", f"fast={random_model}",
                    "--model", f"r50={resnet}", "--units", "2,3,9", "--repeats", "1", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    rows = [(r["model"], r["units"]) for r in result["rows"]]
    # 9 is more than the 6 units the preset has: only cuts that exist are timed
    assert rows == [("fast", None), ("r50", 6), ("r50", 2), ("r50", 3)]
    params = {r["units"]: r["params"] for r in result["rows"] if r["model"] == "r50"}
    assert params[2] < params[3] < params[6]
    assert result["tile"] == [192, 192, 3] and all(r["s_per_tile_median"] > 0 for r in result["rows"])


def test_num_units_experiment_runs_end_to_end_on_tiny_data(tmp_path):
    """Cutting block 3 keeps the model runnable and changes it: fewer parameters, rows for each setting, the
    table, the plot and the overlay written."""
    import torch

    from wsinuclei import stain
    from wsinuclei.checkpoint import save_model
    from wsinuclei.models import build_detector, load_preset

    src = write_labelled_images(tmp_path / "images", 2, 160, seed=30, n_nuclei=12)
    torch.manual_seed(0)
    cfg = load_preset("resnet50")
    model = tmp_path / "r50.safetensors"
    save_model(build_detector(cfg), cfg, model, target_mu=stain.DEFAULT_TARGET_MU,
               target_sigma=stain.DEFAULT_TARGET_SIGMA)
    out = tmp_path / "study"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "study_num_units.py"), "--model", str(model),
                    "--data", str(src), "--units", "2,6", "--threads", "1", "--region", "im0:0:0:64",
                    "--out", str(out)], check=True, capture_output=True, text=True)
    result = json.loads((out / "num_units.json").read_text())
    assert [r["units"] for r in result["rows"]] == [2, 6]
    assert result["rows"][0]["params"] < result["rows"][1]["params"]
    assert all(0 <= r["f1"] <= 1 and r["s_per_image"] > 0 for r in result["rows"])
    assert "| 2 |" in (out / "num_units.md").read_text()
    overlay = Image.open(out / "num_units_overlay.png")
    assert overlay.size == (2 * 64, 64)  # one panel per setting
    assert (out / "num_units.png").stat().st_size > 0


def test_cpu_machines_to_match_one_gpu_follow_the_measured_rates(random_model):
    import study_slide_times as sst

    runs = {"dask1": {"tiles_per_s": 0.5, "s_per_tile": 2.0, "inference_s_per_tile": 1.5},
            "dask2": {"tiles_per_s": 0.8}}
    c = sst.cluster_match(runs, gpu_s=0.05)
    assert c["workers_to_match_gpu_model_only"] == pytest.approx(40.0)  # 20 tiles/s against 0.5 per machine
    assert c["dask_2_worker_efficiency"] == pytest.approx(0.8)
    assert c["gpu_tiles_per_s_16_host_cores"] == pytest.approx(20.0)  # host work (0.5 s) is not the bound
    runs["dask1"]["inference_s_per_tile"] = 0.0  # all 2 s are host work: 16 cores feed only 8 tiles/s
    assert sst.cluster_match(runs, gpu_s=0.05)["gpu_tiles_per_s_16_host_cores"] == pytest.approx(8.0)
    # GPU rows are found by architecture: a cut ResNet-101 times the 18-unit model too
    gpu = {"rows": [{"preset": "fast", "units": None, "s_per_tile_median": 0.03},
                    {"preset": "resnet101", "units": 23, "s_per_tile_median": 0.037},
                    {"preset": "resnet101", "units": 18, "s_per_tile_median": 0.036}]}
    assert sst.architecture(str(random_model)) == ("fast", None)
    assert sst.gpu_seconds(gpu, "resnet101", 18) == 0.036 and sst.gpu_seconds(gpu, "resnet50", 6) is None


def test_interpolated_weights_lie_between_the_two_models_and_keep_the_tuned_ones_extra(tmp_path):
    """scripts/interpolate_weights.py: shared tensors are alpha * tuned + (1 - alpha) * start, a tensor only the
    tuned model has (its type branch) is kept, and the tuned model's settings travel with it."""
    import torch

    from wsinuclei.checkpoint import load_model, save_model
    from wsinuclei.models import build_detector, load_preset

    def star(seed, types):
        torch.manual_seed(seed)
        cfg = load_preset("star")
        if types:
            cfg.star_head["n_types"] = 4
        path = tmp_path / f"m{seed}.safetensors"
        save_model(build_detector(cfg), cfg, path, target_mu=[8.6, -0.1, 0.04], target_sigma=[0.6, 0.1, 0.01],
                   half=False)
        return path

    tuned, start = star(1, True), star(2, False)
    out = tmp_path / "mix.safetensors"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "interpolate_weights.py"), str(tuned), str(start), "--alpha", "0.25",
                    "--out", str(out)], check=True, capture_output=True)
    a, b, m = (load_model(p).model.state_dict() for p in (tuned, start, out))
    only_tuned = [k for k in a if k not in b]
    assert only_tuned and all(torch.equal(m[k], a[k]) for k in only_tuned)
    shared = [k for k in a if k in b and a[k].is_floating_point()]
    for k in shared:
        torch.testing.assert_close(m[k], 0.25 * a[k].float() + 0.75 * b[k].float())
    assert any(not torch.equal(a[k], b[k]) for k in shared)  # the two differ, so the mix is a real test
    assert load_model(out).config.star_head.get("n_types") == 4
