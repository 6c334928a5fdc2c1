import numpy as np
import pytest

from wsinuclei import stain
from conftest import REFERENCE, need, synthetic_he


@pytest.fixture(scope="module")
def ref():
    return np.load(REFERENCE)


@need(REFERENCE)
@pytest.mark.parametrize("i", [0, 1])
def test_lab_matches_histomicstk(ref, i):
    lab = stain.rgb_to_lab(ref[f"image{i}"])
    np.testing.assert_allclose(lab, ref[f"lab{i}"], rtol=1e-6, atol=1e-9)
    mu, sd = stain.lab_mean_std(ref[f"image{i}"])
    np.testing.assert_allclose(mu, ref[f"lab_mean{i}"], rtol=1e-6)
    np.testing.assert_allclose(sd, ref[f"lab_std{i}"], rtol=1e-6)


def test_lab_mean_std_from_rgb_equals_the_per_pixel_statistics():
    """From RGB the statistics come from log LMS's mean and covariance; they equal the mean and σ of every
    pixel's lαβ (black pixels, whose log is clamped, and a mask included)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    img[:5] = 0
    mask_out = rng.random((300, 200)) < 0.3
    for mask in (None, mask_out):
        lab = stain.rgb_to_lab(img).reshape(-1, 3)
        if mask is not None:
            lab = lab[~mask.ravel()]
        mu, sd = stain.lab_mean_std(img, mask_out=mask)
        np.testing.assert_allclose(mu, lab.mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sd, lab.std(axis=0), rtol=1e-10)
        assert not np.allclose(sd, lab.std(axis=0, ddof=1), rtol=1e-10, atol=0)  # population σ, as HistomicsTK
    with pytest.raises(ValueError, match="masked out"):
        stain.lab_mean_std(img, mask_out=np.ones((300, 200), bool))


@need(REFERENCE)
@pytest.mark.parametrize("i", [0, 1])
def test_reinhard_matches_histomicstk(ref, i):
    out = stain.reinhard(ref[f"image{i}"], ref["target_mu"], ref["target_sigma"])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, ref[f"reinhard{i}"])  # exact: the same arithmetic and truncation


@need(REFERENCE)
@pytest.mark.parametrize("i", [0, 1])
def test_color_deconvolution_matches_histomicstk(ref, i):
    stains, stains_float, wc = stain.color_deconvolution(ref[f"image{i}"], ref["stain_matrix_he"])
    np.testing.assert_array_equal(stains, ref[f"stains{i}"])
    # the features' two-stain shortcut (a table of optical densities) gives the same stains
    np.testing.assert_array_equal(stain.stain_images(ref[f"image{i}"], ref["stain_matrix_he"]), ref[f"stains{i}"][..., :2])
    np.testing.assert_allclose(stains_float, ref[f"stains_float{i}"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(wc, ref[f"stain_matrix_completed{i}"], rtol=1e-6)


def test_lab_round_trip():
    img, _ = synthetic_he(64, 64)
    back = stain.lab_to_rgb(stain.rgb_to_lab(img))
    np.testing.assert_allclose(back, img, atol=1e-6)


def test_complement_is_unit_cross_product():
    w = stain.complement_stain_matrix(stain.STAIN_MATRIX_HE)
    h, e = np.array(stain.STAIN_COLOR_MAP["hematoxylin"]), np.array(stain.STAIN_COLOR_MAP["eosin"])
    expected = np.cross(h, e) / np.linalg.norm(np.cross(h, e))
    np.testing.assert_allclose(w[:, 2], expected)
    np.testing.assert_allclose(w[:, :2], stain.STAIN_MATRIX_HE[:, :2])


def test_deconvolution_separates_pure_hematoxylin():
    # a pixel made of hematoxylin alone (Beer-Lambert) shows up in the H channel only
    od = 0.8 * np.array(stain.STAIN_COLOR_MAP["hematoxylin"]) / np.linalg.norm(stain.STAIN_COLOR_MAP["hematoxylin"])
    rgb = (256 * np.exp(-od * np.log(256) / 255 * 255) - 1).clip(0, 255)
    img = np.tile(rgb.round().astype(np.uint8), (4, 4, 1))
    stains = stain.color_deconvolution(img, stain.STAIN_MATRIX_HE).StainsFloat
    assert stains[..., 0].mean() < 200  # hematoxylin present
    assert stains[..., 1].mean() > 240 and stains[..., 2].mean() > 240  # eosin, residual ~ none


def test_reinhard_matches_target_statistics():
    img, _ = synthetic_he(128, 128, seed=3)
    out = stain.reinhard(img, stain.DEFAULT_TARGET_MU, stain.DEFAULT_TARGET_SIGMA)
    mu, sd = stain.lab_mean_std(out)
    np.testing.assert_allclose(mu, stain.DEFAULT_TARGET_MU, atol=0.05)
    np.testing.assert_allclose(sd, stain.DEFAULT_TARGET_SIGMA, rtol=0.15)


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (255, 0, 0), (240, 240, 240)])
def test_reinhard_of_blank_or_saturated_tile_is_finite_and_uniform(colour):
    """σ = 0 gave NaN and an all-black tile; with the floor a uniform tile stays uniform (mapped to the
    target's mean where it is the source mean itself)."""
    img = np.full((16, 16, 3), colour, np.uint8)
    with np.errstate(all="raise"):
        out = stain.reinhard(img, stain.DEFAULT_TARGET_MU, stain.DEFAULT_TARGET_SIGMA)
    assert (out == out[0, 0]).all()
    expected = np.clip(stain.lab_to_rgb(np.array(stain.DEFAULT_TARGET_MU)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[0, 0], expected)


def test_reinhard_does_not_stretch_the_noise_of_a_near_uniform_tile():
    rng = np.random.default_rng(0)
    img = np.clip(235 + rng.normal(0, 0.6, (64, 64, 3)), 0, 255).astype(np.uint8)
    out = stain.reinhard(img, stain.DEFAULT_TARGET_MU, stain.DEFAULT_TARGET_SIGMA)
    assert out.astype(float).std(axis=(0, 1)).max() < 40  # without the floor: noise spread over ~0-255


def test_reinhard_uses_given_slide_statistics_not_the_tile():
    img, _ = synthetic_he(64, 64, seed=4)
    mu, sd = stain.lab_mean_std(img)
    a = stain.reinhard(img, stain.DEFAULT_TARGET_MU, stain.DEFAULT_TARGET_SIGMA, mu, sd)
    b = stain.reinhard(img, stain.DEFAULT_TARGET_MU, stain.DEFAULT_TARGET_SIGMA, mu + 0.2, sd)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_reinhard_table_is_exactly_reinhard():
    """The per-colour table the pipeline uses gives reinhard()'s output, bit for bit, on first and later use."""
    rng = np.random.default_rng(5)
    args = (stain.DEFAULT_TARGET_MU, stain.DEFAULT_TARGET_SIGMA, [8.4, -0.12, 0.035], [0.61, 0.09, 0.016])
    table = stain.ReinhardTable(*args)
    for k in range(3):
        img = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
        img[:40] = img[:40] // 8 * 8  # repeated colours, some seen in earlier images
        np.testing.assert_array_equal(table(img), stain.reinhard(img, *args))
        np.testing.assert_array_equal(table(img), stain.reinhard(img, *args))  # now from the table
    assert (table.table != table.UNKNOWN).sum() > 1000
    # a tile with more new colours than the sorting path takes (an upsampled tile's interpolated colours)
    big = rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)
    np.testing.assert_array_equal(table(big), stain.reinhard(big, *args))


def test_reinhard_table_shared_by_threads():
    """Reader threads share one table; each has its own scratch for finding new colours, so tiles full of new
    colours, converted at the same time, still come out as reinhard() gives them."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    args = (stain.DEFAULT_TARGET_MU, stain.DEFAULT_TARGET_SIGMA, [8.4, -0.12, 0.035], [0.61, 0.09, 0.016])
    table = stain.ReinhardTable(*args)
    tiles = [rng.integers(0, 256, (360, 360, 3), dtype=np.uint8) for _ in range(6)]
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(table, tiles))
    for tile, out in zip(tiles, outs):
        np.testing.assert_array_equal(out, stain.reinhard(tile, *args))
