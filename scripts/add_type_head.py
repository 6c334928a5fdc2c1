#!/usr/bin/env python
"""A parent model file with a type branch trained on its frozen network (``[train] train_only``): the parent's
file as it ships (its decoding settings, filter, score calibration and colour target), its weights unchanged,
plus the trained run's type branch and type settings. The detection of the result is the parent's, weight for
weight (checked: the run's copy of every parent weight must be the parent's, or the branch was not trained on
the frozen network). The result carries no INT8 network: make one with ``wsinuclei export --int8``.

    .venv/bin/python scripts/add_type_head.py src/wsinuclei/weights/star_default.safetensors \\
        runs/star_types_fused/best.safetensors --out runs/star_types_fused/typed_fp32.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

TYPE_KEYS = ("n_types", "type_channels", "type_level", "type_from_head", "type_weight", "type_names")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parent", help="the model file the type branch was trained on (frozen)")
    ap.add_argument("trained", help="the training run's best.safetensors")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from wsinuclei.checkpoint import load_model, save_model
    from wsinuclei.models import DetectorConfig, build_detector
    from wsinuclei.errors import WsinucleiError

    try:
        parent, trained = load_model(a.parent), load_model(a.trained)
    except WsinucleiError as exc:
        print(f"add_type_head: error: {exc}", file=sys.stderr)
        return 2
    if not trained.config.star_head or not int(trained.config.star_head.get("n_types", 0)):
        print(f"add_type_head: error: {a.trained} has no type head", file=sys.stderr)
        return 2
    raw = copy.deepcopy(parent.config.raw)
    raw["star_head"].update({k: v for k, v in trained.config.star_head.items() if k in TYPE_KEYS})
    raw["name"] = trained.config.name
    raw["description"] = trained.config.description
    config = DetectorConfig.from_dict(raw)
    model = build_detector(config)
    parent_state = parent.model.state_dict()
    trained_state = load_file(a.trained)
    for k, v in parent_state.items():
        if not torch.equal(trained_state[k].float(), v.float()):
            print(f"add_type_head: error: {a.trained} changed the parent's weight {k}: its type branch was not "
                  "trained on the frozen network", file=sys.stderr)
            return 2
    state = {**parent_state, **{k: trained_state[k].float() for k in model.state_dict() if k not in parent_state}}
    model.load_state_dict(state)
    extra = {k: v for k, v in parent.extra.items() if k != "int8"}
    extra.update(type_head_from={"file": str(a.trained), "step": trained.extra.get("step"),
                                 "validation": trained.extra.get("validation"),
                                 "command": trained.extra.get("command")},
                 exported_from=str(a.parent))
    save_model(model, config, a.out, target_mu=parent.target_mu, target_sigma=parent.target_sigma, half=False,
               extra=extra)
    print(json.dumps({"out": a.out, "type_keys": {k: raw["star_head"][k] for k in TYPE_KEYS if k in raw["star_head"]}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
