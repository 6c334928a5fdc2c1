"""morphology.py against the scipy.ndimage and scikit-image calls it stands for: equal arrays, not close ones."""

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu

from wsinuclei import morphology
from wsinuclei.tissue import DISK_2


def _masks():
    rng = np.random.default_rng(7)
    for density in (0.05, 0.3, 0.5, 0.7):
        yield rng.random((97, 131)) < density  # specks, networks and holes of every size
    # smoothed noise: blobs with holes, touching only diagonally in places
    blobs = ndimage.gaussian_filter(rng.random((160, 120)), 3) > 0.5
    yield blobs
    yield np.ones((12, 9), bool)
    yield np.zeros((12, 9), bool)
    diag = np.eye(40, dtype=bool)  # one component, 8-connected only
    yield diag | np.eye(40, dtype=bool)[::-1]
    yield np.ones((1, 50), bool)


def _drop_small_scipy(mask, min_size):
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


@pytest.mark.parametrize("min_size", [1, 2, 5, 16, 40, 400])
def test_drop_small_components_is_scipy_label(min_size):
    for mask in _masks():
        got = morphology.drop_small_components(mask, min_size)
        assert np.array_equal(got, _drop_small_scipy(mask, min_size)), (mask.shape, mask.mean(), min_size)


def test_drop_small_components_spiral():
    """A long winding component joins runs across many rows in both directions: the union-find must follow it."""
    m = np.zeros((41, 41), bool)
    top, left, bottom, right = 0, 0, 40, 40
    while top <= bottom and left <= right:  # a square spiral, walls two pixels apart
        m[top, left:right + 1] = True
        m[top:bottom + 1, right] = True
        if top + 2 <= bottom:
            m[bottom, left:right + 1] = True
        if left + 2 <= right:
            m[top + 2:bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    for size in (10, int(m.sum()), int(m.sum()) + 1):
        assert np.array_equal(morphology.drop_small_components(m, size), _drop_small_scipy(m, size))


def test_binary_morphology_is_scipy():
    for mask in _masks():
        assert np.array_equal(morphology.binary_closing(mask, DISK_2),
                              ndimage.binary_closing(mask, structure=DISK_2, border_value=0))
        assert np.array_equal(morphology.binary_dilation(mask, morphology.CROSS), ndimage.binary_dilation(mask))
        assert np.array_equal(morphology.binary_erosion(mask, DISK_2),
                              ndimage.binary_erosion(mask, structure=DISK_2, border_value=0))
        for reach in (1, 2, 7, 60):
            assert np.array_equal(morphology.dilate_square(mask, reach),
                                  ndimage.maximum_filter(mask, size=2 * reach + 1, mode="constant", cval=0))
    with pytest.raises(ValueError, match="symmetric"):
        morphology.binary_dilation(np.ones((4, 4), bool), np.array([[1, 1, 0]] * 3))


def test_filters_are_scipy():
    rng = np.random.default_rng(3)
    prob = rng.random((33, 47)).astype(np.float32)
    prob[5:8, 5:8] = 0.5  # plateaus: ties are kept as scipy keeps them
    assert np.array_equal(morphology.max_filter3(prob, -np.inf),
                          ndimage.maximum_filter(prob, size=3, mode="constant", cval=-np.inf))
    counts = rng.integers(0, 4, (29, 31))
    assert np.array_equal(morphology.sum3(counts), ndimage.convolve(counts, np.ones((3, 3), counts.dtype), mode="constant"))


def test_otsu_is_skimage():
    rng = np.random.default_rng(5)
    od_table = -np.log((np.arange(256) + 1) / 256.0)
    for _ in range(5):  # optical densities of two colour populations, as tissue_mask sees them
        rgb = np.where(rng.random((64, 80, 1)) < rng.random(), rng.integers(150, 256, (64, 80, 3)),
                       rng.integers(40, 200, (64, 80, 3)))
        od = od_table[rgb].sum(-1)
        assert morphology.otsu_threshold(od) == threshold_otsu(od)
    flat = np.full((5, 5), 0.7)
    assert morphology.otsu_threshold(flat) == threshold_otsu(flat) == 0.7


def test_whole_slide_run_does_not_import_scipy_ndimage():
    """The reason the module exists: the detect path (planning, tissue mask, colour statistics, the OpenVINO
    network's decoding, the thumbnail) imports no scipy.ndimage."""
    code = ("import sys; import wsinuclei.cli; from wsinuclei.pipeline import run, thumbnail; "
            "from wsinuclei.models import openvino_star; import wsinuclei.inference; "
            "print(sorted(m for m in ('scipy.ndimage', 'skimage.filters', 'skimage.measure') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
