"""Stain operations: Reinhard colour normalisation and Ruifrok colour deconvolution.

These follow HistomicsTK 1.4.0 (``histomicstk.preprocessing``) function by function, with the same names and
the same numerical results (tested against ``shared/reference/stain_reference.npz``), so figures and
parameters from HistomicsTK-based work carry over. HistomicsTK itself is not installable from PyPI alone.

Every function takes numpy arrays. The pipeline normalises tiles in its reader threads through ``ReinhardTable``
(``reinhard``'s output bit for bit, from a per-colour table).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

# Ruderman et al. lαβ space: RGB -> LMS (cone responses), log, then a decorrelating rotation.
_RGB2LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LMS2LAB = np.dot(
    np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]),
    np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]]),
)
_LMS2RGB = np.linalg.inv(_RGB2LMS)
_LAB2LMS = np.linalg.inv(_LMS2LAB)

#: Ruifrok & Johnston stain vectors (optical density of each stain in R, G, B), as HistomicsTK's
#: ``stain_color_map``. The "null" stain marks a column to be completed by cross product.
STAIN_COLOR_MAP: dict[str, list[float]] = {
    "hematoxylin": [0.65, 0.70, 0.29],
    "eosin": [0.07, 0.99, 0.11],
    "dab": [0.27, 0.57, 0.78],
    "null": [0.0, 0.0, 0.0],
}

#: The default H&E matrix (columns hematoxylin, eosin, null).
STAIN_MATRIX_HE = np.array(
    [STAIN_COLOR_MAP["hematoxylin"], STAIN_COLOR_MAP["eosin"], STAIN_COLOR_MAP["null"]]
).T


def _mul3(pixels: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(N, 3) pixels times a 3x3 matrix, transposed: ``pixels @ m.T``. einsum's own loop, not BLAS: with a
    3-wide inner dimension BLAS gains nothing, and its spinning threads fight torch's for the cores."""
    return np.einsum("nj,ij->ni", pixels, m)


def rgb_to_lab(im_rgb: np.ndarray) -> np.ndarray:
    """RGB (any range, usually uint8 0-255) -> Ruderman lαβ, natural log. Shape (..., 3) kept."""
    shape = im_rgb.shape
    return _mul3(_log_lms(np.reshape(im_rgb, (-1, 3))), _LMS2LAB).reshape(shape)


def _log_lms(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) RGB -> natural log of LMS, float64 (the first half of :func:`rgb_to_lab`)."""
    lms = _mul3(rgb.astype(np.float64), _RGB2LMS)
    lms[lms == 0] = np.spacing(1)  # black pixels: log(0) would be -inf
    return np.log(lms)


def lab_to_rgb(im_lab: np.ndarray) -> np.ndarray:
    """Ruderman lαβ -> RGB as float (not clipped), the inverse of :func:`rgb_to_lab`."""
    shape = im_lab.shape
    lms = np.exp(_mul3(np.reshape(im_lab, (-1, 3)), _LAB2LMS))
    return _mul3(lms, _LMS2RGB).reshape(shape)


def lab_mean_std(
    im_input: np.ndarray, im_lab: np.ndarray | None = None, mask_out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of each lαβ channel.

    ``mask_out`` (bool, True = ignore) leaves pixels out, as in HistomicsTK.

    From RGB, lαβ is a fixed linear map of log LMS, so its mean and variance follow from log LMS's mean and
    3x3 covariance: the second matrix product and the strided σ over a million pixels are not computed (the
    same figures to about 1e-15, ``tests/test_stain.py``; colour statistics are taken at the start of every slide).
    """
    if im_lab is not None:
        pixels = im_lab.reshape(-1, 3)
    else:
        pixels = np.reshape(im_input, (-1, 3))
    if mask_out is not None:
        pixels = pixels[~np.asarray(mask_out, dtype=bool).ravel()]
    if pixels.shape[0] == 0:
        raise ValueError("lab_mean_std: every pixel is masked out")
    if im_lab is not None:
        return pixels.mean(axis=0), pixels.std(axis=0)
    log_lms = _log_lms(pixels)
    mu = log_lms.mean(axis=0)
    centred = log_lms - mu
    cov = (centred.T @ centred) / len(centred)
    variance = np.einsum("ij,jk,ik->i", _LMS2LAB, cov, _LMS2LAB)
    return _LMS2LAB @ mu, np.sqrt(np.maximum(variance, 0.0))


#: Lowest source σ, as a share of the target's (real H&E tissue is well above it: σ ratios 0.6-2).
SIGMA_FLOOR = 0.25


