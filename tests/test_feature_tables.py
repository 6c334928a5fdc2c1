"""`wsinuclei detect --features`: the nuclei and bag tables, read back with pyarrow as a user would."""

import json

import numpy as np
import pytest

from wsinuclei.pipeline import RunOptions, run_slide

pq = pytest.importorskip("pyarrow.parquet")
OPTS = dict(tile_size=256, overlap=32, progress=False)


@pytest.fixture
def featured_run(pyramid_slide, stub_detector, tmp_path):
    stub_detector.outlines = True  # a contour model
    out = tmp_path / "out"
    report = run_slide(pyramid_slide[0], out, RunOptions(features=True, keep_parts=True, **OPTS), log=lambda *_: None)
    return out, report


def test_nuclei_table_has_one_row_per_nucleus_owned_once(featured_run, pyramid_slide):
    from wsinuclei.features.nuclei import feature_columns

    out, report = featured_run
    t = pq.read_table(out / "synthetic.nuclei.parquet")
    assert t.num_rows == report.nuclei > 20
    meta = json.loads(t.schema.metadata[b"wsinuclei"])
    assert meta["features_version"].startswith("wsinuclei-features-1") and meta["masks"] == "model contours"
    assert meta["mpp"] == pytest.approx(0.25) and meta["name"] == "synthetic"
    cols = t.column_names
    for c in feature_columns() + ["score", "tile", "model", "Size.Area_um2", "Size.Perimeter_um", "area_um2"]:
        if c != "Identifier.Label":
            assert c in cols, c
    d = t.to_pydict()
    boxes = np.array([d["x0"], d["y0"], d["x1"], d["y1"]]).T
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    # no nucleus twice: every centre once, in the core of the tile that measured it
    assert len(np.unique(np.round(centres, 1), axis=0)) == len(centres)
    from wsinuclei.tiles import TileGrid

    grid = TileGrid(2100, 1500, 1.0, 256, 32)
    for (cx, cy), key in zip(centres, d["tile"]):
        row, col = (int(v) for v in key.split("_"))
        x0, y0, x1, y1 = grid.tile_at(col, row).core
        assert x0 <= cx < x1 and y0 <= cy < y1
    # measured on the nucleus: its centroid inside its box, its area that of its (rectangular) contour
    cx, cy = np.array(d["Identifier.CentroidX"]), np.array(d["Identifier.CentroidY"])
    assert ((cx >= boxes[:, 0] - 1) & (cx <= boxes[:, 2] + 1) & (cy >= boxes[:, 1] - 1) & (cy <= boxes[:, 3] + 1)).all()
    big = np.array(d["area_um2"]) > 5
    np.testing.assert_allclose(np.array(d["Size.Area_um2"])[big], np.array(d["area_um2"])[big], rtol=0.35)
    assert np.isfinite(np.array(d["Nucleus.Intensity.Mean"])).all()
    # the synthetic nuclei are dark purple on pink: more hematoxylin inside than in the ring around them
    # (HistomicsTK's stain scale: low = much stain)
    assert np.median(d["Nucleus.Intensity.Mean"]) < np.median(d["Cytoplasm.Intensity.Mean"])


def test_bag_table_summarises_each_tile(featured_run):
    out, report = featured_run
    bag = pq.read_table(out / "synthetic.bag.parquet").to_pydict()
    nuclei = pq.read_table(out / "synthetic.nuclei.parquet", columns=["tile", "Size.Area"]).to_pydict()
    assert len(bag["tile"]) == report.tiles_processed
    assert sum(bag["nuclei"]) == report.nuclei
    counts = {k: nuclei["tile"].count(k) for k in set(nuclei["tile"])}
    for key, n, mean in zip(bag["tile"], bag["nuclei"], bag["Size.Area.mean"]):
        assert n == counts.get(key, 0)
        if n:
            areas = [a for t, a in zip(nuclei["tile"], nuclei["Size.Area"]) if t == key]
            assert mean == pytest.approx(np.mean(areas), rel=1e-5)
        else:
            assert np.isnan(mean)
    assert all(d >= 0 for d in bag["nuclei_per_mm2_tissue"])


def test_resumed_tiles_give_the_same_table(featured_run, pyramid_slide):
    out, report = featured_run
    first = pq.read_table(out / "synthetic.nuclei.parquet")
    again = run_slide(pyramid_slide[0], out, RunOptions(features=True, **OPTS), log=lambda *_: None)
    assert again.tiles_resumed == report.tiles_processed  # every tile from its saved part
    second = pq.read_table(out / "synthetic.nuclei.parquet")
    assert second.schema.equals(first.schema, check_metadata=True)
    for c in first.column_names:  # NaN (e.g. a fractal dimension of too small a mask) equals NaN here
        np.testing.assert_array_equal(second[c].to_numpy(), first[c].to_numpy(), err_msg=c)


