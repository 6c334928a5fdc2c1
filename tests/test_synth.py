"""Generated slides: a slide too large for memory is built in memory maps and comes out byte for byte as the
in-memory build, leaving no scratch files."""

import numpy as np

from wsinuclei import synth


def test_a_pyramid_built_in_memory_maps_is_the_in_memory_one(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1500, 1300, 3), dtype=np.uint8)
    img[200:900, 300:1000] = 255
    synth.write_pyramid_tiff(tmp_path / "memory.tiff", img, mpp=0.25, compression="zlib", min_level_size=200)
    monkeypatch.setattr(synth, "IN_MEMORY_BYTES", 1000)
    scratch = tmp_path / "scratch"
    canvas = synth._allocate(img.shape, scratch, "level0", fill=255)
    assert isinstance(canvas, np.memmap) and canvas.min() == 255
    canvas[:] = img
    synth.write_pyramid_tiff(tmp_path / "mapped.tiff", canvas, mpp=0.25, compression="zlib", min_level_size=200,
                             scratch=scratch)
    assert (tmp_path / "mapped.tiff").read_bytes() == (tmp_path / "memory.tiff").read_bytes()
    assert sorted(p.name for p in scratch.iterdir()) == ["level0.npy"]  # the levels it made are gone


def test_downsample_in_strips_is_the_whole_image_mean():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (37, 21, 3), dtype=np.uint8)
    a = img[:36, :20].astype(np.uint16)
    expected = ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4).astype(np.uint8)
    assert np.array_equal(synth.downsample2(img, strip=4), expected)
    assert np.array_equal(synth.downsample2(img), expected)
