#!/usr/bin/env python
"""Network FLOPs per 1024x1024 tile and parameters of star presets or recipes (torch.utils.flop_counter; the
whole network, trunk, FPN and head, not decoding or reading; R-CNN presets' cost depends on their proposals):

    .venv/bin/python scripts/count_flops.py star experiments/recipes/star_deeper.toml
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from wsinuclei.models import build_detector, count_parameters, load_preset


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="+", help="preset names or recipe files")
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    print("| preset | GFLOP per tile | parameters |\n|---|---|---|")
    for name in args.presets:
        config = load_preset(name)
        if not config.is_star:
            ap.error(f"{name}: not a star preset")
        model = build_detector(config).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model.backbone(torch.zeros(1, 3, args.size, args.size))
        print(f"| {name} | {fc.get_total_flops() / 1e9:.1f} | {count_parameters(model):,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
