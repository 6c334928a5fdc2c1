"""Evaluation reports: metrics.json, per_image.csv, pr_curve.png and overlays (TP green, FP blue, FN red)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from . import evaluate
from .annotations import Boxes, collect_box_files, read_boxes
from .errors import WsinucleiError
from .nucleus_types import truth_types
from .outputs import atomic_write_bytes

PRED_SUFFIXES = (".csv", ".geojson", ".geojson.gz", ".csv.gz")


def _find_image(stem: str, folders) -> Path | None:
    for folder in folders:
        if folder is None:
            continue
        for ext in (".png", ".tif", ".tiff", ".jpg", ".jpeg"):
            p = Path(folder) / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def draw_overlay(image: np.ndarray, pred, truth, scores, score_threshold, iou_threshold, path: Path) -> None:
    from PIL import Image, ImageDraw

    pred = np.asarray(pred).reshape(-1, 4)
    keep = np.asarray(scores) >= score_threshold
    pred = pred[keep]
    pi, ti, _ = evaluate.match(pred, truth, iou_threshold)
    tp_p = np.zeros(len(pred), bool)
    tp_p[pi] = True
    tp_t = np.zeros(len(truth), bool)
    tp_t[ti] = True
    im = Image.fromarray(image[..., :3])
    d = ImageDraw.Draw(im)
    for b in np.asarray(truth)[~tp_t]:
        d.rectangle(list(b), outline=(255, 0, 0), width=2)  # FN red
    for b, ok in zip(pred, tp_p):
        d.rectangle(list(b), outline=(0, 200, 0) if ok else (0, 0, 255), width=2)  # TP green, FP blue
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def plot_pr(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for key, c in sorted(curves.items()):
        ax.plot(c["recall"], c["precision"], label=f"IoU {float(key):.1f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("precision-recall")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def evaluate_folders(pred: str | Path, truth: str | Path, out: str | Path, *, score_threshold=0.5, iou_threshold=0.5,
                     radius_um=3.0, mpp=0.25, border=0, images: str | Path | None = None, overlays=True,
                     min_precision: float | None = None) -> dict:
    """Pair prediction and truth files by stem, compute metrics, write the report into ``out``. With
    ``min_precision``, the report also names the score cut with the highest recall at that precision."""
    pred_files = collect_box_files(pred, PRED_SUFFIXES)
    truth_files = collect_box_files(truth)
    only_pred = sorted(set(pred_files) - set(truth_files))
    only_truth = sorted(set(truth_files) - set(pred_files))
    common = sorted(set(pred_files) & set(truth_files))
    if not common:
        raise WsinucleiError(f"no prediction file pairs with a truth file by name (predictions: {len(pred_files)}, "
                             f"truth: {len(truth_files)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    radius_px = radius_um / mpp
    items, skipped, shapes, kinds, seg_items, typed = [], {}, {}, {}, [], []
    # an annotated image without a prediction file is an image where nothing was found: its nuclei are missed
    for stem in sorted(common + only_truth):
        t = read_boxes(truth_files[stem])
        p = read_boxes(pred_files[stem]) if stem in pred_files else Boxes(np.zeros((0, 4)), np.zeros(0))
        skipped[stem] = t.skipped
        scores = p.scores if p.scores is not None else np.ones(len(p))
        img_path = _find_image(stem, [images, Path(truth_files[stem]).parent])
        shape = None
        if border > 0 or overlays:
            if img_path is not None:
                from PIL import Image

                with Image.open(img_path) as im:
                    shape = (im.height, im.width)
        pb, ps, tb = p.boxes, scores, t.boxes
        tt = truth_types(truth_files[stem], t)
        pt = p.types if p.types is not None else (np.zeros(0, object) if stem not in pred_files else None)
        if border > 0:
            if shape is None:
                raise WsinucleiError(f"--border needs the image size of '{stem}': put the image beside the truth or give --images")
            pk = evaluate.border_keep(pb, shape, border)
            tk = evaluate.border_keep(tb, shape, border)
            pb, ps, tb = pb[pk], ps[pk], tb[tk]
            pt = None if pt is None else pt[pk]
            tt = None if tt is None else tt[tk]
        items.append((stem, pb, ps, tb))
        if tt is not None:
            typed.append((stem, pb, ps, pt, tb, tt))
        shapes[stem] = img_path
        kinds[stem] = "points" if t.points else ("outlines" if (t.labels is not None or t.polygons) else "boxes")
        if kinds[stem] == "outlines" and shape is None and img_path is not None:
            from PIL import Image

            with Image.open(img_path) as im:
                shape = (im.height, im.width)
        if kinds[stem] == "outlines" and shape is not None:
            seg_items.append((stem, t, shape, pred_files.get(stem)))
    res = evaluate.evaluate_set(items, score_threshold=score_threshold, iou_threshold=iou_threshold, radius_px=radius_px)
    settings = {"score_threshold": score_threshold, "iou_threshold": iou_threshold, "radius_um": radius_um,
                "radius_px": radius_px, "mpp": mpp, "border_px": border, "pred": str(pred), "truth": str(truth)}
    res["score_cuts"] = evaluate.score_cuts(items, iou_threshold=iou_threshold, radius_px=radius_px)
    metrics = {k: v for k, v in res.items() if k not in ("curves", "per_image")}
    points_only = all(k == "points" for k in kinds.values())
    if points_only:  # centres only: IoU figures mean nothing, centroid pairing is the measure
        for key in ("pooled", "ap", "mAP", "AP@0.1", "AP@0.5", "PR-AUC"):
            metrics.pop(key, None)
        for row in metrics["score_cuts"]:
            row.pop("boxes")
    metrics["operating_points"] = _operating_points(metrics["score_cuts"], min_precision)
    metrics["annotation"] = "points" if points_only else ("outlines" if len(seg_items) == len(items) else "boxes")
    seg = None
    if seg_items and len(seg_items) == len(items):
        seg = _segmentation(seg_items, score_threshold)
        metrics["segmentation"] = {"pooled": seg["pooled"], "mean_over_images": seg["mean"],
                                   "predictions": sorted({r["predictions"] for r in seg["per_image"]})}
    if typed:
        metrics["types"] = _type_scores(typed, score_threshold, radius_px)
    metrics.update(settings=settings, images=len(items), skipped_degenerate=int(sum(skipped.values())),
                   only_in_predictions=only_pred, only_in_truth=only_truth)
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=1).encode())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    seg_rows = {r["image"]: r for r in seg["per_image"]} if seg else {}
    w.writerow(["image", "TP", "FP", "FN", "precision", "recall", "F1", "centroid_F1"]
               + (["AJI", "AJI_plus", "PQ", "Dice"] if seg else []))
    for r in res["per_image"]:
        sr = seg_rows.get(r["image"])
        w.writerow([r["image"], r["tp"], r["fp"], r["fn"], f"{r['precision']:.4f}", f"{r['recall']:.4f}",
                    f"{r['f1']:.4f}", f"{r['centroid_f1']:.4f}"]
                   + ([f"{sr[k]:.4f}" for k in ("aji", "aji_plus", "pq", "dice")] if sr else []))
    atomic_write_bytes(out / "per_image.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "score_cuts.csv", _score_cuts_csv(metrics["score_cuts"]).encode())
    plot_pr(res["curves"], out / "pr_curve.png")
    if overlays:
        from .data import load_image

        for stem, pb, ps, tb in items:
            if shapes.get(stem) is not None:
                draw_overlay(load_image(shapes[stem]), pb, tb, ps, score_threshold, iou_threshold,
                             out / f"overlay_{stem}.png")
    res["metrics"] = metrics
    return res


def _type_scores(typed: list, score_threshold: float, radius_px: float) -> dict:
    """HoVer-Net's type figures (``type_metrics``) pooled over the images whose truth has types, predictions at
    ``score_threshold`` or above. Images whose predictions carry no types are left out and named."""
    from .nucleus_types import TYPE_NAMES
    from .type_metrics import TypeCounts

    untyped = sorted(stem for stem, _, _, pt, _, _ in typed if pt is None)
    scored = [x for x in typed if x[3] is not None]
    if not scored:
        return {"images": 0, "predictions_without_types": untyped}
    seen = {str(n) for x in scored for n in (*x[3], *x[5]) if n}
    names = list(TYPE_NAMES) + sorted(seen - set(TYPE_NAMES))
    index = {n: i for i, n in enumerate(names)}
    tc = TypeCounts(len(names))
    for _, pb, ps, pt, tb, tt in scored:
        keep = np.asarray(ps) >= score_threshold
        tc.add(evaluate.centres(pb[keep]), [index.get(str(n), -1) if n else -1 for n in pt[keep]],
               evaluate.centres(tb), [index[str(n)] if n else -1 for n in tt], radius_px)
    out = {"images": len(scored), "types": names, **tc.summary(names)}
    if untyped:
        out["predictions_without_types"] = untyped
    return out


def _operating_points(rows: list[dict], min_precision: float | None) -> dict:
    """Per pairing present in ``rows``: the cut with the best F1 and, with ``min_precision``, the cut with the
    highest recall at that precision (None when no cut reaches it)."""
    points = {"min_precision": min_precision}
    for pairing in ("boxes", "centroid"):
        if rows and pairing in rows[0]:
            points[pairing] = {"best_f1": evaluate.best_cut(rows, pairing)}
            if min_precision is not None:
                points[pairing]["highest_recall"] = evaluate.best_cut(rows, pairing, min_precision=min_precision)
    return points


def _score_cuts_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    pairings = [k for k in ("boxes", "centroid") if rows and k in rows[0]]
    names = {"boxes": "iou", "centroid": "centroid"}
    columns = ("tp", "fp", "fn", "precision", "recall", "f1")
    w.writerow(["score"] + [f"{names[k]}_{c}" for k in pairings for c in columns])
    for r in rows:
        w.writerow([f"{r['score']:.2f}"] + [r[k][c] if c in ("tp", "fp", "fn") else f"{r[k][c]:.4f}"
                                           for k in pairings for c in columns])
    return buf.getvalue()


def _operating_lines(points: dict) -> list[str]:
    """The report's summary of score_cuts.csv: best F1 per pairing, and the recall at --min-precision."""
    if not points:
        return []
    label = {"boxes": "by IoU", "centroid": "by centroid pairing"}
    best = [f"{label[k]} {points[k]['best_f1'][k]['f1']:.3f} at {points[k]['best_f1']['score']:.2f}"
            for k in ("boxes", "centroid") if k in points]
    lines = ["score cuts (score_cuts.csv): best F1 " + ", ".join(best)]
    if points.get("min_precision") is not None:
        parts = []
        for k in ("boxes", "centroid"):
            if k in points:
                r = points[k]["highest_recall"]
                parts.append(f"{label[k]} " + ("none reaches it" if r is None else
                                                f"{r[k]['recall']:.3f} at {r['score']:.2f} "
                                                f"(precision {r[k]['precision']:.3f})"))
        lines.append(f"highest recall with precision >= {points['min_precision']:g}: " + ", ".join(parts))
    return lines


