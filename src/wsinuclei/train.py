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
from .data import Augment, CropSampler, Tile, as_read_at, load_tiles
from .errors import WsinucleiError
from .models import DetectorConfig, build_detector, freeze_before_fine_tune_block
from .models.builder import calibrate_fixed_norms
from .models.star import STAR_LOSS_KEYS, TYPED_STAR_LOSS_KEYS

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
MASK_LOSS_KEYS = LOSS_KEYS + ("loss_mask",)
#: Score cuts tried at each validation; the best one (for the mean over sets) is reported with its F1, so
#: checkpoints are compared at their own best operating point (export calibrates to it later).
VAL_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def lr_at(step: int, base: float, warmup: int, milestones, gamma: float = 0.1) -> float:
    """Linear warm-up from base/100 then step decay at each milestone."""
    factor = gamma ** sum(step >= m for m in milestones)
    if warmup and step < warmup:
        factor *= 0.01 + 0.99 * step / warmup
    return base * factor


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


@torch.inference_mode()
def predict_images(model, images, device="cpu", types: bool = False):
    """Eval-mode predictions for whole images (already preprocessed uint8 HWC): (boxes, scores) per image, and
    with ``types`` a third entry, the type probabilities (N, types) of a model with a type head (else None)."""
    model.eval()
    out = []
    for img in images:
        res = model([to_tensor(img).to(device)])[0]
        pred = (res["boxes"].cpu().numpy().astype(np.float64), res["scores"].cpu().numpy().astype(np.float64))
        if types:
            pred += (res["type_probs"].cpu().numpy() if "type_probs" in res else None,)
        out.append(pred)
    return out


def typed_truth(tile: Tile) -> tuple[np.ndarray, np.ndarray] | None:
    """A validation image's true centres (N, 2) and types (N,), or None when its set has no types: centres as
    annotated for centre-only sets, box centres of the instances for label images."""
    if tile.points is not None:
        return (tile.points, tile.point_types) if tile.point_types is not None else None
    if tile.types is None or tile.labels is None:
        return None
    from scipy import ndimage

    slices = ndimage.find_objects(tile.labels.astype(np.int64))
    ids = [i + 1 for i, sl in enumerate(slices) if sl is not None]
    xy = np.array([((slices[i - 1][1].start + slices[i - 1][1].stop) / 2, (slices[i - 1][0].start + slices[i - 1][0].stop) / 2)
                   for i in ids], np.float64).reshape(-1, 2)
    return xy, np.asarray(tile.types)[ids]


def validation_tiles(prepared: str | Path, input_channels: str, read_mpps=(), at_mpp: float | None = None) -> list[Tile]:
    """A prepared folder's whole validation images as network input, plus each read at every µm/px of
    ``read_mpps`` as sets of their own (:func:`data.as_read_at`). With ``at_mpp``, images coarser than it (20x
    centre sets) are enlarged to it, as a model serving that µm/px alone reads them (:func:`data.upsampled_to`)."""
    from .data import upsampled_to
    from .stain import model_input

    tiles = load_tiles(prepared, "val_full")
    if at_mpp is not None:
        tiles = upsampled_to(tiles, at_mpp)
    tiles += [r for mpp in read_mpps for r in as_read_at(tiles, float(mpp))]
    for t in tiles:
        t.image = model_input(t.image, input_channels)
    return tiles


def validate(model, val_tiles: list[Tile], device="cpu", score_threshold=None) -> dict:
    """Validation figures over every set of whole validation images.

    Per set: boxed sets score the mean of F1@IoU 0.5 and centroid F1 (3 µm); centre-only sets score centroid
    F1 (their images run at their own µm/px). ``val_f1`` is the mean over sets, at the best of
    :data:`VAL_THRESHOLDS` (or at ``score_threshold``), so no single set decides the model."""
    preds = predict_images(model, [t.image for t in val_tiles], device, types=True)
    return score_predictions(val_tiles, preds, score_threshold)


