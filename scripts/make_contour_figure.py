#!/usr/bin/env python
"""The README's contour figure: a crop of one MoNuSeg test image with the shipped model's contours (from the
GeoJSON `wsinuclei detect` wrote) in green and the annotated outlines (the image's XML) in red.

    .venv/bin/python scripts/make_contour_figure.py --pred out/sets/contours/monuseg_test/pred \
        --image TCGA-44-2665-01B-06-BS6 --out docs/images/contours_example.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from wsinuclei.annotations import read_aperio_xml, read_geojson
    from wsinuclei.data import load_image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pred", required=True, help="folder with NAME.geojson from wsinuclei detect")
    ap.add_argument("--image", default="TCGA-44-2665-01B-06-BS6")
    ap.add_argument("--test", default=str(ROOT.parent / "shared" / "data" / "monuseg" / "test"))
    ap.add_argument("--crop", default="250,250,450", help="x,y,size of the crop (image pixels)")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--out", default="docs/images/contours_example.jpg")
    args = ap.parse_args()
    x0, y0, size = (int(v) for v in args.crop.split(","))
    img = load_image(Path(args.test) / f"{args.image}.tif")[y0:y0 + size, x0:x0 + size]
    k = args.scale
    canvas = Image.fromarray(img).convert("RGB").resize((size * k, size * k), Image.LANCZOS)
    d = ImageDraw.Draw(canvas)
    truth = read_aperio_xml(Path(args.test) / f"{args.image}.xml")
    for poly in truth.polygons:
        pts = [((px - x0) * k, (py - y0) * k) for px, py in np.asarray(poly)]
        if len(pts) > 2:
            d.line(pts + pts[:1], fill=(220, 30, 30), width=2)
    pred = read_geojson(Path(args.pred) / f"{args.image}.geojson")
    for poly in pred.polygons:
        pts = [((px - x0) * k, (py - y0) * k) for px, py in np.asarray(poly)]
        if len(pts) > 2:
            d.line(pts + pts[:1], fill=(20, 200, 40), width=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, quality=88)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
