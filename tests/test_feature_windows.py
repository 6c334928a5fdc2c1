"""Features measured on the window that holds a tile's nuclei give the whole tile's values: Canny for a window
(``features/edges.py``) against scikit-image's on the whole image, the two-stain shortcut against the full colour
deconvolution, and ``tile_features`` against ``compute_nuclei_features`` on the whole tile."""

import numpy as np
import pytest
from skimage.feature import canny as skimage_canny

from conftest import MONUSEG, need, synthetic_he
from wsinuclei import stain
from wsinuclei.features import DEFAULT_FAMILIES, FAMILIES, compute_nuclei_features
from wsinuclei.features import edges as edges_module
from wsinuclei.features.edges import canny_window, reach_box
from wsinuclei.features.tiles import label_image, tile_features


@pytest.fixture
def whole_image_calls(monkeypatch):
    """Counts canny_window's falls back to the whole image."""
    calls = []
    real = edges_module.canny

    def counting(image):
        calls.append(image.shape)
        return real(image)

    monkeypatch.setattr(edges_module, "canny", counting)
    return calls


def window_of_whole(image, rows, cols):
    """canny_window as the features call it: the window's reach, and the whole image on request."""
    return canny_window(image[reach_box(rows, cols, image.shape)], rows, cols, image.shape, lambda: image)


def stain_channels(rgb):
    s = stain.color_deconvolution(rgb, stain.STAIN_MATRIX_HE).Stains
    return s[..., 0].astype(float), s[..., 1].astype(float)


def random_windows(shape, rng, n):
    h, w = shape
    out = [(0, h, 0, w), (0, 40, 0, 40), (h - 30, h, w - 50, w), (3, h - 3, 5, w - 2)]  # whole, corners, near-edges
    for _ in range(n):
        r0, r1 = sorted(rng.integers(0, h, 2))
        c0, c1 = sorted(rng.integers(0, w, 2))
        out.append((int(r0), int(r1) + 1, int(c0), int(c1) + 1))
    return out


def test_canny_window_equals_skimage_on_synthetic_stains(whole_image_calls):
    rgb, _ = synthetic_he(300, 360, seed=3, n_nuclei=60, tissue=(20, 10, 330, 280))
    rng = np.random.default_rng(0)
    for image in stain_channels(rgb):
        full = skimage_canny(image)
        assert full.sum() > 500  # the nuclei's outlines are there to find
        for r0, r1, c0, c1 in random_windows(image.shape, rng, 25):
            rows, cols = slice(r0, r1), slice(c0, c1)
            np.testing.assert_array_equal(window_of_whole(image, rows, cols), full[r0:r1, c0:c1])


@need(MONUSEG / "train")
def test_canny_window_equals_skimage_on_real_stains(whole_image_calls):
    from PIL import Image

    path = sorted((MONUSEG / "train").glob("*.png"))[0]
    if path.stem.endswith("_labels"):
        path = next(p for p in sorted((MONUSEG / "train").glob("*.png")) if not p.stem.endswith("_labels"))
    rgb = np.array(Image.open(path).convert("RGB"))[:600, :600]
    rng = np.random.default_rng(1)
    windows = 0
    for image in stain_channels(rgb):
        full = skimage_canny(image)
        for r0, r1, c0, c1 in random_windows(image.shape, rng, 20):
            np.testing.assert_array_equal(window_of_whole(image, slice(r0, r1), slice(c0, c1)), full[r0:r1, c0:c1])
            windows += 1
    assert len(whole_image_calls) < windows / 4  # the window's reach nearly always decides


@pytest.mark.parametrize("strong_below, expected", [(0.1, True), (None, False)])
def test_a_weak_chain_decided_outside_the_window_asks_the_whole_image(whole_image_calls, strong_below, expected):
    # a faint vertical step: weak edge pixels only (magnitude between the thresholds) from top to bottom; below
    # the window a stronger step makes the chain's fate "kept" -- visible only from the whole image
    image = np.zeros((60, 60))
    image[:, 30:] = 0.05
    if strong_below is not None:
        image[45:, 30:] = strong_below
    full = skimage_canny(image)
    got = window_of_whole(image, slice(5, 20), slice(20, 40))
    np.testing.assert_array_equal(got, full[5:20, 20:40])
    assert got.any() == expected
    assert len(whole_image_calls) == 1


def test_stain_images_equal_the_full_deconvolution():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    rgb[0, :3] = [[0, 0, 0], [255, 255, 255], [255, 0, 128]]
    full = stain.color_deconvolution(rgb, stain.STAIN_MATRIX_HE).Stains
    np.testing.assert_array_equal(stain.stain_images(rgb, stain.STAIN_MATRIX_HE), full[..., :2])
    np.testing.assert_array_equal(stain.stain_images(rgb, stain.STAIN_MATRIX_HE, (2,)), full[..., 2:])
    as_float = rgb.astype(np.float64)  # not uint8: the plain path
    np.testing.assert_array_equal(stain.stain_images(as_float, stain.STAIN_MATRIX_HE, (1,)), full[..., 1:2])


