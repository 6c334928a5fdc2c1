"""Training loop for the nuclei detector: seeded, logged, resumable exactly.

State lives in ``RUN_DIR``: ``last.pt`` (weights, optimiser, schedule, step and every random state;
loaded with ``weights_only=True``), ``log.csv`` (losses every ``log_every`` steps, validation figures at each
evaluation), ``best.safetensors`` (the model with the best validation F1 so far) and ``run.json`` (settings
and the command). Rerunning with ``--resume`` continues from ``last.pt`` and draws the same crops it would
have drawn without the interruption.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from . import evaluate
from .checkpoint import save_model
from .data import CropSampler, load_split
from .errors import WsinucleiError
from .models import DetectorConfig, build_detector

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


def lr_at(step: int, base: float, warmup: int, milestones, gamma: float = 0.1) -> float:
    """Linear warm-up from base/100 then step decay at each milestone."""
    factor = gamma ** sum(step >= m for m in milestones)
    if warmup and step < warmup:
        factor *= 0.01 + 0.99 * step / warmup
    return base * factor


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


@torch.inference_mode()
def predict_images(model, images, device="cpu"):
    """Eval-mode predictions for whole images (already preprocessed uint8 HWC)."""
    model.eval()
    out = []
    for img in images:
        res = model([to_tensor(img).to(device)])[0]
        out.append((res["boxes"].cpu().numpy().astype(np.float64), res["scores"].cpu().numpy().astype(np.float64)))
    return out


def validate(model, val_images, device="cpu", score_threshold=0.5) -> dict:
    preds = predict_images(model, [im for _, im, _ in val_images], device)
    res = evaluate.evaluate_set(
        ((n, p, s, t) for (n, _, t), (p, s) in zip(val_images, preds)), score_threshold=score_threshold
    )
    return {"val_f1": res["pooled"]["f1"], "val_centroid_f1": res["pooled_centroid"]["f1"],
            "val_ap50": res["AP@0.5"], "val_map": res["mAP"]}


def _rng_state(sampler_rng: np.random.Generator) -> dict:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "sampler": json.dumps(sampler_rng.bit_generator.state),
    }


def _set_rng_state(state: dict, sampler_rng: np.random.Generator) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    sampler_rng.bit_generator.state = json.loads(state["sampler"])


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(
    config: DetectorConfig,
    prepared: str | Path,
    run_dir: str | Path,
    *,
    steps: int | None = None,
    resume: bool = False,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    color_jitter: float = 0.0,
    log_every: int = 20,
    command: str = "",
    progress: bool = True,
) -> dict:
    from tqdm import tqdm

    from .checkpoint import check_device

    check_device(device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    tcfg = config.train
    steps = int(steps or tcfg["steps"])
    manifest = json.loads((Path(prepared) / "manifest.json").read_text())
    target_mu, target_sigma = manifest["target_mu"], manifest["target_sigma"]

    random.seed(seed)
    torch.manual_seed(seed)
    sampler_rng = np.random.default_rng(seed)
    sampler = CropSampler(load_split(prepared, "train"), int(tcfg["crop_size"]), sampler_rng,
                          config.input_channels, color_jitter, manifest["min_visible"], manifest["min_size"])
    from .stain import model_input

    val_images = [(n, model_input(im, config.input_channels), b) for n, im, b in load_split(prepared, "val_full")]

    model = build_detector(config).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=float(tcfg["lr"]), momentum=float(tcfg["momentum"]),
                          weight_decay=float(tcfg["weight_decay"]))
    start, best = 0, {"val_f1": -1.0}
    last = run_dir / "last.pt"
    if resume:
        if not last.is_file():
            raise WsinucleiError(f"{run_dir}: nothing to resume (no last.pt)")
        ckpt = torch.load(last, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"], sampler_rng)
        start, best = int(ckpt["step"]), json.loads(ckpt["best"])
    elif last.exists():
        raise WsinucleiError(f"{run_dir} holds a run already: add --resume to continue it, or pick another --run-dir")

    settings = {"preset": config.to_dict(), "prepared": str(prepared), "steps": steps, "seed": seed,
                "device": device, "threads": torch.get_num_threads(), "color_jitter": color_jitter,
                "command": command}
    (run_dir / "run.json").write_text(json.dumps(settings, indent=1))
    log_path = run_dir / "log.csv"
    fields = ["step", "lr", "loss", *LOSS_KEYS, "seconds", "val_f1", "val_centroid_f1", "val_ap50", "val_map"]
    if not resume or not log_path.exists():
        with open(log_path, "w", newline="") as fh:
            csv.writer(fh).writerow(fields)
    else:  # drop log rows past the checkpoint: they are recomputed identically
        with open(log_path) as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start]
        with open(log_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    stop = {"flag": False}

    def _on_signal(signum, frame):
        stop["flag"] = True  # finish the step, checkpoint, exit cleanly

    old = signal.signal(signal.SIGTERM, _on_signal)
    eval_every = int(tcfg.get("eval_every", 500))
    milestones = [int(m) for m in tcfg.get("lr_milestones", [])]
    batch = int(tcfg["batch_size"])
    bar = tqdm(total=steps, initial=start, desc=f"train {config.name}", unit="step", disable=not progress)
    t_last = time.time()
    running = {k: 0.0 for k in LOSS_KEYS}
    n_running = 0

    def checkpoint(step):
        _atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                            "rng": _rng_state(sampler_rng), "best": json.dumps(best)}, last)

    try:
        model.train()
        for step in range(start, steps):
            lr = lr_at(step, float(tcfg["lr"]), int(tcfg.get("warmup_steps", 0)), milestones)
            for g in opt.param_groups:
                g["lr"] = lr
            images, targets = [], []
            for _ in range(batch):
                img, boxes = sampler.sample()
                images.append(to_tensor(img).to(device))
                targets.append({"boxes": torch.as_tensor(boxes, dtype=torch.float32, device=device),
                                "labels": torch.ones(len(boxes), dtype=torch.int64, device=device)})
            losses = model(images, targets)
            loss = sum(losses.values())
            if not math.isfinite(loss.item()):
                raise WsinucleiError(f"training diverged at step {step} (loss {loss.item()}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            for k in LOSS_KEYS:
                running[k] += float(losses[k].detach())
            n_running += 1
            done = step + 1
            bar.update(1)
            row = None
            if done % log_every == 0 or done == steps:
                avg = {k: running[k] / n_running for k in LOSS_KEYS}
                row = {"step": done, "lr": lr, "loss": sum(avg.values()), **avg, "seconds": time.time() - t_last}
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                running = {k: 0.0 for k in LOSS_KEYS}
                n_running, t_last = 0, time.time()
            if done % eval_every == 0 or done == steps:
                v = validate(model, val_images, device)
                model.train()
                row = row or {"step": done, "lr": lr}
                row.update(v)
                if v["val_f1"] > best["val_f1"]:
                    best = {**v, "step": done}
                    save_model(model, config, run_dir / "best.safetensors", target_mu=target_mu,
                               target_sigma=target_sigma, half=False,
                               extra={"command": command, "step": done, "validation": v, "seed": seed})
                bar.write(f"step {done}: val F1@0.5 {v['val_f1']:.3f}, centroid F1 {v['val_centroid_f1']:.3f}, "
                          f"AP@0.5 {v['val_ap50']:.3f} (best {best['val_f1']:.3f} at {best['step']})")
            if row is not None:
                with open(log_path, "a", newline="") as fh:
                    csv.DictWriter(fh, fieldnames=fields).writerow(row)
            if done % eval_every == 0 or done == steps or stop["flag"]:
                checkpoint(done)
            if stop["flag"]:
                bar.write(f"stopped at step {done}; continue with --resume")
                break
    except KeyboardInterrupt:
        bar.write("interrupted; continue with --resume (from the last checkpoint)")
        raise
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, old)
    return best
