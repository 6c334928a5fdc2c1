"""Slide readers: every OpenSlide format (SVS, NDPI, MIRAX, generic tiled TIFF, ...) and plain images.

One interface, :class:`Slide`: size, pyramid levels, µm/px, objective power, and region reads at any target
µm/px. A read chooses the finest pyramid level that is no coarser than the target, reads there and resamples;
anything outside the slide reads as white (background), so tiles at slide edges never fail.

Slides open by path and hold no state a worker cannot rebuild, so Dask workers open their own copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import WsinucleiError

PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: the µm/px a slide may have (metadata outside it is not trusted; --mpp outside it is refused)
MPP_RANGE = (0.05, 20.0)
Image.MAX_IMAGE_PIXELS = 1_000_000_000  # plain regions can be large; they are ours to read, not a bomb


@dataclass
class SlideInfo:
    path: str
    format: str
    dimensions: tuple[int, int]
    level_count: int
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float | None
    mpp_source: str
    objective_power: float | None


class Slide:
    """An opened slide. ``mpp`` overrides whatever the file says; without either, :attr:`mpp` is None and
    :meth:`require_mpp` raises a clear error naming the ``--mpp`` flag."""

    def __init__(self, path: str | Path, mpp: float | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise WsinucleiError(f"{self.path}: no such file")
        if self.path.is_dir() and not self.path.suffix.lower() == ".mrxs":
            raise WsinucleiError(f"{self.path}: is a folder, not a slide")
        self._osr = None
        self._image = None  # the pixels of a plain image, or of a small slide's base level once held
        self.mpp_y = None  # set only when the file's pixels are not square
        self._open()
        self.name = _slide_stem(self.path)
        file_mpp, source = self._file_mpp()
        if mpp is not None:
            if not (math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
                raise WsinucleiError(f"--mpp must be from {MPP_RANGE[0]:g} to {MPP_RANGE[1]:g} µm/px (the range of "
                                     f"microscope slides), got {mpp:g}")
            self.mpp, self.mpp_source = float(mpp), "--mpp"
        else:
            self.mpp, self.mpp_source = file_mpp, source

    # -- opening -----------------------------------------------------------------------------------
    def _open(self) -> None:
        import openslide

        try:
            self._osr = openslide.OpenSlide(str(self.path))
            self.format = self._osr.properties.get(openslide.PROPERTY_NAME_VENDOR, "openslide")
            # touch the smallest level once: a truncated or corrupt file fails here, not mid-run
            lw, lh = self._osr.level_dimensions[-1]
            self._osr.read_region((0, 0), self._osr.level_count - 1, (min(lw, 16), min(lh, 16)))
            return
        except openslide.OpenSlideUnsupportedFormatError:
            self._osr = None
        except openslide.OpenSlideError as exc:
            raise WsinucleiError(f"{self.path}: corrupt or unreadable slide ({exc})") from None
        if self.path.suffix.lower() not in PLAIN_SUFFIXES:
            raise WsinucleiError(f"{self.path}: not a slide or image that wsinuclei can read")
        try:
            with Image.open(self.path) as im:
                self._image = plain_rgb(im)
                self._tiff_tags = dict(getattr(im, "tag_v2", {}) or {})
        except Exception as exc:
            raise WsinucleiError(f"{self.path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
        self.format = "image"

    def _file_mpp(self) -> tuple[float | None, str]:
        if self._osr is not None:
            import openslide

            props = self._osr.properties

            def number(key):
                try:
                    return float(props.get(key, "nan"))
                except ValueError:
                    return float("nan")

            v, vy = number(openslide.PROPERTY_NAME_MPP_X), number(openslide.PROPERTY_NAME_MPP_Y)
            if v > 0:
                if vy > 0 and abs(vy - v) > 0.01 * v:
                    self.mpp_y = vy  # refused by require_mpp unless --mpp says what to assume
                return v, "metadata"
            # generic TIFFs whose resolution OpenSlide did not turn into µm/px
            tiff_mpp = _mpp_from_tiff_props(props)
            return (tiff_mpp, "metadata (TIFF resolution)") if tiff_mpp else (None, "none")
        # plain images: a TIFF/PNG resolution is trusted only in the plausible microscope range
        unit = self._tiff_tags.get(296)  # ResolutionUnit: 2 inch, 3 cm
        xres, yres = self._tiff_tags.get(282), self._tiff_tags.get(283)
        if unit in (2, 3) and xres:
            per_um = float(xres) / (25400.0 if unit == 2 else 10000.0)
            if per_um > 0 and MPP_RANGE[0] <= 1 / per_um <= MPP_RANGE[1]:
                if yres and float(yres) > 0:
                    mpp_y = (25400.0 if unit == 2 else 10000.0) / float(yres)
                    if abs(mpp_y - 1 / per_um) > 0.01 / per_um:
                        self.mpp_y = mpp_y  # refused by require_mpp unless --mpp says what to assume
                return 1 / per_um, "metadata (TIFF resolution)"
        return None, "none"

    def close(self) -> None:
        if self._osr is not None:
            self._osr.close()
            self._image = None  # a held base level goes with the handle

    def hold_base_level(self, max_pixels: int | None = None) -> bool:
        """Read a small slide's base level whole, once, and serve every later read of it from memory.

        A region or a whole slide of a few megapixels (CMU-1-Small-Region: 6.6) is read hundreds of times by
        planning (thumbnail, 2,048 colour-statistics patches) and by the tiles, each read decoding its JPEG
        tiles again. The held pixels are the ones OpenSlide returns (over white, as every read is), so reads
        give the same pixels either way. True when the level is held; False for a level over ``max_pixels``
        (default :attr:`HOLD_PIXELS`), which stays read region by region."""
        if self._osr is None or self._image is not None:
            return True  # a plain image, or held already
        w, h = self.level_dimensions[0]
        if w * h > (self.HOLD_PIXELS if max_pixels is None else max_pixels):
            return False
        from concurrent.futures import ThreadPoolExecutor

        # bands of rows, at least two, read on two threads (OpenSlide decodes without holding the GIL); each
        # band's RGBA and float copies stay bounded
        band = max(1, min(self.BAND_PIXELS // max(w, 1), -(-h // 2)))
        image = np.empty((h, w, 3), np.uint8)

        def read_band(y):
            image[y : y + band] = self.read_level_region(0, y, w, min(band, h - y), 0)

        with ThreadPoolExecutor(2, thread_name_prefix="wsinuclei-hold") as pool:
            list(pool.map(read_band, range(0, h, band)))
        self._image = image
        return True

    #: A base level up to this many pixels is held in memory by :meth:`hold_base_level` (RGB: 3 bytes each).
    HOLD_PIXELS = 40_000_000

    def as_openslide(self):
        """This slide through OpenSlide's API (an ``openslide.ImageSlide`` for a plain image), for
        ``openslide.deepzoom.DeepZoomGenerator``."""
        if self._osr is not None:
            return self._osr
        import openslide

        return openslide.ImageSlide(Image.fromarray(self._image))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- metadata ----------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        if self._osr is not None:
            return tuple(self._osr.dimensions)
        return (self._image.shape[1], self._image.shape[0])

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        if self._osr is not None:
            return [tuple(d) for d in self._osr.level_dimensions]
        return [self.dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        if self._osr is not None:
            return [float(d) for d in self._osr.level_downsamples]
        return [1.0]

    @property
    def objective_power(self) -> float | None:
        if self._osr is not None:
            import openslide

            v = self._osr.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
            try:
                return float(v) if v else None
            except ValueError:
                return None
        return None

    def info(self) -> SlideInfo:
        return SlideInfo(str(self.path), self.format, self.dimensions, len(self.level_dimensions),
                         self.level_dimensions, self.level_downsamples, self.mpp, self.mpp_source,
                         self.objective_power)

    def require_mpp(self) -> float:
        if self.mpp_y is not None and self.mpp_source != "--mpp":
            raise WsinucleiError(
                f"{self.path}: pixels are not square ({self.mpp:g} x {self.mpp_y:g} µm); wsinuclei reads square "
                f"pixels only: resample the slide, or give --mpp to read it as {self.mpp:g} µm/px in both directions"
            )
        if self.mpp is None:
            raise WsinucleiError(
                f"{self.path}: the slide does not say its µm/px; give it with --mpp (e.g. --mpp 0.25 for 40x, 0.5 for 20x)"
            )
        return self.mpp

    # -- reading -----------------------------------------------------------------------------------
    def best_level(self, downsample: float) -> int:
        """The finest level whose downsample is <= ``downsample`` (so the read is never coarser than asked)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def read_level_region(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of a region whose top-left (x, y) is in base pixels and size in level pixels.
        Outside the slide: white."""
        if w <= 0 or h <= 0:
            return np.full((max(h, 0), max(w, 0), 3), 255, np.uint8)
        if self._osr is not None and not (level == 0 and self._image is not None):  # held: below
            import openslide

            try:
                rgba = np.array(self._osr.read_region((int(x), int(y)), level, (int(w), int(h))))
            except openslide.OpenSlideError as exc:
                raise WsinucleiError(f"{self.path}: cannot read region at ({x}, {y}) ({exc})") from None
            return composite_on_white(rgba)
        x, y, w, h = int(x), int(y), int(w), int(h)
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self._image.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._image[y0:y1, x0:x1]
        return out

    def colour_map_mpp(self, target_mpp: float) -> float:
        """The µm/px of the pixels that :meth:`read_region`'s ``colour_map`` sees in a read at ``target_mpp``:
        the read level's own where the read enlarges it (a 20x slide read at 0.25 µm/px: 0.5), else
        ``target_mpp``. Colour statistics for that map are taken at this resolution (``pipeline.plan``)."""
        level = self.best_level(target_mpp / self.require_mpp())
        return max(float(target_mpp), self.require_mpp() * self.level_downsamples[level])

    def read_patches(self, x0s: np.ndarray, y0s: np.ndarray, size: int, target_mpp: float) -> np.ndarray:
        """(n, size, size, 3): :meth:`read_region` of ``size`` x ``size`` at ``target_mpp`` from each top-left
        (base pixels). From a base level in memory, read at its own resolution on its pixel grid, every patch
        is a crop (read_region's exact path; white outside the slide), cut all at once; otherwise one read
        per patch."""
        x0s, y0s = np.asarray(x0s, np.float64), np.asarray(y0s, np.float64)
        x0, y0 = np.round(x0s).astype(int), np.round(y0s).astype(int)
        if (self._image is not None and abs(target_mpp / self.require_mpp() - 1) < 1e-9
                and np.abs(x0 - x0s).max(initial=0) < 1e-6 and np.abs(y0 - y0s).max(initial=0) < 1e-6):
            padded = np.pad(self._image, ((size, size), (size, size), (0, 0)), constant_values=255)
            H, W = self._image.shape[:2]
            rows = np.clip(y0, -size, H) + size
            cols = np.clip(x0, -size, W) + size
            step = np.arange(size)
            return padded[(rows[:, None] + step)[:, :, None], (cols[:, None] + step)[:, None, :]]
        return np.stack([self.read_region(x, y, size, size, target_mpp) for x, y in zip(x0s, y0s)])

    def read_region(self, x: float, y: float, width: int, height: int, target_mpp: float,
                    colour_map=None) -> np.ndarray:
        """RGB uint8 (height, width, 3) at ``target_mpp`` whose top-left is base pixel (x, y).

        The region spans ``width * target_mpp / mpp`` base pixels across. ``colour_map``: a function of each
        pixel's colour alone (Reinhard's, ``stain.ReinhardTable``) applied to what is read. Where the read
        enlarges the level's pixels (a 20x slide read at 0.25 µm/px) it is applied to the level's pixels before
        they are interpolated, a quarter as many, as the scanner's own pixels are what it was defined on;
        otherwise to the result.
        """
        scale = target_mpp / self.require_mpp()  # base px per output px
        level = self.best_level(scale)
        ds = self.level_downsamples[level]
        # level pixels needed, with a one-pixel margin for the resampling kernel
        lx, ly = x / ds, y / ds
        lw, lh = width * scale / ds, height * scale / ds
        ix0, iy0 = math.floor(lx) - 1, math.floor(ly) - 1
        ix1, iy1 = math.ceil(lx + lw) + 1, math.ceil(ly + lh) + 1
        raw = self.read_level_region(int(round(ix0 * ds)), int(round(iy0 * ds)), ix1 - ix0, iy1 - iy0, level)
        if abs(lw - width) < 1e-6 and abs(lh - height) < 1e-6 and abs(lx - round(lx)) < 1e-6 and abs(ly - round(ly)) < 1e-6:
            ox, oy = int(round(lx)) - ix0, int(round(ly)) - iy0
            out = np.ascontiguousarray(raw[oy : oy + height, ox : ox + width])
            return out if colour_map is None else colour_map(out)
        if colour_map is not None and ds > scale:  # enlarging (see colour_map_mpp): map the fewer pixels first
            raw, colour_map = colour_map(raw), None
        box = (lx - ix0, ly - iy0, lx - ix0 + lw, ly - iy0 + lh)
        # bicubic, as training data are resampled (data.resample): one kernel for what the model learns and sees
        out = np.array(Image.fromarray(raw).resize((width, height), Image.Resampling.BICUBIC, box=box))
        return out if colour_map is None else colour_map(out)

    def thumbnail(self, max_side: int = 2048, min_mpp: float | None = None) -> tuple[np.ndarray, float]:
        """A low-resolution RGB image of the whole slide and its downsample (base px per thumbnail px).

        ``min_mpp``: a slide larger than ``max_side`` is reduced at least to this many µm per pixel (when its
        µm/px is known), however small that makes the thumbnail; a slide within ``max_side`` is its own
        thumbnail whatever its µm/px.

        Read from the pyramid level closest above the thumbnail's size; a slide without a pyramid (one huge
        level) is read in bands of rows, each reduced before the next is read, so memory stays bounded by
        one band, never the whole level."""
        W, H = self.dimensions
        if min_mpp and max(W, H) > max_side and self.mpp:
            max_side = min(max_side, max(1, int(max(W, H) * self.mpp / min_mpp)))
        ds_wanted = max(W, H) / max_side if max(W, H) > max_side else 1.0
        level = self.best_level(ds_wanted)
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        if max(lw, lh) <= max_side:
            return self.read_level_region(0, 0, lw, lh, level), ds
        if lw * lh <= self.BAND_PIXELS:  # small enough to read whole: resize to exactly max_side
            f = max_side / max(lw, lh)
            size = (max(1, round(lw * f)), max(1, round(lh * f)))
            img = np.array(Image.fromarray(self.read_level_region(0, 0, lw, lh, level)).resize(size, Image.Resampling.BOX))
            return img, W / size[0]
        factor = int(math.ceil(max(lw, lh) / max_side))  # level pixels per thumbnail pixel
        size = (max(1, math.ceil(lw / factor)), max(1, math.ceil(lh / factor)))
        band = max(1, (self.BAND_PIXELS // max(lw, 1)) // factor) * factor  # level rows per band
        rows = []
        for y in range(0, lh, band):
            h = min(band, lh - y)
            strip = self.read_level_region(0, int(round(y * ds)), lw, h, level)
            rows.append(np.array(Image.fromarray(strip).reduce(factor)))  # box average of factor x factor
        img = np.concatenate(rows, axis=0)[: size[1], : size[0]]
        return img, ds * factor

    #: Level pixels read at once when building a thumbnail from a level much larger than it.
    BAND_PIXELS = 16_000_000


def plain_rgb(im) -> np.ndarray:
    """A plain image's pixels as 8-bit RGB, as a slide's read gives them: transparency composited on white (as
    OpenSlide does), 16-bit and floating-point grey scaled to 0-255 by its type's full range (PIL's own
    conversion clips 16-bit grey to white)."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) <= 65535) else \
            max(float(a.max(initial=0)), 1.0)
        g = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        return composite_on_white(np.asarray(im.convert("RGBA")))
    return np.array(im.convert("RGB"))


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA -> RGB over white glass. openslide-python returns *non*-premultiplied RGBA (it un-premultiplies
    OpenSlide's ARGB), so a pixel is ``rgb * a + 255 * (1 - a)``; fully transparent (outside the scanned
    area) becomes white."""
    if rgba[..., 3].min(initial=255) == 255:  # opaque (the tissue of most slides): the same pixels, no arithmetic
        return np.ascontiguousarray(rgba[..., :3])
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _mpp_from_tiff_props(props) -> float | None:
    unit = props.get("tiff.ResolutionUnit")
    xres = props.get("tiff.XResolution")
    if not unit or not xres:
        return None
    try:
        per = float(xres)
    except ValueError:
        return None
    factor = {"centimeter": 10000.0, "inch": 25400.0}.get(unit.lower())
    if not factor or per <= 0:
        return None
    mpp = factor / per
    return mpp if MPP_RANGE[0] <= mpp <= MPP_RANGE[1] else None


def _slide_stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
