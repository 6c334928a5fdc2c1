import numpy as np
import pytest

from wsinuclei.tissue import region_fraction, slide_tissue, tissue_mask
from conftest import synthetic_he


def test_tissue_mask_finds_tissue_not_glass():
    img, _ = synthetic_he(200, 300, tissue=(20, 30, 150, 180))
    img[5:8, 250:253] = (120, 80, 150)  # a speck of debris on the glass
    m = tissue_mask(img)
    assert m[100, 80] and not m[100, 250] and not m[6, 251]
    inside = m[30:180, 20:150].mean()
    outside = np.concatenate([m[:, 160:].ravel(), m[190:, :].ravel()]).mean()
    assert inside > 0.95 and outside < 0.01


def test_blank_image_has_no_tissue():
    assert not tissue_mask(np.full((64, 64, 3), 243, np.uint8)).any()


def test_region_fraction_area_weighted():
    m = np.zeros((10, 10), bool)
    m[:, :5] = True  # left half, mask pixels 4 base px wide
    assert region_fraction(m, 4.0, 0, 0, 40, 40) == 0.5
    assert region_fraction(m, 4.0, 0, 0, 20, 40) == 1.0
    assert region_fraction(m, 4.0, 18, 0, 22, 4) == 0.5  # straddles the edge of the tissue
    assert region_fraction(m, 4.0, 30, 0, 60, 40) == 0.0
    assert region_fraction(m, 4.0, -40, 0, 40, 40) == 0.25  # half outside the slide counts as glass


def test_the_closing_disc_is_skimage_s():
    from skimage.morphology import disk

    from wsinuclei.tissue import DISK_2

    np.testing.assert_array_equal(DISK_2, disk(2))


@pytest.mark.parametrize("ds", [5.0, 4.7, 200.0])
def test_detections_on_tissue_are_those_within_the_margin_of_a_tissue_pixel(ds):
    """``on_tissue`` keeps a box whose centre's thumbnail pixel lies within the margin of a tissue pixel, as a
    Euclidean distance transform of the mask says (its definition), on random blobs and random boxes; margins
    of 8, 8.5 and (at least) 1 mask pixels."""
    from scipy.ndimage import distance_transform_edt
    from skimage.draw import disk

    from wsinuclei.pipeline import on_tissue

    rng = np.random.default_rng(4)
    mask = np.zeros((300, 400), bool)
    for _ in range(6):
        r, c = disk(tuple(rng.integers(0, 300, 2)), int(rng.integers(5, 60)), shape=mask.shape)
        mask[r, c] = True
    xy = rng.uniform(-50, 420 * ds, (4000, 2))
    boxes = np.hstack([xy, xy + rng.uniform(2, 6 * ds, (4000, 2))])
    mpp = 0.5  # ds 5: 2.5 µm per mask pixel, the 20 µm margin is 8 mask pixels
    want_grown = distance_transform_edt(~mask) <= max(1.0, 20.0 / (ds * mpp))
    cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2 / ds).astype(int), 0, 399)
    cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2 / ds).astype(int), 0, 299)
    got = on_tissue(boxes, mask, ds, mpp)
    np.testing.assert_array_equal(got, want_grown[cy, cx])
    assert 0 < (got & ~mask[cy, cx]).sum() < (~mask[cy, cx]).sum()  # the margin keeps some, not all, off-mask boxes
    assert not on_tissue(boxes, np.zeros_like(mask), ds, mpp).any()


def test_the_thumbnail_s_tissue_outline_is_skimage_s_outer_boundary():
    """The green line: the glass pixels 4-adjacent to tissue, as ``find_boundaries(mode="outer")`` defines
    them, on random masks that touch the image's edges."""
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    from wsinuclei.pipeline.plan import SlidePlan

    rng = np.random.default_rng(5)
    for i in range(12):
        mask = ndimage.binary_opening(rng.random((120, 170)) < rng.uniform(0.3, 0.8), iterations=1 + i % 2)
        mask[0, : 40 * (i % 4)] = True
        outline = SlidePlan.tissue_outline.func(type("P", (), {"mask": mask})())
        np.testing.assert_array_equal(outline, find_boundaries(mask, mode="outer"))
        assert outline.any() and not (outline & mask).any()


class _ThumbnailOnly:
    """What slide_tissue reads of a slide: its thumbnail (with downsample) and µm/px."""

    def __init__(self, thumb, ds, mpp):
        self._thumb, self._ds, self.mpp = thumb, ds, mpp

    def thumbnail(self, min_mpp=None):
        return self._thumb, self._ds


def test_an_isolated_small_piece_of_a_large_slide_is_tissue_but_a_speck_is_not():
    # a 100,400 x 80,400 px slide at 0.25 µm/px: a 2048 px thumbnail at 12.25 µm/px, where a 250 µm core is
    # 20 x 20 px, under the share rule's 0.05 % of the thumbnail (1,680 px) but well over 0.01 mm² (67 px)
    rng = np.random.default_rng(0)
    thumb = np.clip(rng.normal(243, 2, (1640, 2048, 3)), 0, 255).astype(np.uint8)
    pink = np.array([200, 120, 170])
    thumb[800:820, 1000:1020] = pink  # a 250 µm core
    thumb[300:307, 400:407] = pink  # a 86 µm piece: 0.0074 mm², debris
    thumb[1500:1503, 100:103] = pink  # a 37 µm speck
    _, ds, mask = slide_tissue(_ThumbnailOnly(thumb, 49.0, 0.25))
    assert ds == 49.0
    assert mask[805:815, 1005:1015].all()
    assert not mask[300:307, 400:407].any() and not mask[1500:1503, 100:103].any()
    assert mask.sum() < 600  # the core alone
    # without a known µm/px only the share rule applies, and it drops the core
    assert not tissue_mask(thumb).any()
    assert not slide_tissue(_ThumbnailOnly(thumb, 49.0, None))[2].any()


def test_a_small_image_keeps_its_share_rule():
    # an annotated 1000 px image at 0.25 µm/px is its own thumbnail: 0.01 mm² would be 160,000 px there, so the
    # smaller share rule (500 px) still decides, as before µm/px was known
    img, _ = synthetic_he(1000, 1000, tissue=(100, 100, 900, 900))
    img[20:40, 950:970] = (200, 120, 170)  # 400 px of debris on the glass
    img[950:985, 20:55] = (200, 120, 170)  # 1,225 px: kept, over 0.05 % of the image
    m = tissue_mask(img, um_per_px=0.25)
    np.testing.assert_array_equal(m, tissue_mask(img))
    assert not m[20:40, 950:970].any() and m[955:980, 25:50].all()
