"""Embeddings (``--embeddings``): the pooling on hand-made maps, the detector's outputs unchanged beside them, and
the tables as a user reads them back, the same in-process, on Dask and after a resume."""

from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_he

from wsinuclei.models.star_decode import pool_embeddings
from wsinuclei.pipeline import RunOptions, run_slide

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "wsinuclei" / "weights" / "star_default.safetensors"


def square(x0, y0, x1, y1, n=32):
    """A polygon of ``n`` vertices along the square's edges (continuous pixel coordinates), as (n, 2) x, y."""
    t = np.linspace(0, 4, n, endpoint=False)
    pts = []
    for v in t:
        side, f = int(v), v - int(v)
        pts.append([(x0 + f * (x1 - x0), y0), (x1, y0 + f * (y1 - y0)), (x1 - f * (x1 - x0), y1),
                    (x0, y1 - f * (y1 - y0))][side])
    return np.array(pts, np.float64)


def test_pool_embeddings_means_the_cells_inside_each_polygon():
    # feature c of cell (i, j) = 100 c + 10 i + j: a mean over known cells is known exactly
    c, h, w = 3, 8, 8
    ii, jj = np.mgrid[0:h, 0:w]
    feats = np.stack([100 * k + 10 * ii + jj for k in range(c)]).astype(np.float32)
    # cell (i, j)'s sample point is pixel (4 j + 2.5, 4 i + 2.5) in continuous coordinates (stride 4)
    a = square(4.0, 4.0, 12.0, 12.0)  # holds the sample points of cells i, j in {1, 2}
    b = square(8.0, 8.0, 20.0, 12.0)  # cells i = 2, j in {2, 3, 4}; cell (2, 2) is also a's
    tiny = square(29.0, 29.0, 29.5, 29.5)  # between sample points: no cell; its centre cell is (7, 7)
    out = pool_embeddings(feats, np.stack([a, b, tiny]), np.array([1, 2, 7]), np.array([1, 3, 7]), 4)
    assert out.shape == (3, c) and out.dtype == np.float32
    # a (better, first) owns (2, 2); b keeps (2, 3) and (2, 4)
    np.testing.assert_array_equal(out[0], [100 * k + 10 * 1.5 + 1.5 for k in range(c)])
    np.testing.assert_array_equal(out[1], [100 * k + 20 + 3.5 for k in range(c)])
    np.testing.assert_array_equal(out[2], feats[:, 7, 7])
    # the order decides the contested cell: b first now owns (2, 2)
    swapped = pool_embeddings(feats, np.stack([b, a]), np.array([2, 1]), np.array([3, 1]), 4)
    np.testing.assert_array_equal(swapped[0], [100 * k + 20 + 3.0 for k in range(c)])
    np.testing.assert_allclose(swapped[1], [100 * k + (11 + 12 + 21) / 3 for k in range(c)], rtol=1e-6)
    assert pool_embeddings(feats, np.zeros((0, 32, 2)), np.zeros(0, int), np.zeros(0, int), 4).shape == (0, c)


@pytest.fixture(scope="module")
def tile():
    img, _ = synthetic_he(512, 640, seed=3, n_nuclei=60)
    return img


@pytest.mark.parametrize("backend", ["openvino-int8", "torch"])
def test_embeddings_leave_the_nuclei_as_they_are(tile, backend):
    from wsinuclei import stain
    from wsinuclei.inference import load_detector

    x = stain.model_input(tile, "rgb")
    plain = load_detector(SHIPPED, backend=backend)
    embedded = load_detector(SHIPPED, backend=backend, embeddings=True)
    assert not plain.embeddings and embedded.embeddings
    (b1, s1, o1, t1, e1), = plain.predict_full([x])
    (b2, s2, o2, t2, e2), = embedded.predict_full([x])
    assert e1 is None and len(b1) > 20
    np.testing.assert_array_equal(b1, b2)  # bit for bit: the extra output changes nothing
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(o1, o2)
    assert e2.shape == (len(b2), 64) and e2.dtype == np.float32 and np.isfinite(e2).all()
    assert (e2 >= 0).all()  # the head's features follow a ReLU
    assert len(np.unique(e2.round(3), axis=0)) > len(e2) * 0.9  # a vector per nucleus, not one for all


