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
