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
