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


def test_tile_size_fits_small_images_and_thin_areas():
    """White padding changes what a GroupNorm detector sees: tiles shrink to the area's narrow side (rounded
    up to 32 px), never below overlap + 32 or 64, and large areas keep the asked size."""
    from wsinuclei.pipeline import fitted_tile_size

    assert fitted_tile_size(1024, 64, 512, 512) == 512
    assert fitted_tile_size(1024, 64, 1000, 1000) == 1024  # MoNuSeg images: unchanged
    assert fitted_tile_size(1024, 64, 20000, 300) == 320
    assert fitted_tile_size(1024, 64, 256, 256) == 256
    assert fitted_tile_size(1024, 64, 40, 40) == 96
    assert fitted_tile_size(1024, 64, 50000, 40000) == 1024
