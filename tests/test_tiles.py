import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from wsinuclei.tiles import TileGrid


def _in_core(t, x, y):
    x0, y0, x1, y1 = t.core
    return x0 <= x < x1 and y0 <= y < y1


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 5000), h=st.integers(1, 5000), tile=st.integers(64, 1024), frac=st.floats(0, 0.5),
       scale=st.sampled_from([0.5, 1.0, 1.996, 2.0]), pts=st.lists(st.tuples(st.floats(-100, 6000), st.floats(-100, 6000)), min_size=1, max_size=30))
def test_cores_partition_the_plane(w, h, tile, frac, scale, pts):
    overlap = int(tile * frac)
    g = TileGrid(w, h, scale, tile, overlap)
    tiles = list(g)
    for x, y in pts:
        owners = [t for t in tiles if _in_core(t, x, y)]
        assert len(owners) == 1
        col, row = g.owner(x, y)
        assert (int(col), int(row)) == (owners[0].col, owners[0].row)


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 6000), h=st.integers(1, 6000), tile=st.integers(64, 1024), frac=st.floats(0, 0.5),
       scale=st.sampled_from([0.5, 1.0, 2.0]))
def test_tiles_cover_the_area_and_cores_keep_half_the_overlap(w, h, tile, frac, scale):
    overlap = int(tile * frac)
    g = TileGrid(w, h, scale, tile, overlap)
    last = g.tile_at(g.cols - 1, g.rows - 1)
    assert last.x + tile * scale >= w - 1e-6 and last.y + tile * scale >= h - 1e-6
    for t in g:
        x0, y0, x1, y1 = t.core
        if math.isfinite(x0):
            assert x0 - t.x >= overlap / 2 * scale - 1e-6
        if math.isfinite(x1):
            assert t.x + tile * scale - x1 >= overlap / 2 * scale - 1e-6


def test_exhaustive_small_grid():
    g = TileGrid(50, 37, 1.0, 16, 6, origin=(3, 4))
    tiles = list(g)
    ys, xs = np.mgrid[-2:45:0.5, -2:58:0.5]
    counts = np.zeros(xs.shape, int)
    for t in tiles:
        x0, y0, x1, y1 = t.core
        counts += (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    assert (counts == 1).all()
    assert g.cols == math.ceil((50 - 6) / 10) and g.rows == math.ceil((37 - 6) / 10)


def test_tile_shape_fits_small_images_and_thin_areas():
    """White padding changes what a GroupNorm detector sees: a tile shrinks to the area's side (rounded up to
    32 px) where the area is narrower, never below overlap + 32 or 64, and large areas keep the asked size."""
    from wsinuclei.pipeline import fitted_tile_shape

    assert fitted_tile_shape(1024, 64, 512, 512) == (512, 512)
    assert fitted_tile_shape(1024, 64, 1000, 1000) == (1024, 1024)  # MoNuSeg images: unchanged
    assert fitted_tile_shape(1024, 64, 20000, 300) == (1024, 320)  # a thin strip: long tiles, not 320-px squares
    assert fitted_tile_shape(1024, 64, 256, 256) == (256, 256)
    assert fitted_tile_shape(1024, 64, 40, 40) == (96, 96)


def test_tile_shape_spreads_the_same_tile_count_over_the_area():
    """Along each axis: as many tiles as the asked size needs, each as short as still covers the area, so
    the last row or column is not mostly beyond the slide (CMU-1-Small-Region read at 0.25 µm/px)."""
    from wsinuclei.pipeline import fitted_tile_shape

    w, h = fitted_tile_shape(1024, 64, 4431.1, 5922.1)
    assert (w, h) == (960, 928)
    big, fitted = TileGrid(4431, 5922, 1.0, 1024, 64), TileGrid(4431, 5922, 1.0, (w, h), 64)
    assert (fitted.cols, fitted.rows) == (big.cols, big.rows) == (5, 7)
    last = fitted.tile_at(fitted.cols - 1, fitted.rows - 1)
    # covered, and beyond the area by less than the rounding to 32 px of every stride (the 1024 grid: 433, 862)
    assert 4431 <= last.x + w < 4431 + 5 * 32 and 5922 <= last.y + h < 5922 + 7 * 32
    # 50000 model px: 53 tiles of 1024 would reach 50944; 53 of 1024 are still needed, none shorter covers
    assert fitted_tile_shape(1024, 64, 50000, 40000) == (1024, 1024)
    assert fitted_tile_shape(1024, 64, 49000, 1984) == (1024, 1024)  # 1984 = 2 x 960 + 64 exactly
    assert fitted_tile_shape(1024, 64, 49000, 1985) == (1024, 736)  # one px more: 3 rows, 3 x 672 + 64 = 2080


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 5000), h=st.integers(1, 5000), tw=st.integers(64, 1024), th=st.integers(64, 1024),
       scale=st.sampled_from([0.5, 1.0, 2.0]), pts=st.lists(st.tuples(st.floats(-100, 6000), st.floats(-100, 6000)), min_size=1, max_size=30))
def test_non_square_tiles_partition_and_cover(w, h, tw, th, scale, pts):
    g = TileGrid(w, h, scale, (tw, th), 32)
    tiles = list(g)
    assert all((t.width, t.height) == (tw, th) for t in tiles)
    last = g.tile_at(g.cols - 1, g.rows - 1)
    assert last.x + tw * scale >= w - 1e-6 and last.y + th * scale >= h - 1e-6
    for x, y in pts:
        owners = [t for t in tiles if _in_core(t, x, y)]
        assert len(owners) == 1
        assert tuple(int(v) for v in g.owner(x, y)) == (owners[0].col, owners[0].row)
