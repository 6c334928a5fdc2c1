#!/usr/bin/env python
"""The element-wise mean of several model files' weights (same preset), written as one model file: the weight
averaging of stochastic weight averaging (Izmailov et al. 2018), applied to the ends of training cycles that
started from one model (e.g. two warm restarts). The first file's settings (preset, colour target) are kept;
the others must have the same parameters. Score the result with scripts/validate_models.py.

    .venv/bin/python scripts/average_weights.py runs/star_restart/best.safetensors \
        runs/star_restart2/best.safetensors --out runs/star_swa/average.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def save_weights(loaded, state: dict, out, extra: dict) -> None:
    """``loaded``'s network with ``state`` as its weights, written in float32 with the file's settings (preset,
    colour target) and ``extra`` added to its record (also scripts/interpolate_weights.py)."""
    from wsinuclei.checkpoint import save_model

    loaded.model.load_state_dict(state)
    save_model(loaded.model, loaded.config, out, target_mu=loaded.target_mu, target_sigma=loaded.target_sigma,
               half=False, extra=extra)


def main() -> int:
    import torch

    from wsinuclei.checkpoint import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="two or more model files of one preset")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if len(args.models) < 2:
        ap.error("give at least two model files to average")
    loaded = [load_model(p) for p in args.models]
    first = loaded[0]
    states = [m.model.state_dict() for m in loaded]
    for path, m, state in zip(args.models[1:], loaded[1:], states[1:]):
        if m.config.to_dict()["name"] != first.config.to_dict()["name"] or state.keys() != states[0].keys():
            print(f"error: {path} is not the same network as {args.models[0]}", file=sys.stderr)
            return 2
    mean = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            mean[key] = torch.stack([s[key].float() for s in states]).mean(0)
        else:  # counters and the like: the first file's
            mean[key] = value
    save_weights(first, mean, args.out, {"averaged": list(args.models)})
    print(f"wrote {args.out}: mean of {len(args.models)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
