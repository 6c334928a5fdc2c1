from pathlib import Path

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


def _labelled_folder(folder, n=4, size=300, kind="labels"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, boxes = synthetic_he(size, size, seed=i, n_nuclei=20)
        Image.fromarray(img).save(folder / f"im{i}.png")
        lab = np.zeros((size, size), np.uint16)
        for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
            lab[y0:y1, x0:x1] = k + 1
        if kind == "labels":
            Image.fromarray(lab).save(folder / f"im{i}_labels.png")
        else:
            Image.fromarray(((lab > 0) * 255).astype(np.uint8)).save(folder / f"im{i}_mask.png")
    return folder


def test_split_merged_nuclei_separates_touching_discs():
    from wsinuclei.data import split_merged_nuclei

    yy, xx = np.mgrid[0:60, 0:100]
    mask = ((xx - 30) ** 2 + (yy - 30) ** 2 <= 15 ** 2) | ((xx - 57) ** 2 + (yy - 30) ** 2 <= 15 ** 2)
    mask |= (xx - 90) ** 2 + (yy - 50) ** 2 <= 2  # a speck too small for a marker keeps a label of its own
    labels = split_merged_nuclei(mask)
    assert labels.max() == 3 and ((labels > 0) == mask).all()
    assert labels[30, 20] != labels[30, 67] and labels[30, 20] > 0 and labels[30, 67] > 0


def test_recipe_prepares_several_sets_with_groups_and_labels(tmp_path):
    from wsinuclei.data import load_recipe, load_tiles, prepare_sources

    _labelled_folder(tmp_path / "a", 4)
    _labelled_folder(tmp_path / "b", 3, kind="binary")
    pts = tmp_path / "c"
    pts.mkdir()
    img, boxes = synthetic_he(200, 200, seed=9, n_nuclei=10)
    Image.fromarray(img).save(pts / "p0.png")
    (pts / "p0_points.csv").write_text("x,y\n" + "\n".join(f"{(b[0]+b[2])/2},{(b[1]+b[3])/2}" for b in boxes))
    (tmp_path / "r.toml").write_text(
        '[[source]]\nname = "a"\npath = "a"\nkind = "labels"\nval_fraction = 0.25\ngroup = "im(\\\\d)"\nweight = 2\n'
        '[[source]]\nname = "b"\npath = "b"\nkind = "binary"\nmpp = 0.5\nval_fraction = 0.34\n'
        '[[source]]\nname = "c"\npath = "c"\nkind = "points"\nmpp = 0.5\nuse = "val"\n')
    sources, _ = load_recipe(tmp_path / "r.toml")
    m = prepare_sources(sources, tmp_path / "prep", tile=256, progress=False)
    assert len(m["sets"]["a"]["val"]) == 1 and len(m["sets"]["b"]["val"]) == 1 and m["sets"]["c"]["val"] == ["p0"]
    train = load_tiles(tmp_path / "prep", "train")
    assert {t.set for t in train} == {"a", "b"} and all(t.labels is not None for t in train)
    # set b is 20x: upsampled 2x onto the model's grid, so its 300-px images give 600-px images (4 tiles of 256)
    assert sum(t.set == "b" for t in train) == 2 * 9
    for t in train:  # boxes and labels agree
        from wsinuclei.annotations import label_image_boxes

        np.testing.assert_array_equal(label_image_boxes(t.labels)[0], t.boxes)
    val = {t.set: t for t in load_tiles(tmp_path / "prep", "val_full")}
    assert val["c"].points.shape == (10, 2) and val["c"].mpp == 0.5 and val["c"].image.shape == (200, 200, 3)


def _labelled_he(seed, n_nuclei, size=256):
    """A synthetic H&E image and its instance labels: each nucleus's own pixels (its colour inside its box)."""
    img, boxes = synthetic_he(size, size, seed=seed, n_nuclei=n_nuclei)
    lab = np.zeros((size, size), np.uint16)
    nucleus = (img == [90, 50, 140]).all(-1)
    for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        lab[y0:y1, x0:x1][nucleus[y0:y1, x0:x1]] = k + 1
    return img, lab


def test_instance_crops_give_masks_that_match_boxes_and_nuclei():
    from wsinuclei.annotations import label_image_boxes
    from wsinuclei.data import Augment, CropSampler, Tile

    img, lab = _labelled_he(seed=3, n_nuclei=25)
    boxes = label_image_boxes(lab)[0]
    aug = Augment(small_p=0.5, small_low=0.5, small_high=0.6, low=0.9, high=1.1)
    s = CropSampler([Tile("t", "x", img, boxes, lab)], 128, np.random.default_rng(1), augment=aug, min_visible=1.0)
    scales = set()
    for _ in range(30):
        crop, b, masks = s.sample_instances()
        assert masks.shape == (len(b),) + crop.shape[:2]
        assert abs(crop.shape[0] - 128) <= 1
        scales.add(float(np.median(b[:, 2] - b[:, 0])))
        for (x0, y0, x1, y1), m in zip(b.astype(int), masks):
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            # the mask lies on the nucleus, whatever the scale, flip or rotation: its mean colour is the
            # nucleus's, not the tissue's (edges of shrunk nuclei are blended by the resampling)
            mean = crop[m > 0].astype(float).mean(0)
            assert np.abs(mean - [90, 50, 140]).sum() < np.abs(mean - [230, 160, 200]).sum() / 2
    assert min(scales) <= 0.65 * max(scales)  # nuclei shrunk to 20x size in some crops, near full size in others


def test_hed_jitter_moves_stains_and_is_identity_at_rest():
    from wsinuclei import stain

    img, _ = synthetic_he(64, 64, seed=4)
    np.testing.assert_array_equal(stain.hed_jitter(img, [1, 1, 1], [0, 0, 0]), img)
    more_h = stain.hed_jitter(img, [1.3, 1, 1], [0, 0, 0])
    h0 = stain.color_deconvolution(img, stain.STAIN_MATRIX_HE).StainsFloat[..., 0].mean()
    h1 = stain.color_deconvolution(more_h, stain.STAIN_MATRIX_HE).StainsFloat[..., 0].mean()
    assert h1 < h0 - 3  # more hematoxylin: darker in the hematoxylin channel


def test_validation_scores_centre_annotations_by_their_centres():
    """A centre-only set is scored by pairing prediction centres with the points within 3 µm (6 px at
    0.5 µm/px): two predictions on their points and one 10 px away give precision 2/3, recall 1."""
    from wsinuclei.data import Tile
    from wsinuclei.train import score_predictions

    points = np.array([[20.0, 80.0], [150.0, 40.0]])
    tile = Tile("p", "crc", np.zeros((200, 200, 3), np.uint8), np.zeros((0, 4)), points=points, mpp=0.5)
    boxes = np.array([[15, 75, 25, 85], [146, 35, 156, 45], [60, 60, 70, 70.0]])
    v = score_predictions([tile], [(boxes, np.array([0.9, 0.9, 0.9]))], score_threshold=0.5)
    assert v["val_crc_recall"] == 1.0 and abs(v["val_crc_precision"] - 2 / 3) < 1e-12
    moved = boxes + [0, 10, 0, 10]  # 10 px off: beyond 6 px
    assert score_predictions([tile], [(moved, np.ones(3))], score_threshold=0.5)["val_crc_recall"] == 0.0


def test_glass_band_covers_one_side_and_drops_hidden_nuclei():
    from wsinuclei.annotations import label_image_boxes
    from wsinuclei.data import Augment, CropSampler, Tile

    img, lab = _labelled_he(seed=5, n_nuclei=40)
    tile = Tile("t", "x", img, label_image_boxes(lab)[0], lab, glass=(250, 240, 248))
    s = CropSampler([tile], 128, np.random.default_rng(3), augment=Augment(glass_p=1.0))
    for _ in range(10):
        crop, b, masks = s.sample_instances()
        glass = (np.abs(crop.astype(int) - [250, 240, 248]) <= 6).all(-1)
        # a band: whole rows or whole columns at one side, 10-60 % of the crop
        cols, rows = glass.all(axis=0), glass.all(axis=1)
        share = max(cols.mean(), rows.mean())
        assert 0.09 <= share <= 0.61
        assert not (masks.astype(bool) & glass[None]).any()  # no nucleus under the glass


def test_validation_read_at_20x_scales_images_boxes_and_the_centroid_radius():
    """`val_read_mpp`: a 40x validation image read at 0.5 µm/px is half the size with half-size boxes, in a set of
    its own, and its centroid pairing radius is 3 µm at 0.5 µm/px (6 px), not 12 px; sets already at 0.5 µm/px
    are not doubled."""
    from wsinuclei.data import Tile, as_read_at
    from wsinuclei.train import score_predictions

    tile = Tile("m", "monuseg", np.zeros((200, 120, 3), np.uint8), np.array([[20.0, 40.0, 40.0, 60.0]]))
    crc = Tile("c", "crc", np.zeros((50, 50, 3), np.uint8), np.zeros((0, 4)), points=np.array([[5.0, 5.0]]), mpp=0.5)
    (half,) = as_read_at([tile, crc], 0.5)
    assert half.set == "monuseg_0.5mpp" and half.mpp == 0.5 and half.image.shape == (100, 60, 3)
    assert half.boxes.tolist() == [[10, 20, 20, 30]] and tile.boxes.tolist() == [[20, 40, 40, 60]]
    # a prediction 8 px off the nucleus centre (box IoU 0.14): within 12 px, beyond 6 px at 0.5 µm/px
    pred = (np.array([[18.0, 20, 28, 30]]), np.array([0.9]))
    v = score_predictions([half], [pred], score_threshold=0.5)
    assert v["val_monuseg_0.5mpp_centroid_f1"] == 0.0
    v = score_predictions([Tile("m", "monuseg", half.image, half.boxes)], [pred], score_threshold=0.5)
    assert v["val_monuseg_centroid_f1"] == 1.0


def test_centre_discs_split_touching_centres_halfway_and_keep_their_radius():
    from wsinuclei.data import centre_discs

    labels = centre_discs(np.array([[20.5, 20.5], [28.5, 20.5], [60.2, 40.9]]), (50, 80), 5.0)
    assert labels[20, 20] == 1 and labels[20, 28] == 2 and labels[40, 60] == 3
    assert labels[20, 23] == 1 and labels[20, 25] == 2  # the two discs meet halfway (x = 24)
    assert labels[20, 14] == 0 and labels[20, 15] == 1  # 5 px from its centre still in, 6 px out
    assert labels[35, 60] == 3 and labels[34, 60] == 0
    assert (labels == 3).sum() == 81  # a whole disc of radius 5: 81 pixels
    assert not centre_discs(np.zeros((0, 2)), (10, 10), 3.0).any()


def test_a_centre_only_training_set_becomes_discs_at_the_models_resolution(tmp_path):
    """Centres of a 20x set (use = "train") are read on the model's 0.25 µm/px grid: the image upsampled 2x, each
    centre a 2.5-µm (10-px) disc around the pixel its point falls in, tiles marked ``centre_only``."""
    from wsinuclei.data import CENTRE_RADIUS_UM, load_recipe, load_tiles, prepare_sources

    pts = tmp_path / "c"
    pts.mkdir()
    img, _ = synthetic_he(100, 100, seed=3, n_nuclei=4)
    Image.fromarray(img).save(pts / "p0.png")
    (pts / "p0_points.csv").write_text("x,y\n10,20\n70,45\n")
    _labelled_folder(tmp_path / "a", 2)
    (tmp_path / "r.toml").write_text(
        '[[source]]\nname = "a"\npath = "a"\nkind = "labels"\nuse = "train"\n'
        '[[source]]\nname = "c"\npath = "c"\nkind = "points"\nmpp = 0.5\nuse = "train"\n')
    sources, _ = load_recipe(tmp_path / "r.toml")
    m = prepare_sources(sources, tmp_path / "prep", tile=256, progress=False)
    assert m["sets"]["c"]["train"] == ["p0"] and m["sets"]["c"]["nuclei"]["train"] == 2
    tiles = {t.set: t for t in load_tiles(tmp_path / "prep", "train")}
    c, a = tiles["c"], tiles["a"]
    assert c.centre_only and not a.centre_only
    assert c.image.shape == (200, 200, 3) and sorted(np.unique(c.labels)) == [0, 1, 2]
    assert c.labels[41, 21] == 1 and c.labels[91, 141] == 2  # (10, 20) -> pixel (21, 41); (70, 45) -> (141, 91)
    r = CENTRE_RADIUS_UM / 0.25
    assert (c.labels == 1).sum() == np.sum(np.hypot(*np.mgrid[-12:13, -12:13]) <= r)


def test_centre_only_sets_cannot_be_split():
    import pytest

    from wsinuclei.data import Source
    from wsinuclei.errors import WsinucleiError

    with pytest.raises(WsinucleiError, match="one side"):
        Source.from_dict({"name": "c", "path": "/x", "kind": "points", "use": "split"}, Path("."))
