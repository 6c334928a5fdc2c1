import numpy as np

from wsinuclei.tissue import region_fraction, tissue_mask
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
