"""Model files scored by the trainer's own validation measure (``train.validate``: the mean over a prepared
folder's validation sets of F1@0.5 and centroid F1, at the best of the trainer's thresholds), so that a
checkpoint, a fine-tune and the shipped model compare on the number that chose them.

    .venv/bin/python scripts/validate_models.py src/wsinuclei/weights/star_default.safetensors \
        runs/star_20x/best.safetensors --data runs/prepared_contours
    ... --val-read-mpp 0.5      # the validation images also read at 20x, as sets of their own

Prints one JSON line per model (figures rounded to 4 places) and writes them to --json when given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from wsinuclei.checkpoint import load_model
    from wsinuclei.data import as_read_at, load_tiles
    from wsinuclei.stain import model_input
    from wsinuclei.train import validate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model files (safetensors)")
    ap.add_argument("--data", required=True, help="a prepared folder (wsinuclei prepare)")
    ap.add_argument("--val-read-mpp", type=float, nargs="*", default=[],
                    help="also score every validation image read at these µm/px (as training's val_read_mpp)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    val = load_tiles(args.data, "val_full")
    val += [r for mpp in args.val_read_mpp for r in as_read_at(val, mpp)]
    rows = []
    for path in args.models:
        loaded = load_model(path)
        tiles = [dataclasses.replace(t, image=model_input(t.image, loaded.input_channels)) for t in val]
        v = validate(loaded.model, tiles)
        row = {"model": path, **{k: round(x, 4) if isinstance(x, float) else x for k, x in v.items()}}
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
