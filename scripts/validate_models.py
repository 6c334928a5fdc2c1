"""Model files scored by the trainer's own validation measure (``train.validate``: the mean over a prepared
folder's validation sets of F1@0.5 and centroid F1, at the best of the trainer's thresholds), so that a
checkpoint, a fine-tune and the shipped model compare on the number that chose them.

    .venv/bin/python scripts/validate_models.py src/wsinuclei/weights/star_default.safetensors \
        runs/star_20x/best.safetensors --data runs/prepared_contours
    ... --val-read-mpp 0.5      # the validation images also read at 20x, as sets of their own
    ... --data runs/prepared_types --at-model-mpp     # typed models, as their recipe validates them

Prints one JSON line per model (figures rounded to 4 places) and writes them to --json when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from wsinuclei.checkpoint import load_model
    from wsinuclei.train import validate, validation_tiles

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model files (safetensors)")
    ap.add_argument("--data", required=True, help="a prepared folder (wsinuclei prepare)")
    ap.add_argument("--val-read-mpp", type=float, nargs="*", default=[],
                    help="also score every validation image read at these µm/px (as training's val_read_mpp)")
    ap.add_argument("--at-model-mpp", action="store_true",
                    help="enlarge coarser validation images (20x centre sets) to the model's µm/px, as training's "
                    "val_at_model_mpp (the typed model's recipe) does")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows, tiles = [], {}
    for path in args.models:
        loaded = load_model(path)
        if loaded.input_channels not in tiles:  # one set of images per input kind
            tiles[loaded.input_channels] = validation_tiles(args.data, loaded.input_channels, args.val_read_mpp,
                                                            at_mpp=loaded.mpp if args.at_model_mpp else None)
        v = validate(loaded.model, tiles[loaded.input_channels])
        row = {"model": path, **{k: round(x, 4) if isinstance(x, float) else x for k, x in v.items()}}
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