def _segmentation(seg_items, score_threshold: float) -> dict:
    """AJI/PQ/Dice for images whose annotations have outlines: predictions as drawn (GeoJSON polygons beside
    or instead of the CSV) or, for box-only predictions, their boxes filled."""
    from .segmentation_metrics import evaluate_segmentation, rasterise

    rows, kinds = [], {}
    for stem, truth, shape, pred_file in seg_items:
        t_labels = truth.labels if truth.labels is not None else rasterise(truth.polygons, shape)
        polys, scores, kind = [], [], "none"
        if pred_file is not None:
            p = read_boxes(pred_file)
            geo = [pred_file.with_name(f"{stem}{suf}") for suf in (".geojson", ".geojson.gz")]
            geo = next((g for g in geo if g.is_file()), None)
            if p.polygons is None and geo is not None:
                p = read_boxes(geo)
            sc = p.scores if p.scores is not None else np.ones(len(p))
            keep = sc >= score_threshold
            if p.polygons is not None:
                polys = [q for q, k in zip(p.polygons, keep) if k]
                kind = "boxes filled" if all(len(q) == 4 for q in polys) else "outlines"
            else:
                from .contours import box_polygon

                polys, kind = [box_polygon(b) for b in p.boxes[keep]], "boxes filled"
            scores = sc[keep]
        kinds[stem] = kind
        rows.append((stem, t_labels, rasterise(polys, shape, scores)))
    res = evaluate_segmentation(rows)
    for r in res["per_image"]:
        r["predictions"] = kinds[r["image"]]
    return res


