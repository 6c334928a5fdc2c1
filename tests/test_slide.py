import numpy as np
import pytest
from PIL import Image

from wsinuclei.errors import WsinucleiError
from wsinuclei.slide import Slide
from conftest import SHARED_SVS, need, synthetic_he


def test_pyramid_tiff_metadata(pyramid_slide):
    path, img, _ = pyramid_slide
    s = Slide(path)
    assert s.dimensions == (2100, 1500)
    assert s.mpp == pytest.approx(0.25)
    assert len(s.level_dimensions) >= 3
    assert s.level_downsamples[1] == pytest.approx(2.0)


@pytest.mark.parametrize("target", [0.25, 0.5, 0.8, 1.0, 0.125])
def test_read_at_target_mpp(pyramid_slide, target):
    path, img, _ = pyramid_slide
    s = Slide(path)
    x, y, size = 400, 300, 128
    out = s.read_region(x, y, size, size, target)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    f = target / 0.25
    span = int(round(size * f))
    ref = np.array(Image.fromarray(img[y : y + span, x : x + span]).resize((size, size), Image.Resampling.BOX)).astype(float)
    # same place, same content: mean colour and structure agree (levels and resampling differ slightly)
    assert np.abs(out.mean(axis=(0, 1)) - ref.mean(axis=(0, 1))).max() < 6
    assert np.corrcoef(out.mean(-1).ravel(), ref.mean(-1).ravel())[0, 1] > 0.7


def test_level_choice_is_never_coarser_than_target(pyramid_slide):
    s = Slide(pyramid_slide[0])
    assert s.best_level(1.0) == 0
    assert s.best_level(1.99) == 0
    assert s.best_level(2.0) == 1
    assert s.best_level(3.5) == 1
    assert s.best_level(100) == len(s.level_dimensions) - 1


def test_exact_read_at_base_resolution(pyramid_slide):
    path, img, _ = pyramid_slide
    out = Slide(path).read_region(100, 200, 64, 32, 0.25)
    np.testing.assert_array_equal(out, img[200:232, 100:164])


def test_edges_pad_white(pyramid_slide):
    s = Slide(pyramid_slide[0])
    out = s.read_region(2050, 1450, 100, 100, 0.25)
    assert out.shape == (100, 100, 3)
    assert (out[60:, :] == 255).all() and (out[:, 60:] == 255).all()
    out = s.read_region(-500, -500, 64, 64, 1.0)
    assert (out == 255).all()


def test_plain_image_and_mpp_override(tmp_path):
    img, _ = synthetic_he(100, 120)
    p = tmp_path / "region.png"
    Image.fromarray(img).save(p)
    s = Slide(p)
    assert s.mpp is None
    with pytest.raises(WsinucleiError, match="--mpp"):
        s.require_mpp()
    s = Slide(p, mpp=0.5)
    assert s.mpp == 0.5 and s.mpp_source == "--mpp"
    np.testing.assert_array_equal(s.read_region(10, 10, 20, 20, 0.5), img[10:30, 10:30])
    assert s.read_region(0, 0, 100, 100, 0.25).shape == (100, 100, 3)


@need(SHARED_SVS)
def test_shared_svs_without_mpp():
    s = Slide(SHARED_SVS)
    assert s.dimensions == (4443, 3567) and len(s.level_dimensions) == 2
    assert s.mpp is None and s.format == "aperio"
    with pytest.raises(WsinucleiError, match="--mpp"):
        s.read_region(0, 0, 64, 64, 0.25)
    s = Slide(SHARED_SVS, mpp=0.25)
    for target in (0.25, 0.5, 1.0):
        out = s.read_region(1000, 1000, 256, 256, target)
        assert out.shape == (256, 256, 3) and out.std() > 5  # tissue, not padding