def reinhard(
    im_src: np.ndarray,
    target_mu,
    target_sigma,
    src_mu=None,
    src_sigma=None,
    mask_out: np.ndarray | None = None,
) -> np.ndarray:
    """Reinhard colour normalisation: match lαβ mean and std to a target. Returns uint8 RGB.

    Pass ``src_mu``/``src_sigma`` computed once per slide (see :func:`wsinuclei.colour_stats.tissue_lab_stats`); computing them
    per tile makes the colour, and so the detections, drift from tile to tile.
    """
    im_lab = rgb_to_lab(im_src)
    if src_mu is None or src_sigma is None:
        src_mu, src_sigma = lab_mean_std(im_src, im_lab=im_lab)
    src_mu, src_sigma = np.asarray(src_mu, float), np.asarray(src_sigma, float)
    target_mu, target_sigma = np.asarray(target_mu, float), np.asarray(target_sigma, float)
    # A blank or saturated source has σ = 0 (NaN, then an all-black tile) and a near-uniform one would have
    # its noise stretched over 0-255: never stretch by more than 1 / SIGMA_FLOOR.
    src_sigma = np.maximum(src_sigma, SIGMA_FLOOR * target_sigma)
    im_lab = (im_lab - src_mu) / src_sigma * target_sigma + target_mu
    out = np.clip(lab_to_rgb(im_lab), 0, 255)
    if mask_out is not None:
        mask = np.asarray(mask_out, dtype=bool)
        out[mask] = im_src[mask]
    return out.astype(np.uint8)


