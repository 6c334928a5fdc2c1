"""The feature pass's whole-image steps, each timed alone on one real 1,000 x 1,000 H&E image (a MoNuSeg training
image): the colour deconvolution into the two stain images (``stain.stain_images``), and the steps of the Canny
edges of one stain image (Gaussian, the bleed-over correction, the two Sobel filters, the magnitude, the
non-maximum suppression, the hysteresis labelling, and ``edges.canny_window`` whole), and ``np.gradient``; median
of ``--repeats``, one thread, milliseconds. Run another checkout's code with ``PYTHONPATH=OTHER/src``. Quiet
machine only.

    .venv/bin/python scripts/profile_feature_steps.py [--repeats 15] [--json out/profile_feature_steps.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_slide import machine, print_json  # noqa: E402


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=str(ROOT.parent / "shared" / "data" / "monuseg" / "train" /
                                           "TCGA-18-5592-01Z-00-DX1.png"))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from PIL import Image
    from scipy import ndimage as ndi

    import wsinuclei
    from wsinuclei import stain
    from wsinuclei.features import edges as E

    im = np.ascontiguousarray(np.asarray(Image.open(a.image).convert("RGB"))[:1000, :1000])
    stain.stain_images(im[:8], stain.STAIN_MATRIX_HE, (0, 1))  # first-use tables
    h = np.ascontiguousarray(stain.stain_images(im, stain.STAIN_MATRIX_HE, (0,))[..., 0], dtype=np.float64)
    smoothed = ndi.gaussian_filter(h, **E._GAUSS)
    js, isb = ndi.sobel(smoothed, axis=1), ndi.sobel(smoothed, axis=0)
    mag = np.sqrt(isb * isb + js * js)
    inner = np.ones(h.shape, bool)
    nms = np.asarray(E._nonmaximum_suppression_bilinear(isb, js, mag, inner, E.LOW))
    divide = getattr(E, "_divide_by_bleed_over", None) or (lambda x: x.__itruediv__(E._bleed_over(x.shape)))
    ms = {
        "deconvolution (two stain images)": timed(lambda: stain.stain_images(im, stain.STAIN_MATRIX_HE, (0, 1)), a.repeats),
        "Canny: Gaussian": timed(lambda: ndi.gaussian_filter(h, **E._GAUSS), a.repeats),
        "Canny: bleed-over correction": timed(lambda: divide(smoothed.copy()), a.repeats),
        "Canny: two Sobel filters": timed(lambda: (ndi.sobel(smoothed, axis=1), ndi.sobel(smoothed, axis=0)), a.repeats),
        "Canny: magnitude": timed(lambda: np.sqrt(isb * isb + js * js), a.repeats),
        "Canny: non-maximum suppression": timed(
            lambda: E._nonmaximum_suppression_bilinear(isb, js, mag, inner, E.LOW), a.repeats),
        "Canny: hysteresis labelling": timed(lambda: ndi.label(nms > 0, np.ones((3, 3), bool)), a.repeats),
        "Canny of one stain image, whole (canny_window)": timed(
            lambda: E.canny_window(h, slice(6, 994), slice(6, 994), h.shape, lambda: h), a.repeats),
        "np.gradient of one stain image": timed(lambda: np.gradient(h), a.repeats),
    }
    print_json({"machine": machine(), "code": str(Path(wsinuclei.__file__).parent), "image": a.image,
                "repeats": a.repeats, "ms_median": ms}, a.json)


if __name__ == "__main__":
    main()