def format_table(res: dict) -> str:
    m = res.get("metrics", {})
    if m.get("annotation") == "points":  # centres only: centroid pairing is the only measure
        c = res["pooled_centroid"]
        rows = [f"{'image':<32} {'cF1':>6}"] + [f"{r['image'][:32]:<32} {r['centroid_f1']:>6.3f}" for r in res["per_image"]]
        rows.append(f"pooled centroid pairing: TP {c['tp']}, FP {c['fp']}, FN {c['fn']}, precision {c['precision']:.3f}, "
                    f"recall {c['recall']:.3f}, F1 {c['f1']:.3f} (centre annotations: no IoU figures)")
        return "\n".join(rows + _operating_lines(m.get("operating_points")) + _type_lines(m.get("types")))
    rows = [f"{'image':<32} {'TP':>6} {'FP':>6} {'FN':>6} {'prec':>6} {'rec':>6} {'F1':>6} {'cF1':>6}"]
    for r in res["per_image"]:
        rows.append(f"{r['image'][:32]:<32} {r['tp']:>6} {r['fp']:>6} {r['fn']:>6} {r['precision']:>6.3f} "
                    f"{r['recall']:>6.3f} {r['f1']:>6.3f} {r['centroid_f1']:>6.3f}")
    p, c = res["pooled"], res["pooled_centroid"]
    rows.append(f"{'pooled':<32} {p['tp']:>6} {p['fp']:>6} {p['fn']:>6} {p['precision']:>6.3f} {p['recall']:>6.3f} "
                f"{p['f1']:>6.3f} {c['f1']:>6.3f}")
    rows.append(f"AP@0.1 {res['AP@0.1']:.3f}  AP@0.5 {res['AP@0.5']:.3f}  mAP(0.1:0.9) {res['mAP']:.3f}  "
                f"PR-AUC {res['PR-AUC']:.3f}")
    m = res.get("metrics", {})
    if "segmentation" in m:
        sp, sm = m["segmentation"]["pooled"], m["segmentation"]["mean_over_images"]
        rows.append(f"segmentation ({', '.join(m['segmentation']['predictions'])}): AJI {sp['aji']:.3f} "
                    f"(mean over images {sm['aji']:.3f})  AJI+ {sp['aji_plus']:.3f}  PQ {sp['pq']:.3f} "
                    f"(DQ {sp['dq']:.3f}, SQ {sp['sq']:.3f}; mean {sm['pq']:.3f})  Dice {sp['dice']:.3f}")
    rows += _operating_lines(m.get("operating_points"))
    rows += _type_lines(m.get("types"))
    if m.get("only_in_predictions"):
        rows.append(f"no truth for: {', '.join(m['only_in_predictions'])}")
    if m.get("only_in_truth"):
        rows.append(f"no predictions for: {', '.join(m['only_in_truth'])} (their nuclei count as missed)")
    if m.get("skipped_degenerate"):
        rows.append(f"degenerate annotations skipped: {m['skipped_degenerate']}")
    return "\n".join(rows)


def _type_lines(t: dict | None) -> list[str]:
    if not t:
        return []
    if not t.get("images"):
        return ["types: the predictions carry no types (a model without a type head)"]
    f_t = ", ".join(f"{n} {t[f'f_t_{n}']:.3f}" for n in t["types"] if t[f"f_t_{n}"] == t[f"f_t_{n}"])  # NaN: absent
    lines = [f"types ({t['images']} images, centres paired within the radius): F_d {t['f_d']:.3f}; F_t {f_t}; "
             f"accuracy among paired {t['type_accuracy']:.3f}",
             "  confusion (rows truth, columns predicted): " + "; ".join(
                 f"{n}: {row}" for n, row in zip(t["types"], t["confusion"]) if sum(row))]
    if t.get("predictions_without_types"):
        lines.append(f"  no types in the predictions for: {', '.join(t['predictions_without_types'])}")
    return lines
