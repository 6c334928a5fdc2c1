"""Mutation check: apply known defects to the code one at a time and confirm the tests meant to catch each one
fail. Each mutation is a text replacement in one source file; the file is restored afterwards, whatever happens.

    .venv/bin/python scripts/check_mutations.py            # all
    .venv/bin/python scripts/check_mutations.py --only box-scaling

Prints one line per mutation: KILLED (a test failed, as it should) or SURVIVED (no test noticed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "wsinuclei"

# name: (file, original text, mutated text, tests that must fail)
MUTATIONS = {
    "box-scaling": ("pipeline/worker.py", "    scale = ctx.model_mpp / ctx.mpp\n    b = boxes * scale",
                    "    scale = 1.0\n    b = boxes * scale", ["tests/test_coordinates.py"]),
    "core-ownership": ("pipeline/worker.py",
                       "keep = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1) & (scores >= ctx.min_score)",
                       "keep = scores >= ctx.min_score", ["tests/test_coordinates.py"]),
    "centroid-radius-inverted": ("report.py", "radius_px = radius_um / mpp", "radius_px = mpp / radius_um",
                                 ["tests/test_cli.py::test_evaluate_centroid_radius_converts_microns_to_pixels"]),
    "pr-auc-rectangles": ("evaluate.py", "(p[1:] + p[:-1]) / 2", "p[1:]",
                          ["tests/test_evaluate.py::test_pr_auc_exact_on_a_hand_computed_curve"]),
    "reinhard-rounding": ("stain.py", "    return out.astype(np.uint8)\n", "    return np.round(out).astype(np.uint8)\n",
                          ["tests/test_stain.py"]),
    "torchvision-resize": ("models/builder.py", "    def resize(self, image, target=None):\n        return image, target\n",
                           "", ["tests/test_models.py::test_every_preset_builds_and_runs"]),
    "bad-slide-aborts-batch": ("cli.py", "            failed += 1\n            continue\n", "            raise\n",
                               ["tests/test_cli.py::test_a_bad_slide_does_not_stop_the_others"]),
    "greedy-cardinality": ("evaluate.py", "big = float(min(len(rows), len(cols)) + 1)", "big = 1.0",
                           ["tests/test_evaluate.py::test_chain_of_boxes_pairs_as_many_as_possible"]),
    "thumbnail-colour-statistics": (
        "colour_stats.py", "        rgb = slide.read_region(x0, y0, patch_size, patch_size, mpp)\n",
        "        rgb = slide.read_region(x0, y0, patch_size, patch_size, mpp * 32)\n",
        ["tests/test_colour_stats.py"]),
    "no-sigma-floor": ("stain.py", "    src_sigma = np.maximum(src_sigma, SIGMA_FLOOR * target_sigma)\n", "",
                       ["tests/test_stain.py"]),
    "premultiplied-alpha": ("slide.py", "rgba[..., :3].astype(np.float32) * alpha + 255.0",
                            "rgba[..., :3].astype(np.float32) + 255.0",
                            ["tests/test_slide.py::test_partly_transparent_pixels_composite_over_white"]),
    "unannotated-predictions-dropped": ("report.py", "for stem in sorted(common + only_truth):",
                                        "for stem in sorted(common):",
                                        ["tests/test_cli.py::test_evaluate_reports_unpaired_stems"]),
    "off-tissue-detections-kept": (
        "pipeline/run.py", "keep = on_tissue(boxes, plan.mask, plan.thumb_downsample, plan.ctx.mpp)",
        "keep = np.ones(len(boxes), bool)",
        ["tests/test_pipeline.py::test_thin_tissue_strip_is_covered_and_glass_detections_dropped"]),
    "cytoplasm-ring-7px": ("features/nuclei.py", "families=DEFAULT_FAMILIES, cyto_width: float = 8)",
                           "families=DEFAULT_FAMILIES, cyto_width: float = 7)",
                           ["tests/test_features.py::test_every_feature_matches_histomicstk"]),
    "geojson-ignores-score-cut": ("outputs.py", "keep = np.flatnonzero(scores >= score_cut)",
                                  "keep = np.arange(len(scores))",
                                  ["tests/test_pipeline.py::test_in_process_outputs"]),
}


def run(name: str) -> bool:
    rel, old, new, tests = MUTATIONS[name]
    path = SRC / rel
    original = path.read_text()
    if original.count(old) != 1:
        raise SystemExit(f"{name}: the text to mutate is not found exactly once in {rel} (the code changed?)")
    try:
        path.write_text(original.replace(old, new))
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        path.write_text(original)
    return proc.returncode != 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(MUTATIONS), default=None)
    args = ap.parse_args()
    survived = 0
    for name in args.only or MUTATIONS:
        killed = run(name)
        survived += not killed
        print(f"{name:34s} {'KILLED' if killed else 'SURVIVED'}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