def score_predictions(val_tiles: list[Tile], preds, score_threshold=None) -> dict:
    """:func:`validate`'s figures for given (boxes, scores) per validation image."""
    from .evaluate import Counts, count

    sets = sorted({t.set for t in val_tiles})
    thresholds = (score_threshold,) if score_threshold is not None else VAL_THRESHOLDS
    per = {}  # (set, threshold) -> (box Counts, centroid Counts)
    for t, pred in zip(val_tiles, preds):
        boxes, scores = pred[0], pred[1]
        for thr in thresholds:
            key = (t.set, thr)
            bc, cc = per.get(key, (Counts(), Counts()))
            if t.points is not None:
                radius = 3.0 / (t.mpp or 0.25)
                pts = np.hstack([t.points, t.points])  # zero-size boxes at the centres: x, y, x, y
                cc = cc + count(boxes, scores, pts, score_threshold=thr, radius=radius)
                bc = None
            else:
                bc = bc + count(boxes, scores, t.boxes, score_threshold=thr)
                cc = cc + count(boxes, scores, t.boxes, score_threshold=thr, radius=3.0 / (t.mpp or 0.25))
            per[key] = (bc, cc)

    def set_score(key):
        bc, cc = per[key]
        return cc.f1 if bc is None else (bc.f1 + cc.f1) / 2

    best_thr = max(thresholds, key=lambda thr: (np.mean([set_score((n, thr)) for n in sets]), -abs(thr - 0.5)))
    out = {"val_f1": float(np.mean([set_score((n, best_thr)) for n in sets])), "val_threshold": best_thr}
    total_c = Counts()
    for n in sets:
        bc, cc = per[(n, best_thr)]
        total_c = total_c + cc
        out[f"val_{n}_centroid_f1"] = cc.f1
        out[f"val_{n}_precision"] = (cc if bc is None else bc).precision
        out[f"val_{n}_recall"] = (cc if bc is None else bc).recall
        if bc is not None:
            out[f"val_{n}_f1"] = bc.f1
    out["val_centroid_f1"] = total_c.f1
    out.update(type_scores(val_tiles, preds, best_thr))
    if "val_type_f1" in out:  # a typed model is chosen on detection and types alike
        out["val_score"] = (out["val_f1"] + out["val_type_f1"]) / 2
    return out


#: the types whose F_t the validation measure averages (``other`` is rare and loosely defined in every set)
VAL_TYPES = ("epithelial", "inflammatory", "stromal")


def type_scores(val_tiles: list[Tile], preds, threshold: float) -> dict:
    """Per typed validation set, HoVer-Net's F_t of each type (:mod:`wsinuclei.type_metrics`, centres paired
    within 3 µm, predictions with score >= ``threshold``) and the accuracy among paired nuclei;
    ``val_type_f1``: the mean over sets of the mean F_t of :data:`VAL_TYPES`. Empty when no prediction carries
    types or no set has them."""
    from .nucleus_types import TYPE_NAMES
    from .type_metrics import TypeCounts

    per: dict[str, TypeCounts] = {}
    for t, pred in zip(val_tiles, preds):
        truth = typed_truth(t)
        if truth is None or len(pred) < 3 or pred[2] is None:
            continue
        boxes, scores, probs = pred
        keep = scores >= threshold
        pc = (boxes[keep, :2] + boxes[keep, 2:]) / 2
        tc = per.setdefault(t.set, TypeCounts(len(TYPE_NAMES)))
        tc.add(pc, probs[keep].argmax(1), truth[0], truth[1], 3.0 / (t.mpp or 0.25))
    out, means = {}, []
    for name, tc in sorted(per.items()):
        f_ts = [tc.f_type(TYPE_NAMES.index(n)) for n in VAL_TYPES]
        for n, f in zip(VAL_TYPES, f_ts):
            out[f"val_{name}_ft_{n}"] = f
        out[f"val_{name}_type_accuracy"] = tc.accuracy
        means.append(float(np.nanmean(f_ts)) if not all(np.isnan(f_ts)) else 0.0)
    if means:
        out["val_type_f1"] = float(np.mean(means))
    return out


def _set_glass_colour(tiles: list[Tile], manifest: dict) -> None:
    """What white glass becomes after each image's Reinhard normalisation (its statistics are in the
    manifest), for the glass augmentation."""
    from .stain import reinhard

    for t in tiles:
        info = manifest.get("images", {}).get(t.name.rsplit("_", 2)[0])
        if info and "lab_mean" in info:
            white = np.full((1, 1, 3), 255, np.uint8)
            t.glass = tuple(int(v) for v in reinhard(white, manifest["target_mu"], manifest["target_sigma"],
                                                      info["lab_mean"], info["lab_std"])[0, 0])


