#!/usr/bin/env python
"""Turn a training run's last.pt (the full training state) into a model file, for when the final step rather
than best.safetensors is wanted.

    .venv/bin/python scripts/last_to_model.py runs/fast runs/fast/step6000.safetensors
"""

import json
import sys
from pathlib import Path

import torch

from wsinuclei.checkpoint import save_model
from wsinuclei.models import DetectorConfig, build_detector


def main(run_dir: str, out: str) -> None:
    run = json.loads((Path(run_dir) / "run.json").read_text())
    config = DetectorConfig.from_dict(run["preset"])
    manifest = json.loads((Path(run["prepared"]) / "manifest.json").read_text())
    model = build_detector(config)
    ckpt = torch.load(Path(run_dir) / "last.pt", weights_only=True)
    model.load_state_dict(ckpt["model"])
    save_model(model, config, out, target_mu=manifest["target_mu"], target_sigma=manifest["target_sigma"], half=False,
               extra={"command": run["command"], "step": int(ckpt["step"]), "seed": run["seed"]})
    print(f"wrote {out} (step {ckpt['step']})")


if __name__ == "__main__":
    main(*sys.argv[1:3])
