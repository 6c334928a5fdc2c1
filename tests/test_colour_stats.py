"""Reinhard source statistics on whole slides: sampled at the model's µm/px, they equal the full-resolution
statistics of the tissue, however small the thumbnail is next to the slide."""

import json

import numpy as np
import pytest

from wsinuclei import stain
from wsinuclei.colour_stats import sample_tissue_points, tissue_lab_stats
from wsinuclei.slide import Slide
from wsinuclei.tissue import tissue_mask
from conftest import MONUSEG, need, synthetic_he


def _full_res_tissue_stats(slide: Slide, mask: np.ndarray, ds: float):
    W, H = slide.dimensions
    full = slide.read_level_region(0, 0, W, H, 0)
    rows = np.clip(((np.arange(H) + 0.5) / ds).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip(((np.arange(W) + 0.5) / ds).astype(int), 0, mask.shape[1] - 1)
    return stain.lab_mean_std(full[mask[rows][:, cols]].reshape(-1, 1, 3))


@need(MONUSEG)
def test_large_slide_statistics_equal_full_resolution_tissue_statistics(tmp_path):
    """16 real images on glass; the tissue mask comes from a thumbnail at 1/32 scale (a 40x slide's 2,048-px
    thumbnail is at 1/30-1/50). The sampled statistics match the full-resolution tissue within 3 % of σ;
    the thumbnail's own pixels (the old definition) are off by 20-37 % in σ."""
    from wsinuclei.synth import build_slide

    build_slide(MONUSEG / "train", tmp_path / "big.tiff", grid=(4, 4), gap=300, margin=400, compression="zlib")
    slide = Slide(tmp_path / "big.tiff")
    W, H = slide.dimensions
    thumb, ds = slide.thumbnail(max_side=int(np.ceil(max(W, H) / 32)))
    assert ds >= 31.5
    mask = tissue_mask(thumb)
    ref_mu, ref_sd = _full_res_tissue_stats(slide, mask, ds)

    got = tissue_lab_stats(slide, mask, ds, 0.25)
    assert np.all(np.abs(got.mean - ref_mu) <= 0.03 * ref_sd), (got.mean, ref_mu)
    assert np.all(np.abs(got.std / ref_sd - 1) <= 0.03), (got.std, ref_sd)
    assert got.pixels > 1_000_000

    _, thumb_sd = stain.lab_mean_std(thumb[mask].reshape(-1, 1, 3))
    assert np.all(thumb_sd / ref_sd < 0.85)  # what the thumbnail gave: far too little spread

    again = tissue_lab_stats(slide, mask, ds, 0.25)  # seeded: the same numbers every time
    np.testing.assert_array_equal(again.mean, got.mean)
    np.testing.assert_array_equal(again.std, got.std)


def test_only_tissue_pixels_count(tmp_path):
    """Half tissue, half glass: the statistics are those of the tissue half alone (every tissue pixel of a
    small image is read, so they agree to float precision)."""
    img, _ = synthetic_he(120, 120, tissue=(0, 0, 60, 120), n_nuclei=10)
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "half.png")
    mask = np.zeros((120, 120), bool)
    mask[:, :60] = True
    got = tissue_lab_stats(Slide(tmp_path / "half.png", mpp=0.25), mask, 1.0, 0.25, patches=4000, patch_size=8)
    mu, sd = stain.lab_mean_std(img[:, :60])
    np.testing.assert_allclose(got.mean, mu, rtol=0, atol=0.02 * sd.max())
    glass_mu, _ = stain.lab_mean_std(img)
    assert np.abs(got.mean - glass_mu).max() > 5 * np.abs(got.mean - mu).max()


def test_points_are_spread_over_every_part_of_the_tissue():
    """Stratified: two equal tissue blocks get the same number of points (±1), for any seed."""
    mask = np.zeros((50, 100), bool)
    mask[10:20, 5:15] = True
    mask[30:40, 80:90] = True
    for seed in range(5):
        pts = sample_tissue_points(mask, 4.0, 300, np.random.default_rng(seed))
        left = (pts[:, 0] < 200).sum()
        assert abs(left - 150) <= 1
        cols, rows = (pts[:, 0] // 4).astype(int), (pts[:, 1] // 4).astype(int)
        assert mask[rows, cols].all()


def test_run_json_records_the_statistics(tmp_path, pyramid_slide, random_model):
    from wsinuclei.pipeline import RunOptions, run_slide

    path, img, _ = pyramid_slide
    run_slide(path, tmp_path, RunOptions(model=str(random_model), progress=False, tile_size=512), log=lambda *_: None)
    rec = json.loads((tmp_path / "synthetic.run.json").read_text())["reinhard_source"]
    assert rec["definition"] == "tissue-patches-v1" and rec["mpp"] == 0.25 and rec["pixels"] > 100_000
    tissue_mu, tissue_sd = stain.lab_mean_std(img[50:1450, 50:1400])
    np.testing.assert_allclose(rec["mean"], tissue_mu, atol=0.05 * tissue_sd.max())


def test_a_slide_read_enlarged_takes_its_statistics_on_its_own_pixels(tmp_path, pyramid_slide, random_model):
    """A slide at 0.5 µm/px read by a 0.25 µm/px model is normalised on its own pixels before they are
    enlarged, so its statistics are taken there too (0.5 µm/px, the same numbers as tissue_lab_stats at 0.5);
    a slide read at its own resolution keeps the model's."""
    from wsinuclei.colour_stats import slide_tissue_stats
    from wsinuclei.pipeline import RunOptions, run_slide

    path = pyramid_slide[0]
    run_slide(path, tmp_path, RunOptions(model=str(random_model), mpp=0.5, progress=False, tile_size=512,
                                         roi=(0, 0, 600, 600)), log=lambda *_: None)
    rec = json.loads((tmp_path / "synthetic.run.json").read_text())
    assert rec["read_mpp"] == 0.25 and rec["reinhard_source"]["mpp"] == 0.5
    own = slide_tissue_stats(Slide(path, mpp=0.5), 0.5)
    assert rec["reinhard_source"]["mean"] == [float(v) for v in own.mean]
    assert rec["reinhard_source"]["std"] == [float(v) for v in own.std]


def test_patches_from_a_held_base_level_give_the_same_statistics(pyramid_slide):
    """Read at the base resolution from a held level, the 2,048 patches are cut all at once; the statistics
    are those of one read per patch, to the last bit (same pixels, same order), also for patches over the
    slide's edge; read at another resolution, the patches are read one by one as before."""
    from wsinuclei.colour_stats import slide_tissue_stats
    from wsinuclei.slide import Slide

    path = pyramid_slide[0]
    for mpp in (0.25, 0.4):
        plain, held = Slide(path), Slide(path)
        assert held.hold_base_level()
        a, b = slide_tissue_stats(plain, mpp, patch_size=48), slide_tissue_stats(held, mpp, patch_size=48)
        assert a.pixels == b.pixels > 0
        assert a.mean.tolist() == b.mean.tolist() and a.std.tolist() == b.std.tolist()
    # a mask that is all tissue: patch centres everywhere, many patches over the slide's edges
    plain, held = Slide(path), Slide(path)
    held.hold_base_level()
    everywhere = np.ones((30, 42), bool)  # 50 base pixels per mask pixel
    a, b = tissue_lab_stats(plain, everywhere, 50.0, 0.25), tissue_lab_stats(held, everywhere, 50.0, 0.25)
    assert a.pixels == b.pixels and a.mean.tolist() == b.mean.tolist() and a.std.tolist() == b.std.tolist()