def test_region_reads_land_on_the_right_pixels_at_every_scale(pyramid_slide):
    """The read matches the image at its own place better than one or two pixels off, and at its own scale
    better than 10 % off: an offset or scale error cannot pass (a correlation floor alone let them)."""
    path, img, _ = pyramid_slide
    s = Slide(path)
    x, y, size = 400, 300, 96
    for target in (0.25, 0.5, 1.0):
        f = target / 0.25
        out = s.read_region(x, y, size, size, target).mean(-1)

        def ref(dx=0, dy=0, scale=1.0):
            span = int(round(size * f * scale))
            crop = img[y + dy : y + dy + span, x + dx : x + dx + span]
            return np.array(Image.fromarray(crop).resize((size, size), Image.Resampling.BOX)).mean(-1)

        def err(r):
            return np.abs(out - r).mean()

        right = err(ref())
        shift = 2 * int(f)
        assert right < 4
        for wrong in (ref(dx=shift), ref(dy=shift), ref(scale=1.1), ref(scale=0.9)):
            assert err(wrong) > right * 1.5


def test_partly_transparent_pixels_composite_over_white():
    """openslide-python gives non-premultiplied RGBA: rgb * a + 255 * (1 - a)."""
    from wsinuclei.slide import composite_on_white

    rgba = np.array([[[100, 50, 20, 255], [100, 50, 20, 128], [100, 50, 20, 0], [0, 0, 0, 64]]], np.uint8)
    out = composite_on_white(rgba)
    a = 128 / 255
    np.testing.assert_array_equal(out[0, 0], [100, 50, 20])
    np.testing.assert_array_equal(out[0, 1], np.round([100 * a + 255 * (1 - a), 50 * a + 255 * (1 - a),
                                                       20 * a + 255 * (1 - a)]))
    np.testing.assert_array_equal(out[0, 2], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 3], [191, 191, 191])


def test_non_square_pixels_are_refused_unless_mpp_is_given(pyramid_slide, monkeypatch):
    import openslide

    s = Slide(pyramid_slide[0])
    props = dict(s._osr.properties)
    props[openslide.PROPERTY_NAME_MPP_X], props[openslide.PROPERTY_NAME_MPP_Y] = "0.25", "0.30"

    class Fake:
        properties = props

    s._osr_real, s._osr = s._osr, Fake()
    s.mpp, s.mpp_source = s._file_mpp()
    s._osr = s._osr_real
    with pytest.raises(WsinucleiError, match="not square"):
        s.require_mpp()
    s.mpp, s.mpp_source = 0.25, "--mpp"
    assert s.require_mpp() == 0.25


def test_thumbnail_of_a_slide_without_pyramid_reads_in_bands(tmp_path, monkeypatch):
    """One 4,800 x 3,000 level and no pyramid: the thumbnail is built band by band (never the whole level at
    once) and equals the box average of the image."""
    from wsinuclei.synth import write_pyramid_tiff

    img, _ = synthetic_he(3000, 4800, seed=7, n_nuclei=5, tissue=(100, 100, 4000, 2800))
    path = tmp_path / "flat.tiff"
    write_pyramid_tiff(path, img, mpp=0.25, compression="zlib", min_level_size=100_000)
    s = Slide(path)
    assert len(s.level_dimensions) == 1
    reads = []
    real = Slide.read_level_region

    def spy(self, x, y, w, h, level):
        reads.append(w * h)
        return real(self, x, y, w, h, level)

    monkeypatch.setattr(Slide, "read_level_region", spy)
    monkeypatch.setattr(Slide, "BAND_PIXELS", 2_000_000)
    thumb, ds = s.thumbnail(max_side=600)
    assert max(reads) <= 2_000_000 and len(reads) > 5
    assert ds == 8 and thumb.shape == (375, 600, 3)
    ref = img.reshape(375, 8, 600, 8, 3).mean(axis=(1, 3))
    assert np.abs(thumb.astype(float) - ref).max() <= 1


