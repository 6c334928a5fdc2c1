"""Choose a model's detection filter (filters.py: nested boxes, minimum area) on the validation images of a
prepared folder, all sets together; never on test images.

    .venv/bin/python scripts/tune_postprocess.py --model src/wsinuclei/weights/fast_default.safetensors \\
        --data runs/prepared_contours

Prints, per setting, the validation score (mean over sets, as training's validation) and each set's figures.
"""

from __future__ import annotations

import argparse
import itertools

from wsinuclei.checkpoint import load_model
from wsinuclei.data import load_tiles
from wsinuclei.filters import DetectionFilter
from wsinuclei.stain import model_input
from wsinuclei.train import predict_images, score_predictions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a prepared folder (wsinuclei prepare)")
    ap.add_argument("--nested", type=float, nargs="*", default=[0.0, 0.6, 0.7, 0.8, 0.9])
    ap.add_argument("--min-area", type=float, nargs="*", default=[0.0, 4.0, 8.0, 12.0])
    ap.add_argument("--nms", type=float, nargs="*", default=None,
                    help="star models: the NMS thresholds (box IoU) to try; default: the model's own")
    args = ap.parse_args()
    m = load_model(args.model)
    tiles = load_tiles(args.data, "val_full")
    for t in tiles:
        t.image = model_input(t.image, m.input_channels)
    if args.nms and not m.config.is_star:
        ap.error("--nms applies to star models only")
    for nms in args.nms or [None]:
        if nms is not None:
            m.model.decoding.nms_thresh = nms
            print(f"NMS at box IoU {nms}:", flush=True)
        preds = [(b, m.calibrate(s)) for b, s in predict_images(m.model, [t.image for t in tiles])]
        report(preds, tiles, m, args)
    return 0


def report(preds, tiles, m, args) -> None:
    for nested, area in itertools.product(args.nested, args.min_area):
        f = DetectionFilter(nested, area)
        kept = [(b[k], s[k]) for (b, s), t in zip(preds, tiles)
                for k in [f.keep(b, s, t.mpp or m.mpp)]]
        v = score_predictions(tiles, kept)
        per_set = ", ".join(f"{k[4:]} {val:.3f}" for k, val in v.items() if k.endswith("_f1") and k != "val_f1")
        print(f"nested {nested:.1f} min area {area:4.1f} µm²: score {v['val_f1']:.4f} at {v['val_threshold']} | {per_set}",
              flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