def val_fields(val_tiles: list[Tile], typed: bool = False) -> list[str]:
    fields = ["val_f1", "val_threshold", "val_centroid_f1"]
    for n in sorted({t.set for t in val_tiles}):
        boxed = any(t.points is None for t in val_tiles if t.set == n)
        fields += ([f"val_{n}_f1"] if boxed else []) + [f"val_{n}_centroid_f1", f"val_{n}_precision", f"val_{n}_recall"]
    if typed:
        fields += ["val_type_f1", "val_score"]
        for n in sorted({t.set for t in val_tiles if typed_truth(t) is not None}):
            fields += [f"val_{n}_ft_{c}" for c in VAL_TYPES] + [f"val_{n}_type_accuracy"]
    return fields


def calibration_batch(sampler: CropSampler, n: int, seed: int) -> list[np.ndarray]:
    """``n`` training crops drawn from a generator of their own (seeded by ``seed``), leaving the sampler's
    stream as it was: the crops fixed normalisation statistics are measured on."""
    own = sampler.rng
    sampler.rng = np.random.default_rng([seed, 7919])
    try:
        return [sampler.sample_crop().image for _ in range(n)]
    finally:
        sampler.rng = own


def load_init(model, path: str | Path) -> dict:
    """Warm start: copy every weight of a model file whose name and shape match (a box-only model into a
    mask model leaves the mask head at its initialisation). Returns what was and was not taken."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:
        raise WsinucleiError(f"--init {path}: not a readable model file ({exc})") from None
    own = model.state_dict()
    taken = {k: v.float() for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(taken, strict=False)
    return {"taken": len(taken), "left": sorted(k for k in own if k not in taken)}


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


def sampling_weights(sets: dict, override: dict | None = None) -> dict[str, float] | None:
    """Each training set's share of the crops: the prepared folder's (``weight`` in its recipe, kept in
    ``manifest.json``), or a preset's ``[train] set_weights`` table, which replaces the shares of the sets it names
    (an experiment can reweight sets without preparing the data again). None: a prepared folder of one set,
    drawn tile by tile."""
    if len(sets) <= 1:
        if override:
            raise WsinucleiError("[train] set_weights: the prepared data holds one set; there is nothing to reweight")
        return None
    weights = {n: float(v["weight"]) for n, v in sets.items() if v.get("use") != "val"}
    if override:
        try:
            shares = {str(k): float(v) for k, v in dict(override).items()}
        except (TypeError, ValueError):
            raise WsinucleiError("[train] set_weights: a table of set name = share (numbers)") from None
        unknown = sorted(set(shares) - set(weights))
        if unknown:
            raise WsinucleiError(f"[train] set_weights names sets the prepared data has no training part of: {unknown} "
                                 f"(it has {sorted(weights)})")
        weights.update(shares)
        if not all(v >= 0 for v in weights.values()) or not sum(weights.values()) > 0:
            raise WsinucleiError("[train] set_weights: shares must be non-negative, not all zero")
    return weights


class _StepBatches(torch.utils.data.IterableDataset):
    """The crops of steps ``start..steps-1``, each step's drawn from its own generator seeded by (seed, step), so
    the crops of a step are the same whichever worker draws them and however often the run was resumed. Worker
    ``w`` of ``n`` draws the steps ``start + w``, ``start + w + n``, ...: the DataLoader hands its workers'
    batches out in that round-robin order, so the training loop sees the steps in order."""

    def __init__(self, sampler: CropSampler, batch: int, seed: int, start: int, steps: int):
        self.sampler, self.batch, self.seed, self.start, self.steps = sampler, batch, seed, start, steps

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)  # many workers beside the training process: one core each
        for step in range(self.start + w, self.steps, n):
            self.sampler.rng = np.random.default_rng([self.seed, step])
            yield [self.sampler.sample_crop() for _ in range(self.batch)]


def _ignore_sigterm(worker_id: int) -> None:
    # A stop (Slurm's time limit, `timeout`, kill -- -PGID) signals the whole process group: the workers must
    # live on until the training process has finished its step and checkpointed; they end with it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def crop_batches(sampler: CropSampler, batch: int, seed: int, start: int, steps: int, workers: int = 0):
    """The training crops, one list of ``batch`` crops per step from ``start``. ``workers == 0``: drawn here from
    the sampler's one generator (checkpointed, so --resume draws the same crops). ``workers > 0``: drawn by that
    many processes ahead of the training step (a GPU waits for no crop), each step's from its own seeded
    generator (:class:`_StepBatches`), so the crops depend on neither the number of workers nor a resume; they
    differ from the one-generator stream of ``workers == 0``."""
    if workers <= 0:
        return ([sampler.sample_crop() for _ in range(batch)] for _ in range(start, steps))
    loader = torch.utils.data.DataLoader(_StepBatches(sampler, batch, seed, start, steps), batch_size=None,
                                         num_workers=workers, collate_fn=lambda crops: crops, prefetch_factor=4,
                                         generator=torch.Generator(),  # not the training's torch generator
                                         worker_init_fn=_ignore_sigterm)
    return iter(loader)


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
    init: str | Path | None = None,
    log_every: int = 20,
    command: str = "",
    progress: bool = True,
    workers: int = 0,
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
    sets = manifest.get("sets", {})
    weights = sampling_weights(sets, tcfg.get("set_weights"))
    train_tiles = load_tiles(prepared, "train")
    _set_glass_colour(train_tiles, manifest)
    if config.has_masks and any(t.labels is None for t in train_tiles):
        raise WsinucleiError(f"preset {config.name} learns contours: every training set needs instance labels "
                             "(label images or binary masks), not boxes alone")
    centre_sets = sorted({t.set for t in train_tiles if t.centre_only})
    if centre_sets and not config.is_star:
        raise WsinucleiError(f"the training sets {centre_sets} give nucleus centres only, which train star presets "
                             f"alone (not {config.name}); prepare the data without them")
    sampler = CropSampler(train_tiles, int(tcfg["crop_size"]), sampler_rng, config.input_channels, color_jitter,
                          manifest["min_visible"], manifest["min_size"], Augment.from_dict(tcfg.get("augment")),
                          weights)
    # `val_read_mpp = [0.5]`: the validation images also read as a 20x slide is (extra sets in the mean), so
    # that the chosen model holds at both resolutions it claims
    # `val_at_model_mpp = true`: 20x validation images enlarged to the model's µm/px, as the pipeline reads 20x
    # slides with a model that declares no µm/px range (the shipped ones), instead of at their own
    val_tiles = validation_tiles(prepared, config.input_channels, tcfg.get("val_read_mpp", ()),
                                 config.mpp if tcfg.get("val_at_model_mpp", False) else None)
    typed = config.is_star and int(config.star_head.get("n_types", 0)) > 0
    loss_keys = (TYPED_STAR_LOSS_KEYS if typed else STAR_LOSS_KEYS) if config.is_star else \
        MASK_LOSS_KEYS if config.has_masks else LOSS_KEYS
    score_key = "val_score" if typed else "val_f1"  # what picks the best checkpoint

    model = build_detector(config).to(device)
    init_info = None
    if init and not resume:
        init_info = load_init(model, init)
        if config.backbone.get("norm") == "fixed":  # fixed statistics, measured on training crops
            crops = calibration_batch(sampler, int(tcfg.get("norm_calibration_crops", 48)), seed)
            with torch.no_grad():
                init_info["calibrated_norms"] = calibrate_fixed_norms(
                    model.backbone, model.batch([to_tensor(c).to(device) for c in crops]))
    if resume and not init and (run_dir / "run.json").is_file():  # resumed without --init: as first started
        init = json.loads((run_dir / "run.json").read_text()).get("init")
    if init:  # fine-tuning from loaded weights: the preset's early blocks stay as loaded
        frozen = freeze_before_fine_tune_block(model, config)
        if init_info is not None:
            init_info["frozen"] = frozen
    train_only = [str(x) for x in tcfg.get("train_only", [])]
    if train_only:  # e.g. the type branch alone on a frozen detector: its nuclei stay bit-identical to its parent's
        for name, p in model.named_parameters():
            p.requires_grad_(any(name.startswith(prefix) for prefix in train_only))
        if not any(p.requires_grad for p in model.parameters()):
            raise WsinucleiError(f"[train] train_only {train_only}: no parameter of {config.name} has such a name")
        if config.is_star and not any(p.requires_grad for n, p in model.named_parameters()
                                      if n.startswith(("backbone.head", "backbone.prob", "backbone.dist", "backbone.body",
                                                       "backbone.fpn"))):
            model.train_detection = False
    params = [p for p in model.parameters() if p.requires_grad]
    # `slow_lr_scale` with `fast_params` (name prefixes): everything else learns at that fraction of the rate,
    # e.g. a new type branch at the full rate on a detector that should move little
    fast = [str(x) for x in tcfg.get("fast_params", [])]
    slow_scale = float(tcfg.get("slow_lr_scale", 1.0))
    if fast and slow_scale != 1.0:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if n.startswith(tuple(fast))], "lr_scale": 1.0},
                  {"params": [p for n, p in named if not n.startswith(tuple(fast))], "lr_scale": slow_scale}]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": params, "lr_scale": 1.0}]
    opt = torch.optim.SGD(groups, lr=float(tcfg["lr"]), momentum=float(tcfg["momentum"]),
                          weight_decay=float(tcfg["weight_decay"]))
    start, best = 0, {"val_f1": -1.0, score_key: -1.0}
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
                "device": device, "threads": torch.get_num_threads(), "workers": workers, "color_jitter": color_jitter,
                "init": str(init) if init else None, "command": command}
    if init_info is not None:
        settings["init_left"], settings["frozen"] = init_info["left"], init_info.get("frozen", [])
    elif resume and (run_dir / "run.json").is_file():  # keep what the first start recorded
        first = json.loads((run_dir / "run.json").read_text())
        for key in ("init", "init_left", "frozen"):
            settings[key] = first.get(key)
    (run_dir / "run.json").write_text(json.dumps(settings, indent=1))
    log_path = run_dir / "log.csv"
    fields = ["step", "lr", "loss", *loss_keys, "seconds", *val_fields(val_tiles, typed)]
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
    running = {k: 0.0 for k in loss_keys}
    n_running = 0

    def checkpoint(step):
        _atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                            "rng": _rng_state(sampler_rng), "best": json.dumps(best)}, last)

    def validate_and_keep_best(done, row=None):
        nonlocal best
        v = validate(model, val_tiles, device)
        model.train()
        row = row or {"step": done, "lr": lr_at(max(done - 1, 0), float(tcfg["lr"]),
                                                int(tcfg.get("warmup_steps", 0)), milestones)}
        row.update(v)
        if v[score_key] > best[score_key]:
            best = {**v, "step": done}
            save_model(model, config, run_dir / "best.safetensors", target_mu=target_mu,
                       target_sigma=target_sigma, half=False,
                       extra={"command": command, "step": done, "validation": v, "seed": seed})
        types = f", type F_t {v['val_type_f1']:.3f}" if "val_type_f1" in v else ""
        bar.write(f"step {done}: validation score {v[score_key]:.3f} (detection {v['val_f1']:.3f}{types}) at score "
                  f">= {v['val_threshold']}, centroid F1 {v['val_centroid_f1']:.3f} (best {best[score_key]:.3f} at "
                  f"{best['step']})")
        return row

    batches = crop_batches(sampler, batch, seed, start, steps, workers)
    try:
        if init and start == 0:  # a fine-tune's step 0: the loaded weights' own figures, the bar to beat
            with open(log_path, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=fields).writerow(validate_and_keep_best(0))
        model.train()
        for step in range(start, steps):
            lr = lr_at(step, float(tcfg["lr"]), int(tcfg.get("warmup_steps", 0)), milestones)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            images, targets = [], []
            for crop in next(batches):
                images.append(to_tensor(crop.image).to(device))
                target = {"boxes": torch.as_tensor(crop.boxes, dtype=torch.float32, device=device),
                          "labels": torch.ones(len(crop.boxes), dtype=torch.int64, device=device)}
                if config.has_masks:
                    target["masks"] = torch.from_numpy(crop.masks).to(device)
                if crop.centre_only:
                    target["centre_only"] = True
                if typed and crop.types is not None:
                    target["types"] = torch.from_numpy(crop.types).to(device)
                targets.append(target)
            losses = model(images, targets)
            loss = sum(losses.values())
            if not math.isfinite(loss.item()):
                raise WsinucleiError(f"training diverged at step {step} (loss {loss.item()}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            for k in loss_keys:
                running[k] += float(losses[k].detach())
            n_running += 1
            done = step + 1
            bar.update(1)
            row = None
            if done % log_every == 0 or done == steps:
                avg = {k: running[k] / n_running for k in loss_keys}
                row = {"step": done, "lr": lr, "loss": sum(avg.values()), **avg, "seconds": time.time() - t_last}
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                running = {k: 0.0 for k in loss_keys}
                n_running, t_last = 0, time.time()
            if done % eval_every == 0 or done == steps:
                row = validate_and_keep_best(done, row)
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
        batches = None  # crop workers stop and are joined now, not whenever the collector gets to them
    return best