def test_nuclei_table_is_geoparquet_with_the_geojson_s_outlines(featured_run):
    """The ``geometry`` column holds the same outlines as NAME.geojson (rows in the same order), as WKB, and the
    file's ``geo`` metadata makes geopandas read it as a GeoDataFrame in the slide's pixel frame."""
    import shapely

    out, report = featured_run
    t = pq.read_table(out / "synthetic.nuclei.parquet")
    geo = json.loads(t.schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["Polygon"] and col["crs"] is None
    polys = shapely.from_wkb(t["geometry"].to_pylist())
    assert len(polys) == report.nuclei and all(p.geom_type == "Polygon" and p.area > 0 for p in polys)
    features = json.loads((out / "synthetic.geojson").read_text())["features"]
    for p, f in zip(polys, features):
        ring = np.array(f["geometry"]["coordinates"][0])
        np.testing.assert_allclose(np.array(p.exterior.coords), ring, atol=0.051)  # GeoJSON: 1 decimal
    bounds = shapely.bounds(polys)
    np.testing.assert_allclose(col["bbox"], [*bounds[:, :2].min(0), *bounds[:, 2:].max(0)], rtol=1e-12)
    # the table's box is the outline's extent
    d = t.select(["x0", "y0", "x1", "y1"]).to_pydict()
    np.testing.assert_allclose(bounds, np.array([d["x0"], d["y0"], d["x1"], d["y1"]]).T, atol=0.51)
    gpd = pytest.importorskip("geopandas")
    frame = gpd.read_parquet(out / "synthetic.nuclei.parquet")
    assert isinstance(frame, gpd.GeoDataFrame) and frame.crs is None and len(frame) == report.nuclei
    np.testing.assert_allclose(frame.geometry.area.to_numpy(), shapely.area(polys))


def test_box_only_model_gets_no_shape_features(pyramid_slide, stub_detector, tmp_path):
    report = run_slide(pyramid_slide[0], tmp_path, RunOptions(features=True, **OPTS), log=lambda *_: None)
    t = pq.read_table(tmp_path / "synthetic.nuclei.parquet")
    meta = json.loads(t.schema.metadata[b"wsinuclei"])
    assert "ellipses" in meta["masks"] and meta["families"] == ["intensity", "gradient"]
    assert "Size.Area" not in t.column_names and "Shape.FSD1" not in t.column_names
    assert "Nucleus.Intensity.Mean" in t.column_names and t.num_rows == report.nuclei
    import shapely  # without contours, the outline written is the box

    d = t.select(["x0", "y0", "x1", "y1"]).to_pydict()
    np.testing.assert_allclose(shapely.bounds(shapely.from_wkb(t["geometry"].to_pylist())),
                               np.array([d["x0"], d["y0"], d["x1"], d["y1"]]).T, atol=1e-4)


def test_unknown_family_is_refused():
    from wsinuclei.errors import WsinucleiError

    with pytest.raises(WsinucleiError, match="unknown texture"):
        RunOptions(features=True, feature_families=("texture",)).validate()


def test_qupath_sees_the_main_measurements(featured_run):
    out, report = featured_run
    geo = json.loads((out / "synthetic.geojson").read_text())
    nuclei = pq.read_table(out / "synthetic.nuclei.parquet", columns=["Shape.Circularity", "Nucleus.Intensity.Mean"])
    assert len(geo["features"]) == nuclei.num_rows
    m = [f["properties"]["measurements"] for f in geo["features"]]
    assert all({"score", "Area \u00b5m^2", "Circularity", "Hematoxylin mean"} <= set(x) for x in m)
    # the same values as the table (rows in the same order), to the GeoJSON's 4 significant digits
    np.testing.assert_allclose([x["Circularity"] for x in m], nuclei["Shape.Circularity"].to_numpy(), rtol=1e-3)
    np.testing.assert_allclose([x["Hematoxylin mean"] for x in m], nuclei["Nucleus.Intensity.Mean"].to_numpy(), rtol=1e-3)


def test_viewer_matches_the_measurements_to_the_nuclei(featured_run):
    from wsinuclei.viewer import ViewerServer, resolve_source

    out, report = featured_run
    det = resolve_source(out).detections
    area = det.measurements["Size.Area_um2"]
    have = np.isfinite(area)
    assert have.sum() == report.nuclei and (det.scores[have] >= 0.5).all()
    table = pq.read_table(out / "synthetic.nuclei.parquet", columns=["Size.Area_um2"])
    np.testing.assert_allclose(area[have], table["Size.Area_um2"].to_numpy(), rtol=1e-6)
    srv = ViewerServer(resolve_source(out))
    try:
        info = json.loads(srv.info)
        assert ["area", "µm²"] in info["measurements"]
        assert len(srv.measurements) == 4 * len(det.scores) * len(info["measurements"])
    finally:
        srv.server_close()


def test_a_slide_without_nuclei_gives_the_same_columns_as_one_with_them(tmp_path, stub_detector):
    """A cohort's tables concatenate: the nuclei table of an image where nothing was found has every column
    (area_um2 included, for a contour model) of one where nuclei were found."""
    import pyarrow.parquet as pq
    from PIL import Image

    from wsinuclei.pipeline import RunOptions, run_slide
    from conftest import synthetic_he

    stub_detector.outlines = True
    stub_detector.loaded.config.star_head = {"n_rays": 4}  # a contour model's settings
    with_nuclei, _ = synthetic_he(256, 256, seed=8)
    empty, _ = synthetic_he(256, 256, seed=8, n_nuclei=0)
    columns = []
    for name, img in (("with", with_nuclei), ("empty", empty)):
        Image.fromarray(img).save(tmp_path / f"{name}.png")
        report = run_slide(tmp_path / f"{name}.png", tmp_path / "out", RunOptions(mpp=0.25, features=True,
                                                                                   progress=False),
                           log=lambda *_: None)
        table = pq.read_table(tmp_path / "out" / f"{name}.nuclei.parquet")
        assert table.num_rows == report.nuclei and (report.nuclei == 0) == (name == "empty")
        columns.append(table.schema.names)
    assert columns[1] == columns[0] and "area_um2" in columns[0]


def test_cohort_takes_the_tissue_area_from_the_bag_table(featured_run, tmp_path):
    """With --features, the cohort row's tissue area (the run's, NAME.run.json) is the bag's tiles' core areas
    times their tissue fractions, and the density the run's nuclei over it."""
    import csv

    from wsinuclei.cohort import write_cohort

    out, report = featured_run
    write_cohort([out], tmp_path / "c.csv")
    row = next(csv.DictReader(open(tmp_path / "c.csv")))
    bag = pq.read_table(out / "synthetic.bag.parquet").to_pydict()
    px = sum((x1 - x0) * (y1 - y0) * f for x0, y0, x1, y1, f in
             zip(bag["x0"], bag["y0"], bag["x1"], bag["y1"], bag["tissue_fraction"]))
    tissue = px * (report.mpp / 1000) ** 2
    assert 0 < tissue and float(row["tissue_mm2"]) == pytest.approx(tissue, rel=1e-5)
    assert float(row["nuclei_per_mm2_tissue"]) == pytest.approx(report.nuclei / tissue, rel=1e-5)
    # the bag's own per-tile densities agree with it: nuclei over tissue, tile by tile
    dens = np.array(bag["nuclei_per_mm2_tissue"])
    areas = np.array([(x1 - x0) * (y1 - y0) * f for x0, y0, x1, y1, f in
                      zip(bag["x0"], bag["y0"], bag["x1"], bag["y1"], bag["tissue_fraction"])]) * (report.mpp / 1000) ** 2
    assert (dens * areas).sum() == pytest.approx(report.nuclei, rel=1e-4)


def test_a_run_without_features_records_its_tissue_for_the_cohort(featured_run, pyramid_slide, stub_detector, tmp_path):
    """Densities per mm² of tissue need no feature pass: run.json holds the tissue of the tiles that ran (the same
    as a --features run's), and without a tissue mask it is the whole image's area."""
    import csv

    from PIL import Image

    from wsinuclei.cohort import write_cohort
    from conftest import synthetic_he

    stub_detector.outlines = True
    _, featured = featured_run
    plain = run_slide(pyramid_slide[0], tmp_path / "plain", RunOptions(**OPTS), log=lambda *_: None)
    assert plain.tissue_mm2 == pytest.approx(featured.tissue_mm2, rel=1e-9) and plain.tissue_mm2 > 0
    assert not (tmp_path / "plain" / "synthetic.bag.parquet").exists()
    write_cohort([tmp_path / "plain"], tmp_path / "c.csv")
    row = next(csv.DictReader(open(tmp_path / "c.csv")))
    assert float(row["nuclei_per_mm2_tissue"]) == pytest.approx(plain.nuclei / plain.tissue_mm2, rel=1e-5)
    img, _ = synthetic_he(300, 200, seed=3)
    Image.fromarray(img).save(tmp_path / "img.png")
    whole = run_slide(tmp_path / "img.png", tmp_path / "whole", RunOptions(mpp=0.25, tissue_mask=False, progress=False),
                      log=lambda *_: None)
    assert whole.tissue_mm2 == pytest.approx(300 * 200 * (0.25 / 1000) ** 2, rel=1e-9)
