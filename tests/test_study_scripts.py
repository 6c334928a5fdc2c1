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

from conftest import synthetic_he

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pack_prepared  # noqa: E402


@pytest.fixture(scope="module")
def overlapping_prepared(tmp_path_factory):
    """Two 300 px images cut into 256 px tiles (origins 0 and 44: the tiles overlap), one held out whole."""
    from wsinuclei.data import prepare

    root = tmp_path_factory.mktemp("packdata")
    src = root / "src"
    src.mkdir()
    for i in range(3):
        img, boxes = synthetic_he(300, 300, seed=20 + i, n_nuclei=30)
        Image.fromarray(img).save(src / f"im{i}.png")
        lab = np.zeros((300, 300), np.uint16)
        for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
            lab[y0:y1, x0:x1] = k + 1
        Image.fromarray(lab).save(src / f"im{i}_labels.png")
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
