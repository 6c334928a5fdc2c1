"""All polygons painted at once against ``skimage.draw.polygon`` painted one by one: random stars (the shape
of a star-convex contour), self-crossing polygons, vertices on pixel centres and half pixels (where a pixel
lies exactly on an edge or a vertex), zero-width boxes with a repeated vertex, and polygons partly or wholly
outside the image."""

import numpy as np
import pytest
from skimage.draw import polygon

from wsinuclei.raster import fill_polygons


def _polygon(rng, kind, h, w):
    if kind == "star":
        ang = np.linspace(0, 2 * np.pi, int(rng.integers(3, 40)), endpoint=False)
        d = rng.uniform(0.5, 15, len(ang))
        cy, cx = rng.uniform(-10, h + 10), rng.uniform(-10, w + 10)
        return cy + d * np.sin(ang), cx + d * np.cos(ang)
    if kind == "crossing":
        v = int(rng.integers(3, 12))
        return rng.uniform(-5, h + 5, v), rng.uniform(-5, w + 5, v)
    if kind == "half_pixels":
        v = int(rng.integers(3, 12))
        return np.round(rng.uniform(-3, h + 3, v) * 2) / 2, np.round(rng.uniform(-3, w + 3, v) * 2) / 2
    r0, c0 = int(rng.integers(-3, h)), int(rng.integers(-3, w))
    r1, c1 = r0 + int(rng.integers(0, 10)), c0 + int(rng.integers(0, 10))  # may be a line or a point
    return np.array([r0, r0, r1, r1, r0], float), np.array([c0, c1, c1, c0, c0], float)


@pytest.mark.parametrize("kind", ["star", "crossing", "half_pixels", "box"])
def test_every_pixel_is_scikit_images(kind):
    rng = np.random.default_rng(["star", "crossing", "half_pixels", "box"].index(kind))
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(4, 60, 2))
        polys = [_polygon(rng, kind, h, w) for _ in range(int(rng.integers(1, 8)))]
        expected = np.zeros((h, w), np.int32)
        for k, (r, c) in enumerate(polys, 1):
            rr, cc = polygon(r, c, (h, w))
            expected[rr, cc] = k  # the later polygon wins
        got = fill_polygons([p[0] for p in polys], [p[1] for p in polys], (h, w))
        assert np.array_equal(got, expected), (kind, h, w)


def test_values_and_an_array_of_polygons():
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    rows = np.stack([10 + 6 * np.sin(ang), 12 + 6 * np.sin(ang)])
    cols = np.stack([10 + 6 * np.cos(ang), 13 + 6 * np.cos(ang)])
    got = fill_polygons(rows, cols, (30, 30), values=[7, 3])
    assert set(np.unique(got)) == {0, 3, 7}
    assert got[12, 13] == 3 and got[10, 6] == 7  # the overlap goes to the second
    assert fill_polygons([], [], (5, 5)).sum() == 0
