import numpy as np
from PIL import Image

from wsinuclei.data import CropSampler, clip_boxes, prepare, resample, split_by_image, tile_origins
from conftest import synthetic_he


def test_crop_rule_keeps_mostly_visible_nuclei_clipped():
    boxes = np.array([
        [10, 10, 20, 20],    # inside
        [95, 10, 105, 20],   # half inside: kept, clipped
        [97, 10, 107, 20],   # 30% inside: dropped
        [-2, 50, 8, 60],     # 80% inside: kept, clipped
        [99, 99, 130, 130],  # a sliver: dropped
    ], dtype=float)
    out = clip_boxes(boxes, 0, 0, 100, 100)
    assert out.tolist() == [[10, 10, 20, 20], [95, 10, 100, 20], [0, 50, 8, 60]]


def test_crop_offsets_and_min_size():
    out = clip_boxes(np.array([[110.0, 210.0, 113.0, 230.0]]), 100, 200, 50, 50)
    assert len(out) == 0  # 3 px wide: below min_size 4
    out = clip_boxes(np.array([[110.0, 210.0, 120.0, 230.0]]), 100, 200, 50, 50)
    assert out.tolist() == [[10, 10, 20, 30]]


def test_tile_origins_cover_everything():
    assert tile_origins(1000, 512) == [0, 488]
    assert tile_origins(512, 512) == [0]
    assert tile_origins(300, 512) == [0]
    assert tile_origins(1100, 512) == [0, 512, 588]


def test_split_is_deterministic_and_order_free():
    names = [f"img{i}" for i in range(30)]
    a = split_by_image(names, 0.1, seed=0)
    b = split_by_image(list(reversed(names)), 0.1, seed=0)
    assert a == b and len(a[1]) == 3 and not set(a[0]) & set(a[1])
    assert split_by_image(names, 0.1, seed=1) != a


def test_resample_scales_boxes():
    img = np.zeros((100, 80, 3), np.uint8)
    out, boxes = resample(img, np.array([[10.0, 20.0, 30.0, 40.0]]), 2.0)
    assert out.shape == (200, 160, 3) and boxes.tolist() == [[20, 40, 60, 80]]


def test_prepare_writes_tiles_and_manifest(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        img, boxes = synthetic_he(300, 300, seed=i, n_nuclei=20)
        Image.fromarray(img).save(src / f"im{i}.png")
        lab = np.zeros((300, 300), np.uint16)
        for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
            lab[y0:y1, x0:x1] = k + 1
        Image.fromarray(lab).save(src / f"im{i}_labels.png")
    m = prepare(src, tmp_path / "prep", tile=200, val_fraction=0.25, progress=False)
    assert len(m["val"]) == 1 and m["tiles"]["train"] == 3 * 4 and m["tiles"]["val"] == 4
    assert (tmp_path / "prep" / "manifest.json").is_file()
    z = np.load(sorted((tmp_path / "prep" / "train").glob("*.npz"))[0])
    assert z["image"].shape == (200, 200, 3) and z["boxes"].shape[1] == 4
    # 2x resampling (20x data onto the 40x grid) doubles tiles' content scale
    m2 = prepare(src, tmp_path / "prep2", tile=200, val_fraction=0.25, source_mpp=0.5, progress=False)
    assert m2["tiles"]["train"] == 3 * 9


def test_crop_sampler_augmentations_keep_boxes_on_nuclei():
    img, boxes = synthetic_he(256, 256, seed=2, n_nuclei=25)
    sampler = CropSampler([("t", img, boxes)], 128, np.random.default_rng(0), min_visible=1.0)
    for _ in range(20):
        crop, b = sampler.sample()
        assert crop.shape == (128, 128, 3)
        for x0, y0, x1, y1 in b.astype(int):
            patch = crop[y0:y1, x0:x1]
            # the nucleus colour (90, 50, 140) fills a good part of each box, whatever the flip/rotation
            dark = (np.abs(patch.astype(int) - [90, 50, 140]).sum(-1) < 30).mean()
            assert dark > 0.5


def test_crop_sampler_is_reproducible():
    img, boxes = synthetic_he(256, 256, seed=2)
    a = CropSampler([("t", img, boxes)], 100, np.random.default_rng(5))
    b = CropSampler([("t", img, boxes)], 100, np.random.default_rng(5))
    for _ in range(5):
        (ia, ba), (ib, bb) = a.sample(), b.sample()
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ba, bb)
