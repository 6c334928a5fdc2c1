import numpy as np

from wsinuclei.contours import mask_to_polygon, masks_to_polygons, polygon_area


def _disc_grid(m=14, r=0.4):
    yy, xx = np.mgrid[0:m, 0:m]
    c = (m - 1) / 2
    d = np.hypot((xx - c) / m, (yy - c) / m)
    return np.clip(0.5 + (r - d) * 8, 0, 1)  # a soft disc of radius r (in box widths), 0.5 at the edge


def test_polygon_area_of_unit_square_and_triangle():
    assert polygon_area(np.array([[0, 0], [1, 0], [1, 1], [0, 1]])) == 1.0
    assert polygon_area(np.array([[0, 0], [4, 0], [0, 3]])) == 6.0


def test_disc_grid_traces_a_disc_in_its_box():
    box = (100.0, 200.0, 140.0, 240.0)  # 40 px square
    poly = mask_to_polygon(_disc_grid(), box)
    centre = poly.mean(0)
    np.testing.assert_allclose(centre, (120, 220), atol=0.6)
    radius = np.hypot(*(poly - centre).T)
    assert np.all(np.abs(radius - 16) < 1.5)  # 0.4 box widths = 16 px
    assert abs(polygon_area(poly) - np.pi * 16 ** 2) / (np.pi * 16 ** 2) < 0.06
    assert 8 <= len(poly) <= 40  # simplified, still round


def test_stretched_box_stretches_the_outline_and_empty_grid_gives_the_box():
    poly = mask_to_polygon(_disc_grid(), (0, 0, 40, 20))
    w, h = np.ptp(poly[:, 0]), np.ptp(poly[:, 1])
    assert abs(w / h - 2) < 0.1
    np.testing.assert_array_equal(mask_to_polygon(np.zeros((14, 14)), (1, 2, 5, 9)),
                                  [[1, 2], [5, 2], [5, 9], [1, 9]])
    polys = masks_to_polygons(np.stack([_disc_grid()[None]] * 3), np.array([[0, 0, 10, 10]] * 3))
    assert len(polys) == 3


def test_polar_outlines_agree_with_exact_tracing():
    """The fast star-convex outlines of a disc and of an ellipse in a stretched box cover the same area as
    the exact marching-squares outline (within 3 %), centred alike."""
    from wsinuclei.contours import polar_outlines

    yy, xx = np.mgrid[0:14, 0:14]
    ellipse = np.clip(0.5 + (1 - np.hypot((xx - 6.0) / 5, (yy - 7.5) / 3)) * 3, 0, 1)
    grids = np.stack([_disc_grid(), ellipse])
    boxes = np.array([[100.0, 200.0, 140.0, 240.0], [0.0, 0.0, 28.0, 14.0]])
    out = polar_outlines(grids[:, None], boxes, n_rays=24)
    assert out.shape == (2, 24, 2)
    for poly, grid, box in zip(out, grids, boxes):
        exact = mask_to_polygon(grid, box, tolerance=0.0)
        assert abs(polygon_area(poly) / polygon_area(exact) - 1) < 0.03
        np.testing.assert_allclose(poly.mean(0), exact.mean(0), atol=0.5)


def test_polar_outline_of_an_empty_grid_is_the_inscribed_ellipse():
    from wsinuclei.contours import polar_outlines

    out = polar_outlines(np.zeros((1, 14, 14)), np.array([[10.0, 20.0, 30.0, 30.0]]), n_rays=8)
    np.testing.assert_allclose(out[0, 0], [30, 25])
    np.testing.assert_allclose(out[0, 2], [20, 30], atol=1e-9)
    assert len(polar_outlines(np.zeros((0, 14, 14)), np.zeros((0, 4)))) == 0


def test_nested_fragments_and_specks_are_filtered():
    from wsinuclei.filters import DetectionFilter

    boxes = np.array([
        [0, 0, 40, 40],      # a big nucleus, best score
        [5, 5, 20, 20],      # a fragment inside it: dropped
        [30, 30, 50, 50],    # overlaps a quarter: kept
        [100, 100, 102, 102],  # a 2x2 px speck: 0.25 µm² at 0.25 µm/px, dropped by min area
        [60, 0, 80, 20],     # around a better box, but only 64 % of it inside that one: kept
        [62, 2, 78, 18],     # inside the previous one, and scores higher: kept
    ], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.5, 0.6])
    keep = DetectionFilter(nested=0.7, min_area_um2=1.0).keep(boxes, scores, mpp=0.25)
    assert keep.tolist() == [True, False, True, False, True, True]
    assert DetectionFilter(nested=0.6).keep(boxes, scores, 0.25).tolist() == [True, False, True, True, False, True]
    assert DetectionFilter().keep(boxes, scores, 0.25).all() and not DetectionFilter().active
