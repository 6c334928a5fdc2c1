#!/usr/bin/env python
"""A fine-tuned model's weights moved back toward the model it was fine-tuned from: every parameter the two files
share (same name and shape) becomes ``alpha * fine_tuned + (1 - alpha) * start``, and what only the fine-tuned
file has (a type branch) is kept as it is; the fine-tuned file's settings are kept. Weight-space ensembling of a
fine-tune with its start (WiSE-FT, Wortsman et al. 2022): the start's accuracy on what the fine-tune did not
train for, most of the fine-tune's gain. Score the result with scripts/validate_models.py.

    .venv/bin/python scripts/interpolate_weights.py runs/star_types_joint2/best.safetensors \
        src/wsinuclei/weights/star_default.safetensors --alpha 0.5 --out runs/star_types_wise/a050.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from average_weights import save_weights  # noqa: E402


def main() -> int:
    from wsinuclei.checkpoint import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fine_tuned", help="the fine-tuned model file (its settings and extra parts are kept)")
    ap.add_argument("start", help="the model file it was fine-tuned from")
    ap.add_argument("--alpha", type=float, required=True, help="1: the fine-tuned weights, 0: the start's")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not 0 <= args.alpha <= 1:
        ap.error("--alpha must be from 0 to 1")
    tuned, start = load_model(args.fine_tuned), load_model(args.start)
    a, b = tuned.model.state_dict(), start.model.state_dict()
    mixed, shared = {}, 0
    for key, value in a.items():
        if key in b and b[key].shape == value.shape and value.is_floating_point():
            mixed[key] = args.alpha * value.float() + (1 - args.alpha) * b[key].float()
            shared += 1
        else:
            mixed[key] = value
    if not shared:
        print(f"error: {args.fine_tuned} and {args.start} share no parameters", file=sys.stderr)
        return 2
    save_weights(tuned, mixed, args.out,
                 {"interpolated": {"fine_tuned": args.fine_tuned, "start": args.start, "alpha": args.alpha}})
    print(f"wrote {args.out}: {shared} of {len(a)} tensors interpolated at alpha {args.alpha:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