def ellipse_outlines(boxes, k=24):
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    rx, ry = (boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2
    return np.stack([cx[:, None] + rx[:, None] * np.cos(t), cy[:, None] + ry[:, None] * np.sin(t)], axis=-1)


@pytest.mark.parametrize("families", [DEFAULT_FAMILIES, FAMILIES])
@pytest.mark.parametrize("tissue", [(0, 0, 170, 130), (150, 120, 330, 300), (0, 0, 360, 320)])
def test_tile_features_on_a_window_equal_the_whole_tile(families, tissue):
    """Nuclei in a corner (the window touches two image edges and has two cuts), in the middle (four cuts) and
    everywhere (no cut): every column equals compute_nuclei_features on the whole tile."""
    rgb, boxes = synthetic_he(320, 360, seed=5, n_nuclei=25, tissue=tissue)
    outlines = ellipse_outlines(boxes)
    scores = np.linspace(0.3, 0.99, len(boxes))
    owned = np.arange(len(boxes))[::2]  # some nuclei belong to the next tile: painted, not reported
    got = tile_features(rgb, boxes, scores, outlines, owned, 0.5, 0.25, lambda x, y: (x + 1000, y + 2000), families)

    order = np.flatnonzero(scores >= 0.5)  # scores rise with the index: this is the painting order
    labels = label_image(rgb.shape[:2], boxes, outlines, order)
    nuclei, cytoplasm = stain_channels(rgb)
    ref = compute_nuclei_features(labels, nuclei, cytoplasm, families=families)
    # nucleus -> reference row (a nucleus wholly painted over by a higher score has none, and no values)
    row = {int(order[int(v) - 1]): k for k, v in enumerate(ref["Identifier.Label"])}
    measured = [i for i in owned if i in row]
    assert 3 <= len(measured) < len(owned)
    for name, values in ref.items():
        if name == "Identifier.Label":
            continue
        expected = values[[row[i] for i in measured]]
        if name in ("Identifier.Xmin", "Identifier.Xmax", "Identifier.CentroidX", "Identifier.WeightedCentroidX"):
            expected = expected + 1000
        if name in ("Identifier.Ymin", "Identifier.Ymax", "Identifier.CentroidY", "Identifier.WeightedCentroidY"):
            expected = expected + 2000
        pick = np.isin(owned, measured)
        np.testing.assert_allclose(got[name][pick], expected.astype(np.float32), rtol=1e-6, err_msg=name)
        assert np.isnan(got[name][~pick]).all()  # under the cut: no values
    assert got["Nucleus.Gradient.Canny.Sum"][np.isin(owned, measured)].sum() > 0


def test_sda_to_uint8_is_the_formula_at_every_bucket_edge_and_on_every_colour():
    """The bucketed conversion against the formula it replaces: each bucket's two ends and the doubles beside
    them (where a truncation could change), values outside the table's range, and all 2^24 colours through
    ``stain_images`` against the full deconvolution."""
    def formula(d):
        with np.errstate(over="ignore"):  # -1e9 is beyond float64's power: inf, clipped to 255 as the table says
            return stain.sda_to_rgb(d).clip(0, 255).astype(np.uint8)

    n = int(stain._BUCKET_END * stain._BUCKETS_PER_UNIT)
    edges = np.arange(n + 1) / stain._BUCKETS_PER_UNIT
    d = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf),
                        np.random.default_rng(0).uniform(-80, 400, 200_000), [-1e9, -0.0, 0.0, 223.125, 1e9]])
    np.testing.assert_array_equal(stain.sda_to_uint8(d), formula(d))
    assert (stain._bucket_table() == 256).mean() < 0.01  # the formula is the exception, not the rule
    colours = np.arange(1 << 24, dtype=np.uint32)
    for start in range(0, 1 << 24, 1 << 22):
        c = colours[start:start + (1 << 22)]
        rgb = np.stack([(c >> 16) & 255, (c >> 8) & 255, c & 255], -1).astype(np.uint8)[None]
        want = stain.color_deconvolution(rgb, stain.STAIN_MATRIX_HE).Stains
        np.testing.assert_array_equal(stain.stain_images(rgb, stain.STAIN_MATRIX_HE, (0, 1, 2)), want)


@pytest.mark.parametrize("shape", [(1, 1), (5, 40), (9, 9), (10, 10), (37, 23), (200, 3)])
def test_the_bleed_over_division_equals_dividing_by_the_whole_divisor(shape):
    from scipy import ndimage as ndi

    from wsinuclei.features import edges

    image = np.random.default_rng(1).uniform(0, 255, shape)
    want = image / edges._bleed_over(shape)
    got = image.copy()
    edges._divide_by_bleed_over(got)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(edges._bleed_over(shape), ndi.gaussian_filter(np.ones(shape), **edges._GAUSS)
                                  + np.finfo(np.float64).eps)