def test_embeddings_agree_between_torch_and_openvino(tile):
    """The float32 network on OpenVINO and in torch compute the same features: the same vectors to float32
    rounding for the same nuclei."""
    from wsinuclei import stain
    from wsinuclei.evaluate import match
    from wsinuclei.inference import NucleusDetector

    x = stain.model_input(tile, "rgb")
    (bt, _, _, _, et), = NucleusDetector.from_file(SHIPPED, backend="torch", embeddings=True).predict_full([x])
    ov = NucleusDetector.from_file(SHIPPED, backend="openvino", embeddings=True)
    assert ov.backend == "openvino"
    (bo, _, _, _, eo), = ov.predict_full([x])
    pi, ti, _ = match(bt, bo, 0.9)
    assert len(pi) >= 0.95 * len(bt)
    assert np.abs(et[pi] - eo[ti]).max() < 1e-3 * max(1.0, float(np.abs(et).max()))


def test_a_box_model_refuses_embeddings(random_model, pyramid_slide, tmp_path):
    from wsinuclei.errors import WsinucleiError

    with pytest.raises(WsinucleiError, match="--embeddings: .* is not a star model"):
        run_slide(pyramid_slide[0], tmp_path, RunOptions(model=str(random_model), embeddings=True, progress=False),
                  log=lambda *_: None)
    assert not list(tmp_path.iterdir())


OPTS = dict(tile_size=512, overlap=64, progress=False, embeddings=True)


def read_tables(out: Path, name: str):
    import pyarrow.parquet as pq

    return pq.read_table(out / f"{name}.nuclei.parquet"), pq.read_table(out / f"{name}.bag.parquet")


@pytest.fixture(scope="module")
def embedded_run(pyramid_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    report = run_slide(pyramid_slide[0], out, RunOptions(**OPTS), log=lambda *_: None)
    return out, report


def test_the_tables_carry_one_vector_per_nucleus(embedded_run, pyramid_slide):
    import json

    import pyarrow as pa

    out, report = embedded_run
    name = Path(pyramid_slide[0]).stem
    nuclei, bag = read_tables(out, name)
    assert nuclei.num_rows == report.nuclei > 50
    assert nuclei.schema.field("embedding").type == pa.list_(pa.float16(), 64)
    emb = np.stack(nuclei["embedding"].to_numpy(zero_copy_only=False))
    assert emb.shape == (report.nuclei, 64) and emb.dtype == np.float16
    meta = json.loads(nuclei.schema.metadata[b"wsinuclei"])
    assert meta["embedding"]["dim"] == 64 and meta["embedding"]["model"]["sha1"] == report.model["sha1"]
    assert meta["families"] == []  # --embeddings alone: no feature columns, the tables all the same
    assert not [c for c in nuclei.column_names if "." in c]
    # the bag's mean per tile is the mean of that tile's rows of the nuclei table
    means = np.stack(bag["embedding_mean"].to_numpy(zero_copy_only=False))
    tiles = nuclei["tile"].to_numpy()
    for k, key in enumerate(bag["tile"].to_pylist()):
        rows = emb[tiles == key].astype(np.float64)
        if len(rows):
            np.testing.assert_allclose(means[k], rows.mean(0), rtol=1e-6, atol=1e-6)
        else:
            assert np.isnan(means[k]).all()
    # and the geometry stays last, for GeoParquet readers
    assert nuclei.column_names[-1] == "geometry"


def test_embeddings_are_the_same_on_dask_and_after_a_resume(embedded_run, pyramid_slide, tmp_path):
    out, _ = embedded_run
    name = Path(pyramid_slide[0]).stem
    ref, _ = read_tables(out, name)
    dask_out = tmp_path / "dask"
    run_slide(pyramid_slide[0], dask_out, RunOptions(workers=2, **OPTS), log=lambda *_: None)
    # a resume: the run's parts kept, half of them removed, the run again
    resumed = tmp_path / "resumed"
    run_slide(pyramid_slide[0], resumed, RunOptions(keep_parts=True, **OPTS), log=lambda *_: None)
    parts = sorted(resumed.glob(f".{name}.parts/*/*.npz"))
    for p in parts[::2]:
        p.unlink()
    report = run_slide(pyramid_slide[0], resumed, RunOptions(**OPTS), log=lambda *_: None)
    assert report.tiles_resumed == len(parts) - len(parts[::2]) > 0
    for folder in (dask_out, resumed):
        got, _ = read_tables(folder, name)
        assert got.num_rows == ref.num_rows
        for col in ("x0", "y0", "x1", "y1", "score", "embedding"):
            assert got[col].equals(ref[col]), (folder.name, col)