def _distinct(codes: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """The distinct 24-bit colour codes among ``codes``, in no particular order. Few are sorted (``np.unique``);
    many (an upsampled tile's interpolated colours: up to a million) go through ``owner``, a scratch table of
    2^24 int32 that each code's positions write their index to: the one position whose index survives
    represents its code. Two passes over the codes instead of a sort, or a scan of 2^24 entries per tile."""
    if len(codes) < 100_000:
        return np.unique(codes)
    index = np.arange(len(codes), dtype=np.int32)
    owner[codes] = index
    return codes[owner[codes] == index]


class ReinhardTable:
    """:func:`reinhard` with fixed source and target statistics, remembered per colour. Reinhard is then a
    function of each pixel's RGB alone, so every colour met is computed once and looked up after: a slide's
    tiles share most of their colours, and a 1024² tile costs a gather instead of two colour-space
    conversions. Exactly :func:`reinhard`'s output (the same function, on the same colours). A 2^24 table of
    packed RGB (64 MiB) per slide and process, and for each reader thread that meets many new colours at once a
    2^24 scratch table (up to 64 MiB more, touched only where written: ``_distinct``); safe to share between
    reader threads (a colour computed twice is written twice with the same value)."""

    UNKNOWN = np.uint32(0xFFFFFFFF)

    def __init__(self, target_mu, target_sigma, src_mu, src_sigma):
        self.args = (target_mu, target_sigma, src_mu, src_sigma)
        self.table = np.full(1 << 24, self.UNKNOWN, np.uint32)
        self._scratch = threading.local()  # each reader thread's ``_distinct`` table (never shared: it is written)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb)[..., :3]
        codes = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
        packed = self.table[codes]
        unknown = packed == self.UNKNOWN
        if unknown.any():
            missing = codes[unknown]
            owner = getattr(self._scratch, "owner", None)
            if owner is None and len(missing) >= 100_000:
                owner = self._scratch.owner = np.empty(1 << 24, np.int32)  # pages are touched only where written
            new = _distinct(missing, owner)
            cols = np.stack([(new >> 16) & 255, (new >> 8) & 255, new & 255], axis=-1).astype(np.uint8)[None]
            out = reinhard(cols, *self.args)[0].astype(np.uint32)
            self.table[new] = (out[:, 0] << 16) | (out[:, 1] << 8) | out[:, 2]
            packed[unknown] = self.table[missing]
        result = np.empty(rgb.shape, np.uint8)
        result[..., 0] = packed >> 16
        result[..., 1] = (packed >> 8) & 255
        result[..., 2] = packed & 255
        return result


def normalize_columns(w: np.ndarray) -> np.ndarray:
    """Each column scaled to unit norm (all-zero columns stay zero)."""
    norms = np.linalg.norm(w, axis=0)
    norms[norms == 0] = 1.0
    return w / norms


def complement_stain_matrix(w: np.ndarray) -> np.ndarray:
    """Replace the third column by the unit cross product of the first two."""
    stain0, stain1 = w[:, 0], w[:, 1]
    stain2 = np.cross(stain0, stain1)
    return np.array([stain0, stain1, stain2 / np.linalg.norm(stain2)]).T


def rgb_to_sda(im_rgb: np.ndarray, I_0=None, allow_negatives: bool = False) -> np.ndarray:
    """RGB -> scaled optical density (SDA), as HistomicsTK. ``I_0=None`` is its optical-density mode."""
    im = np.asarray(im_rgb, dtype=np.float64)
    if I_0 is None:
        im = im + 1
        I_0 = 256
    if not allow_negatives:
        im = np.minimum(im, I_0)
    return -np.log(im / (1.0 * I_0)) * 255 / np.log(I_0)


def sda_to_rgb(im_sda: np.ndarray, I_0=None) -> np.ndarray:
    """Inverse of :func:`rgb_to_sda`."""
    od_mode = I_0 is None
    if od_mode:
        I_0 = 256
    return I_0 ** (1 - np.asarray(im_sda) / 255.0) - (1 if od_mode else 0)


@dataclass
class Unmixed:
    """Result of :func:`color_deconvolution`: field names as HistomicsTK's namedtuple."""

    Stains: np.ndarray
    StainsFloat: np.ndarray
    Wc: np.ndarray

    def __iter__(self):
        return iter((self.Stains, self.StainsFloat, self.Wc))


def color_deconvolution(im_rgb: np.ndarray, stain_matrix: np.ndarray, I_0=None) -> Unmixed:
    """Ruifrok colour deconvolution.

    ``stain_matrix`` holds one stain vector per column; an all-zero third column is completed by cross
    product. Returns the stain images as uint8 and float (each channel an RGB-like intensity, dark = much
    stain) and the completed, unit-normalised matrix.
    """
    w = np.asarray(stain_matrix, dtype=np.float64)
    wc = complement_stain_matrix(w) if np.linalg.norm(w[:, 2]) <= 1e-16 else w
    wc = normalize_columns(wc)
    q = np.linalg.pinv(wc)
    rgb = np.asarray(im_rgb)[..., :3].reshape(-1, 3)
    sda = rgb_to_sda(rgb, I_0)  # (N, 3)
    deconv = _mul3(sda, q)
    stains_float = sda_to_rgb(deconv, 255 if I_0 is not None else None).reshape(im_rgb.shape[:-1] + (3,))
    return Unmixed(stains_float.clip(0, 255).astype(np.uint8), stains_float, wc)


_SDA_OF_UINT8 = None  # rgb_to_sda of 0..255, filled on first use


def stain_images(im_rgb: np.ndarray, stain_matrix: np.ndarray, channels=(0, 1)) -> np.ndarray:
    """``color_deconvolution(im_rgb, stain_matrix).Stains[..., channels]`` for a uint8 image, bit for bit, at
    less cost: the optical density of each 0-255 value comes from a table, only the wanted
    stains are converted back, and the power of that conversion is taken per bucket of densities
    (:func:`sda_to_uint8`)."""
    global _SDA_OF_UINT8
    im = np.asarray(im_rgb)[..., :3]
    if im.dtype != np.uint8:
        return color_deconvolution(im, stain_matrix).Stains[..., list(channels)]
    if _SDA_OF_UINT8 is None:
        _SDA_OF_UINT8 = rgb_to_sda(np.arange(256))
    w = np.asarray(stain_matrix, dtype=np.float64)
    wc = normalize_columns(complement_stain_matrix(w) if np.linalg.norm(w[:, 2]) <= 1e-16 else w)
    q = np.linalg.pinv(wc)[list(channels)]
    flat = im.reshape(-1, 3)
    if not np.array_equal(w, STAIN_MATRIX_HE):
        return sda_to_uint8(np.einsum("nj,ij->ni", _SDA_OF_UINT8[flat], q)).reshape(im.shape[:-1] + (len(channels),))
    # H&E (the features' matrix): each stain's density as three lookups in 256-entry tables of q * SDA, added.
    # The sum's order is not einsum's, so a density may differ in its last bit; the stain values (uint8) do not:
    # tests/test_feature_windows.py compares them with the full deconvolution on all 2^24 colours.
    parts = q[:, :, None] * _SDA_OF_UINT8[None, None, :]
    out = np.empty((len(flat), len(channels)), np.uint8)
    for k in range(len(channels)):
        d = parts[k, 0][flat[:, 0]]
        d += parts[k, 1][flat[:, 1]]
        d += parts[k, 2][flat[:, 2]]
        out[:, k] = sda_to_uint8(d)
    return out.reshape(im.shape[:-1] + (len(channels),))


#: :func:`sda_to_uint8`'s buckets: 1/256 of an SDA unit wide over [0, 224) (SDA >= 223.125 is stain value 0, <= 0
#: is 255), a power of two so that a value's bucket is exact
_BUCKETS_PER_UNIT, _BUCKET_END = 256.0, 224
_UINT8_OF_BUCKET = None  # the stain value of every SDA in a bucket, or 256 where it changes inside the bucket


def _bucket_table() -> np.ndarray:
    n = int(_BUCKET_END * _BUCKETS_PER_UNIT)
    left = np.arange(n) / _BUCKETS_PER_UNIT
    right = np.nextafter((np.arange(n) + 1) / _BUCKETS_PER_UNIT, -np.inf)  # the bucket's last double
    v0, v1 = sda_to_rgb(left), sda_to_rgb(right)
    # the value falls with the SDA, so a bucket whose two ends truncate alike holds one value throughout; ends
    # within 1e-6 of a whole number are left to the formula as well, so the power's last-bit rounding cannot
    # make a bucket's inside truncate differently from its ends
    near = lambda v: np.abs(v - np.round(v)) < 1e-6  # noqa: E731
    changes = (np.floor(np.clip(v0, 0, 255)) != np.floor(np.clip(v1, 0, 255))) | near(v0) | near(v1)
    return np.where(changes, np.uint16(256), v0.clip(0, 255).astype(np.uint8).astype(np.uint16))


def sda_to_uint8(sda: np.ndarray) -> np.ndarray:
    """``sda_to_rgb(sda).clip(0, 255).astype(np.uint8)``, bit for bit, without a power per value: the power is
    taken once per bucket of SDA values (a table of 57,344, made on first use from that same formula), and by the
    formula itself only for the values in the 0.5 % of buckets where the truncated result changes."""
    global _UINT8_OF_BUCKET
    if _UINT8_OF_BUCKET is None:
        _UINT8_OF_BUCKET = _bucket_table()
    sda = np.asarray(sda, dtype=np.float64)
    n = len(_UINT8_OF_BUCKET)
    x = sda * _BUCKETS_PER_UNIT  # exact (a power of two), so each value lands in its own bucket
    below, above = x < 0, x >= n
    np.clip(x, 0, n - 1, out=x)
    v = _UINT8_OF_BUCKET[x.astype(np.intp)]
    v[below] = 255
    v[above] = 0
    out = v.astype(np.uint8)
    inside = v == 256
    if inside.any():
        out[inside] = sda_to_rgb(sda[inside]).clip(0, 255).astype(np.uint8)
    return out


def hed_jitter(im_rgb: np.ndarray, scale, shift, stain_matrix: np.ndarray = STAIN_MATRIX_HE) -> np.ndarray:
    """Stain augmentation in H&E optical-density space (Tellez et al. 2018): deconvolve (Ruifrok), multiply
    each stain's density by ``scale[i]`` and add ``shift[i]`` (in 0-1 optical-density units), recompose.
    ``scale`` 1 and ``shift`` 0 return the image (to rounding). uint8 RGB in and out."""
    w = np.asarray(stain_matrix, dtype=np.float64)
    wc = normalize_columns(complement_stain_matrix(w) if np.linalg.norm(w[:, 2]) <= 1e-16 else w)
    q = np.linalg.pinv(wc)
    shape = im_rgb.shape
    sda = rgb_to_sda(np.asarray(im_rgb)[..., :3].reshape(-1, 3))
    dens = _mul3(sda, q) * np.asarray(scale, float) + np.asarray(shift, float) * 255
    rgb = sda_to_rgb(_mul3(dens, wc))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(shape)


def hematoxylin_channel(im_rgb: np.ndarray, stain_matrix: np.ndarray = STAIN_MATRIX_HE) -> np.ndarray:
    """The hematoxylin (nuclear) stain image, uint8, stacked to three channels as the original study fed
    its detector."""
    h = color_deconvolution(im_rgb, stain_matrix).Stains[..., 0]
    return np.repeat(h[..., None], 3, axis=-1)


def model_input(normalised_rgb: np.ndarray, input_channels: str) -> np.ndarray:
    """A Reinhard-normalised tile -> what a model takes: the tile itself (``rgb``) or its hematoxylin
    channel stacked x3 (``hematoxylin``). Training, validation and inference all go through here."""
    if input_channels == "rgb":
        return normalised_rgb
    if input_channels == "hematoxylin":
        return hematoxylin_channel(normalised_rgb)
    raise ValueError(f"unknown input_channels '{input_channels}'")


#: The Reinhard target used by the shipped model: HistomicsTK's documented example target
#: (the lαβ statistics of its reference H&E image), so results compare with HistomicsTK's pipeline.
DEFAULT_TARGET_MU = (8.63234435, -0.11501964, 0.03868433)
DEFAULT_TARGET_SIGMA = (0.57506023, 0.10403329, 0.01364062)