def test_thumbnail_of_a_large_slide_is_no_finer_than_asked(pyramid_slide, tmp_path):
    """``min_mpp``: the 2,100-px test slide at 0.25 µm/px is larger than ``max_side`` 2,048, so it is reduced
    to 1 µm/px (525 px, downsample 4) rather than to 2,048 px; a slide within ``max_side`` stays its own
    thumbnail at any µm/px, and a slide without µm/px is only bounded by ``max_side``."""
    path, img, _ = pyramid_slide
    thumb, ds = Slide(path).thumbnail(min_mpp=1.0)
    assert thumb.shape == (375, 525, 3) and ds == pytest.approx(4.0)
    assert Slide(path).thumbnail()[0].shape[1] == 2048  # no floor: the old thumbnail
    assert Slide(path).thumbnail(max_side=4096, min_mpp=1.0)[0].shape == img.shape  # within max_side: itself
    Image.fromarray(img).save(tmp_path / "plain.png")
    assert Slide(tmp_path / "plain.png").thumbnail(min_mpp=1.0)[0].shape[1] == 2048  # no µm/px: max_side only


def test_opaque_pixels_composite_to_themselves():
    from wsinuclei.slide import composite_on_white

    rgba = np.random.default_rng(0).integers(0, 256, (20, 30, 4), np.uint8)
    rgba[..., 3] = 255
    np.testing.assert_array_equal(composite_on_white(rgba), rgba[..., :3])
    rgba[3, 4, 3] = 254  # one pixel not quite opaque: the blend, for that pixel only
    out = composite_on_white(rgba)
    assert (out != rgba[..., :3]).any(axis=-1).sum() <= 1
    np.testing.assert_array_equal(out[3, 4], np.round(rgba[3, 4, :3] * (254 / 255) + 255 * (1 / 255)))


def _held_reads_match(path, regions, mpp=None):
    plain, held = Slide(path, mpp=mpp), Slide(path, mpp=mpp)
    assert held.hold_base_level()

    def no_openslide(*args, **kwargs):
        raise AssertionError("a held base level was read from the file again")

    for x, y, size, mpp in regions:
        expected = plain.read_region(x, y, size, size, mpp)
        if held.best_level(mpp / held.mpp) == 0:
            real, held._osr.read_region = held._osr.read_region, no_openslide
            try:
                got = held.read_region(x, y, size, size, mpp)
            finally:
                held._osr.read_region = real
        else:  # a coarser level is read from the file as before
            got = held.read_region(x, y, size, size, mpp)
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(held.thumbnail()[0], plain.thumbnail()[0])
    held.close()
    assert held._image is None


def test_a_held_base_level_gives_the_pixels_the_file_gives(pyramid_slide):
    """Reads of a small slide served from its held base level: the same pixels as from the file (exact reads,
    upsampled and off-grid reads, regions over the edges), from memory; coarser levels still from the file; a
    level over the limit is not held."""
    rng = np.random.default_rng(3)
    regions = [(-40, -30, 96, 0.25), (2050, 1450, 100, 0.25), (10.5, 20.25, 64, 0.125), (1990, 7, 80, 0.125),
               (300, 200, 64, 1.0)]
    regions += [(float(rng.uniform(-50, 2100)), float(rng.uniform(-50, 1500)), int(rng.integers(8, 200)),
                 float(rng.choice([0.25, 0.125, 0.2]))) for _ in range(30)]
    _held_reads_match(pyramid_slide[0], regions)
    assert not Slide(pyramid_slide[0]).hold_base_level(max_pixels=2100 * 1500 - 1)


@need(SHARED_SVS)
def test_a_held_base_level_of_a_real_svs_gives_the_file_s_pixels():
    """The same on a real Aperio slide (JPEG 2000 tiles, two levels)."""
    rng = np.random.default_rng(4)
    regions = [(float(rng.uniform(-50, 4443)), float(rng.uniform(-50, 3567)), int(rng.integers(8, 300)),
                float(rng.choice([0.25, 0.125]))) for _ in range(20)]
    _held_reads_match(SHARED_SVS, regions + [(1000, 1000, 128, 1.0)], mpp=0.5)  # as a 20x slide read upsampled


