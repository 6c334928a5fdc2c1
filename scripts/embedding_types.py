"""Do the embeddings carry what a nucleus is? A type classifier on CoNSeP's typed nuclei, trained on the
embeddings (``detect --embeddings``) and, the same classifier, on the hand-made features (``--features``:
morphometry, Fourier shape, intensity, gradient), side by side.

CoNSeP's training images only, split by original image as ``recipes/types_data.toml`` splits them (24 originals
to train the classifier, the 3 held-out originals to score it); CoNSeP test is not read. Every image is detected
once, with both ``--features`` and ``--embeddings`` (so both classifiers see the same nuclei); a detection at the
score cut is labelled with the type of the annotated nucleus it pairs with (centres within 3 µm, HoVer-Net's
pairing), unpaired detections are left out. Classifiers (scikit-learn): logistic regression on standardised
inputs (C chosen by 5-fold cross-validation on the training part, grouped by original image) and 15-nearest
neighbours on standardised inputs.

    .venv/bin/python scripts/embedding_types.py --out out/embedding_types [--model FILE]

Writes OUT/results.json and prints a Markdown table (accuracy among paired nuclei, per-type F1, macro F1).
The per-image detections are kept in OUT/pred (rerunning reuses them).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from wsinuclei.annotations import read_boxes
from wsinuclei.errors import WsinucleiError
from wsinuclei.data import find_samples, group_of, load_recipe, split_by_image
from wsinuclei.nucleus_types import TYPE_NAMES, truth_types
from wsinuclei.pipeline import RunOptions, run_slide
from wsinuclei.type_metrics import pair_centres

ROOT = Path(__file__).resolve().parents[1]
RADIUS_UM = 3.0
MPP = 0.25


def consep_split(recipe: Path):
    sources, settings = load_recipe(recipe)
    src = next(s for s in sources if s.name == "consep")
    samples = find_samples(src.path, src.kind)
    groups = sorted({group_of(s.name, src.group) for s in samples})
    train, val = split_by_image(groups, src.val_fraction, int(settings.get("seed", 0)))
    return src, samples, set(train), set(val)


def labelled_nuclei(sample, pred_dir: Path, model: str | None):
    """Embeddings, feature matrix (with column names) and truth type index of one image's paired detections."""
    import pyarrow.parquet as pq

    name = sample.image.stem
    table = pred_dir / f"{name}.nuclei.parquet"
    if not table.is_file():
        opts = RunOptions(mpp=MPP, tissue_mask=False, model=model, progress=False, features=True, embeddings=True)
        try:
            run_slide(sample.image, pred_dir, opts, log=lambda *_: None)
        except WsinucleiError as exc:  # a crop of glass alone: no stain to normalise, no nucleus to type
            print(f"\n{name}: skipped ({exc})", file=sys.stderr)
            return None
    t = pq.read_table(table)
    truth = read_boxes(sample.truth)
    names = truth_types(sample.truth, truth)
    txy = (truth.boxes[:, :2] + truth.boxes[:, 2:]) / 2
    pxy = np.stack([(t["x0"].to_numpy() + t["x1"].to_numpy()) / 2, (t["y0"].to_numpy() + t["y1"].to_numpy()) / 2], 1)
    pi, ti = pair_centres(pxy, txy, RADIUS_UM / MPP)
    lookup = {n: k for k, n in enumerate(TYPE_NAMES)}
    y = np.array([lookup.get(str(n), -1) for n in names[ti]], int)
    ok = y >= 0
    pi, y = pi[ok], y[ok]
    emb = np.stack(t["embedding"].to_numpy(zero_copy_only=False))[pi].astype(np.float32) if len(pi) else \
        np.zeros((0, 64), np.float32)
    skip = {"x0", "y0", "x1", "y1", "score", "tile", "model", "embedding", "geometry"}
    cols = [c for c in t.column_names if c not in skip and not c.startswith("Identifier.")]
    feats = np.stack([t[c].to_numpy().astype(np.float64) for c in cols], 1)[pi] if len(pi) else np.zeros((0, len(cols)))
    return emb, feats, cols, y


def scores(y_true, y_pred, n=len(TYPE_NAMES)) -> dict:
    from sklearn.metrics import f1_score

    present = [k for k in range(n) if (y_true == k).any()]
    f1 = f1_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    out = {"accuracy": float((y_true == y_pred).mean()), "macro_f1": float(np.mean(f1))}
    out.update({f"f1_{TYPE_NAMES[k]}": float(v) for k, v in zip(present, f1)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", help="model file (default: the shipped model)")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "types_data.toml")
    args = ap.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    src, samples, train_groups, val_groups = consep_split(args.recipe)
    pred = args.out / "pred"
    parts = {"train": ([], [], [], []), "val": ([], [], [], [])}
    cols = None
    for k, s in enumerate(samples, 1):
        g = group_of(s.name, src.group)
        part = "val" if g in val_groups else "train"
        got = labelled_nuclei(s, pred, args.model)
        if got is None:
            continue
        emb, feats, cols, y = got
        for lst, v in zip(parts[part], (emb, feats, y, np.full(len(y), int(re.sub(r"\D", "", str(g)) or 0)))):
            lst.append(v)
        print(f"\r{k}/{len(samples)} images", end="", file=sys.stderr)
    print(file=sys.stderr)
    data = {p: [np.concatenate(v) for v in lists] for p, lists in parts.items()}
    (e_tr, f_tr, y_tr, g_tr), (e_va, f_va, y_va, _) = data["train"], data["val"]
    results = {"train_nuclei": int(len(y_tr)), "val_nuclei": int(len(y_va)),
               "train_images": sorted(map(str, train_groups)), "val_images": sorted(map(str, val_groups)),
               "val_types": {TYPE_NAMES[k]: int((y_va == k).sum()) for k in range(len(TYPE_NAMES))},
               "feature_columns": cols, "rows": []}
    for inputs, (xtr, xva) in (("embedding (64)", (e_tr, e_va)), (f"features ({f_tr.shape[1]})", (f_tr, f_va))):
        lr = GridSearchCV(make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression(max_iter=2000)),
                          {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}, cv=GroupKFold(5), scoring="accuracy")
        lr.fit(xtr, y_tr, groups=g_tr)
        knn = make_pipeline(SimpleImputer(), StandardScaler(), KNeighborsClassifier(15)).fit(xtr, y_tr)
        for clf_name, clf in (("logistic regression", lr), ("15-nearest neighbours", knn)):
            row = {"inputs": inputs, "classifier": clf_name, **scores(y_va, clf.predict(xva))}
            if clf is lr:
                row["C"] = lr.best_params_["logisticregression__C"]
            results["rows"].append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    present = [n for n in TYPE_NAMES if results["val_types"][n]]
    print(f"CoNSeP train, {len(train_groups)} originals to train ({len(y_tr)} paired nuclei), "
          f"{len(val_groups)} held out to score ({len(y_va)})")
    print("| inputs | classifier | accuracy | " + " | ".join(f"F1 {n}" for n in present) + " | macro F1 |")
    print("|---|---|---|" + "---|" * len(present) + "---|")
    for r in results["rows"]:
        print(f"| {r['inputs']} | {r['classifier']} | {r['accuracy']:.3f} | "
              + " | ".join(f"{r.get('f1_' + n, float('nan')):.3f}" for n in present) + f" | {r['macro_f1']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
