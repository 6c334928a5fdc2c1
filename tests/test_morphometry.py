"""Whole-image morphometry against scikit-image's regionprops (what HistomicsTK uses), region by region, on
shapes chosen for the edge cases: touching regions, a single pixel, a line, a symmetric square (orientation's
special case), holes, skipped label values and regions at the image border."""

import math

import numpy as np
import pytest

from wsinuclei.features.morphometry import find_regions, morphometry


def _labels():
    from skimage.draw import disk, ellipse

    lab = np.zeros((90, 120), np.int32)
    lab[disk((20, 20), 9)] = 3
    lab[ellipse(20, 45, 6, 14, rotation=0.6)] = 7  # touches region 3? no: keeps apart, next one touches
    lab[10:30, 58:70] = 8
    lab[12:28, 70:75] = 9  # touches 8 along a whole edge
    lab[50, 10] = 11  # one pixel
    lab[60, 5:25] = 12  # a line: zero minor axis, eccentricity 1
    lab[70:80, 30:40] = 13  # a square: tensor with a == c and b == 0
    lab[45:60, 50:70] = 14
    lab[50:55, 55:60] = 0  # a hole
    lab[80:90, 100:120] = 15  # at the image corner
    lab[0:6, 110:120] = 16  # at the top edge
    rng = np.random.default_rng(1)
    blob = rng.uniform(size=(16, 16)) > 0.35
    lab[60:76, 80:96][blob] = 17  # ragged, several pieces
    return lab


def test_every_value_is_regionprops_value():
    from skimage.measure import regionprops

    lab = _labels()
    intensity = np.random.default_rng(0).uniform(10, 240, lab.shape)
    reg = find_regions(lab)
    ours = morphometry(lab, reg, intensity)
    props = regionprops(lab, intensity_image=intensity)
    assert reg.labels.tolist() == [p.label for p in props]
    for i, p in enumerate(props):
        expected = {
            "Identifier.CentroidY": p.centroid[0], "Identifier.CentroidX": p.centroid[1],
            "Identifier.WeightedCentroidY": p.centroid_weighted[0], "Identifier.WeightedCentroidX": p.centroid_weighted[1],
            "Size.Area": p.area, "Size.ConvexHullArea": p.area_convex, "Size.Perimeter": p.perimeter,
            "Size.MajorAxisLength": p.axis_major_length, "Size.MinorAxisLength": p.axis_minor_length,
            "Orientation.Orientation": p.orientation, "Shape.Eccentricity": p.eccentricity,
            "Shape.EquivalentDiameter": p.equivalent_diameter_area, "Shape.Extent": p.extent,
            "Shape.Solidity": p.solidity,
        }
        expected.update({f"Shape.HuMoments{k}": v for k, v in enumerate(p.moments_hu, 1)})
        expected.update({f"Shape.WeightedHuMoments{k}": v for k, v in enumerate(p.moments_weighted_hu, 1)})
        for name, value in expected.items():
            got = ours[name][i]
            if math.isnan(value):
                assert math.isnan(got), (p.label, name)
            else:
                assert got == pytest.approx(value, rel=1e-9, abs=1e-12), (p.label, name)
    assert ours["Shape.Eccentricity"][reg.labels.tolist().index(12)] == 1.0
    assert ours["Orientation.Orientation"][reg.labels.tolist().index(13)] == pytest.approx(-math.pi / 4)


def test_no_regions_give_empty_columns():
    lab = np.zeros((20, 20), np.int32)
    reg = find_regions(lab)
    out = morphometry(lab, reg, np.ones(lab.shape))
    assert reg.n == 0 and all(len(v) == 0 for v in out.values())


def fractal_dimension(image: np.ndarray) -> float:
    """HistomicsTK's box-counting dimension of one region's mask (its box crop), region by region as
    HistomicsTK computes it: the reference ``fractal_dimensions`` is held to."""
    from wsinuclei.features.morphometry import _fractal_from_counts

    z = image > 0
    p = min(z.shape)
    n = int(np.log(2 ** np.floor(np.log(p) / np.log(2))) / np.log(2))
    sizes = 2 ** np.arange(n, 1, -1)
    counts = []
    for k in sizes:
        s = np.add.reduceat(np.add.reduceat(z, np.arange(0, z.shape[0], k), axis=0), np.arange(0, z.shape[1], k), axis=1)
        counts.append(len(np.where((s > 0) & (s < k * k))[0]))
    if not len(counts):
        return -0.0
    return _fractal_from_counts(sizes, np.array(counts))


def test_hulls_and_box_counting_of_many_random_regions_are_the_per_region_values():
    """``convex_areas`` and ``fractal_dimensions`` work on all regions at once; here each region against
    ``skimage.morphology.convex_hull_image`` and HistomicsTK's box counting (``fractal_dimension``) on its own
    crop: ragged blobs of 1 to 29 pixels a side, overlapping (the later label wins), at the image borders."""
    from skimage.morphology import convex_hull_image

    from wsinuclei.features.morphometry import convex_areas, fractal_dimensions

    rng = np.random.default_rng(3)
    for _ in range(12):
        lab = np.zeros((120, 150), np.int32)
        for v in range(1, 40):
            r, c = rng.integers(-5, 120), rng.integers(-5, 150)
            h, w = rng.integers(1, 30, 2)
            blob = rng.uniform(size=(h, w)) > rng.uniform(0, 0.8)
            r0, c0 = max(r, 0), max(c, 0)
            sub = lab[r0:r + h, c0:c + w]
            sub[blob[r0 - r:r0 - r + sub.shape[0], c0 - c:c0 - c + sub.shape[1]]] = v
        reg = find_regions(lab)
        hulls, dims = convex_areas(lab, reg), fractal_dimensions(reg)
        for i, (v, s) in enumerate(zip(reg.labels, reg.slices)):
            mask = lab[s] == v
            assert hulls[i] == convex_hull_image(mask).sum(), v
            assert dims[i] == pytest.approx(fractal_dimension(mask), rel=1e-12, abs=1e-14), v