def test_a_colour_map_is_applied_before_enlarging_and_after_shrinking(pyramid_slide):
    """``read_region(colour_map=f)``: f of the read, computed on the level's pixels when the read enlarges them
    (fewer pixels: an 8x8 region read at 0.125 µm/px is mapped on ~10x10 pixels, not 16x16), on the result when
    it shrinks them or reads them exactly; the same pixels as mapping after the read wherever f commutes with
    interpolation (here a constant shift of every channel)."""
    s = Slide(pyramid_slide[0])
    seen = []

    def darker(px):
        seen.append(px.shape[:2])
        return (px.astype(np.int16) - 40).clip(0, 255).astype(np.uint8)

    for mpp, size in ((0.125, 64), (0.25, 64), (0.4, 64)):
        seen.clear()
        plain = s.read_region(400, 300, size, size, mpp)
        mapped = s.read_region(400, 300, size, size, mpp, colour_map=darker)
        assert len(seen) == 1
        if mpp == 0.125:
            assert seen[0][0] * seen[0][1] < size * size / 2  # the 34x34 level pixels, not the 64x64 output
        else:
            assert seen[0] == (size, size)
        expected = darker(plain)
        if mpp == 0.125:  # interpolating after the shift: equal up to rounding where nothing clips at 0
            assert np.abs(mapped.astype(int) - expected.astype(int)).max() <= 1
        else:
            np.testing.assert_array_equal(mapped, expected)


def test_colour_map_mpp_is_where_read_region_applies_the_map(pyramid_slide):
    """The µm/px the colour map sees: the level's own where a read enlarges it, else the read's; the same rule
    read_region follows (the map sees level-sized pixels exactly when colour_map_mpp says the level's µm/px)."""
    s = Slide(pyramid_slide[0])
    for target, expected in ((0.125, 0.25), (0.2, 0.25), (0.25, 0.25), (0.4, 0.4), (1.0, 1.0)):
        assert s.colour_map_mpp(target) == pytest.approx(expected)
        seen = []
        s.read_region(300, 200, 64, 64, target, colour_map=lambda px: seen.append(px.shape[0]) or px)
        assert (seen[0] < 64) == (expected > target)


def test_a_plain_tiff_with_non_square_pixels_is_refused(tmp_path):
    import tifffile

    path = tmp_path / "rect.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), resolution=(40000, 20000),
                     resolutionunit="CENTIMETER")
    s = Slide(path)
    with pytest.raises(WsinucleiError, match="not square"):
        s.require_mpp()
    square = tmp_path / "square.tif"
    tifffile.imwrite(square, np.full((64, 64, 3), 200, np.uint8), resolution=(40000, 40000),
                     resolutionunit="CENTIMETER")
    assert Slide(square).require_mpp() == pytest.approx(0.25)


@pytest.mark.parametrize("mpp", [1e9, 1e-9, 0.0, float("nan"), 25.0])
def test_an_implausible_mpp_is_refused(tmp_path, mpp):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(path)
    with pytest.raises(WsinucleiError, match="--mpp must be from 0.05 to 20"):
        Slide(path, mpp=mpp)


def test_16_bit_grey_and_transparent_images_read_as_a_slide_would(tmp_path):
    grey = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(grey).save(tmp_path / "g16.png")
    img = Slide(tmp_path / "g16.png")._image
    assert img.shape == (64, 64, 3) and img[0, 0].tolist() == [0, 0, 0]
    assert img[-1, -1, 0] == round(65520 / 65535 * 255) and img[32, 0, 0] == round(32 * 64 * 16 / 65535 * 255)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (40, 20, 60)  # dark purple, but fully transparent: white, as OpenSlide composites it
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "t.png")
    img = Slide(tmp_path / "t.png")._image
    assert img[0, 0].tolist() == [40, 20, 60] and (img.reshape(-1, 3)[1:] == 255).all()
