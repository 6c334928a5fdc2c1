"""How many clicks does ``wsinuclei train-types`` need? BRCA-M2C (breast, 20x, every cell centre typed):
heads trained on 25, 50, 100 and all clicked points per class of its training part, scored on its validation
part; beside them, any reference models given (e.g. a head trained on every typed set,
``scripts/train_type_head.py``), on the same validation nuclei, and any typed networks (the shipped
``star_types``), by their own types on the clicks paired with their own nuclei.

    .venv/bin/python scripts/benchmark_train_types.py --out out/bench_train_types \
        [--reference out/type_head/star_types_head.safetensors] [--typed-model src/wsinuclei/weights/star_types.safetensors]

Points are drawn per class with 3 seeds (the mean and range are reported); a click counts when a detected
nucleus lies within 3 µm of it (the training and the scoring alike), and the score is each class's F1 among the
validation nuclei a click names (accuracy too). Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from wsinuclei.checkpoint import read_model_file
from wsinuclei.models.type_head import choose_penalty, fit
from wsinuclei.type_training import embed_clicks, find_clicked_images, per_class_report

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "brca"
MPP = 0.51


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reference", nargs="*", default=[])
    ap.add_argument("--typed-model", nargs="*", default=[],
                    help="typed networks (e.g. src/wsinuclei/weights/star_types.safetensors) scored by their own types "
                    "on the validation clicks paired with their own nuclei")
    ap.add_argument("--sizes", type=int, nargs="*", default=[25, 50, 100])
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    quiet = lambda *_: None  # noqa: E731
    t0 = time.perf_counter()
    train = embed_clicks(find_clicked_images([SHARED / "train"]), None, MPP, a.out / "work_train", quiet)
    val = embed_clicks(find_clicked_images([SHARED / "validation"]), None, MPP, a.out / "work_val", quiet)
    assert train.names == val.names, (train.names, val.names)
    names = train.names
    extract_s = time.perf_counter() - t0
    rows = []
    for size in [*a.sizes, None]:
        reps = []
        for seed in range(a.seeds if size else 1):
            rng = np.random.default_rng(seed)
            idx = np.concatenate([rng.permutation(np.flatnonzero(train.labels == c))[:size] if size else
                                  np.flatnonzero(train.labels == c) for c in range(len(names))])
            t1 = time.perf_counter()
            lam = choose_penalty(train.embeddings[idx], train.labels[idx], names, train.image[idx])
            head = fit(train.embeddings[idx], train.labels[idx], names, lam)
            fit_s = time.perf_counter() - t1
            rep = per_class_report(val.labels, head.probabilities(val.embeddings).argmax(1), names)
            reps.append({"accuracy": rep["accuracy"], "fit_s": fit_s, "points": int(len(idx)),
                         **{f"f1_{n}": rep["classes"][n]["f1"] for n in names}})
        keys = [k for k in reps[0] if k != "points"]
        rows.append({"trained_on": f"{size} per class" if size else f"all ({len(train.labels)} points)",
                     "points": reps[0]["points"],
                     **{k: float(np.mean([r[k] for r in reps])) for k in keys},
                     **{f"{k}_range": [float(min(r[k] for r in reps)), float(max(r[k] for r in reps))] for k in keys}})
    for ref in a.reference:
        loaded, _ = read_model_file(ref)
        head = loaded.type_head
        order = [head.names.index(n) for n in names]  # the reference's columns in this set's order
        pred = head.probabilities(val.embeddings)[:, order].argmax(1)
        rep = per_class_report(val.labels, pred, names)
        rows.append({"trained_on": f"reference: {Path(ref).name}", "accuracy": rep["accuracy"],
                     **{f"f1_{n}": rep["classes"][n]["f1"] for n in names}})
    for typed in a.typed_model:  # its own nuclei, so its own pairing of the same clicks
        own = embed_clicks(find_clicked_images([SHARED / "validation"]), typed, MPP, a.out / f"work_{Path(typed).stem}",
                           quiet)
        if own.parent_types is None:
            raise SystemExit(f"{typed}: not a typed model")
        rep = per_class_report(own.labels, own.parent_types, names)
        rows.append({"trained_on": f"typed network: {Path(typed).name} ({len(own.labels)} paired clicks)",
                     "accuracy": rep["accuracy"], **{f"f1_{n}": rep["classes"][n]["f1"] for n in names}})
    res = {"classes": list(names), "val_points": int(len(val.labels)), "val_clicks": val.clicks,
           "train_points": int(len(train.labels)), "extract_s": round(extract_s, 1), "rows": rows}
    (a.out / "results.json").write_text(json.dumps(res, indent=1))
    print(f"BRCA-M2C validation: {len(val.labels)} clicked nuclei ({val.clicks} clicks); embeddings of both parts "
          f"in {extract_s:.0f} s")
    print("| trained on | " + " | ".join(f"F1 {n}" for n in names) + " | accuracy | fit (s) |")
    print("|---|" + "---|" * (len(names) + 2))
    for r in rows:
        cells = []
        for n in names:
            v = r[f"f1_{n}"]
            rng_ = r.get(f"f1_{n}_range")
            cells.append(f"{v:.3f}" + (f" ({rng_[0]:.3f}-{rng_[1]:.3f})" if rng_ and rng_[0] != rng_[1] else ""))
        print(f"| {r['trained_on']} | " + " | ".join(cells) + f" | {r['accuracy']:.3f} | "
              + (f"{r['fit_s']:.1f}" if "fit_s" in r else "–") + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
