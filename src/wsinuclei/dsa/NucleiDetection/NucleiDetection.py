"""Detect nuclei: the slicer CLI the Digital Slide Archive runs (its XML is beside this file).

Arguments come as slicer_cli_web builds them from the XML: optional ``--flag value`` pairs first (booleans as
``true``/``false``, a region as one string ``"left, top, width, height"``), then the indexed ones (the image,
then the output annotation path). Progress goes to stdout as ``<filter-progress>FRACTION</filter-progress>``
lines, which the DSA turns into the job's progress bar.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

CLI_NAME = "NucleiDetection"
XML = Path(__file__).with_suffix(".xml")


def _parser():
    from wsinuclei.dsa.ctk_adjustment import CLIArgumentParser

    class Parser(CLIArgumentParser):
        def error(self, message):  # one line, not argparse's usage block
            self.exit(2, f"{CLI_NAME}: error: {message}\n")

    return Parser(str(XML))


class Progress:
    """slicer_cli_web's progress protocol on stdout; a line only when the fraction moves by 1 % or more."""

    def __init__(self, out=None):
        self.out, self.last = out, -1.0  # None: the stdout of the moment (not the one at import)

    def _print(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def start(self, comment: str) -> None:
        self._print(f"<filter-start><filter-name>{CLI_NAME}</filter-name>"
                    f"<filter-comment>{comment}</filter-comment></filter-start>")

    def fraction(self, value: float) -> None:
        value = min(1.0, max(0.0, value))
        if value >= 1.0 or value - self.last >= 0.01:
            self.last = value
            self._print(f"<filter-progress>{value:.4f}</filter-progress>")

    def end(self, seconds: float) -> None:
        self._print(f"<filter-end><filter-name>{CLI_NAME}</filter-name><filter-time>{seconds:.1f}</filter-time>"
                    "</filter-end>")


def run_options(args):
    """The pipeline's options from the CLI's arguments, with the XML's sentinels (-1, '') turned into
    'not given'; out-of-range values are refused by ``RunOptions.validate``."""
    from wsinuclei.errors import WsinucleiError
    from wsinuclei.pipeline import RunOptions

    roi = [float(v) for v in args.analysis_roi]
    if len(roi) != 4:
        raise WsinucleiError(f"analysis_roi takes 4 numbers (left, top, width, height), got {len(roi)}")
    if not all(math.isfinite(v) for v in roi):
        raise WsinucleiError(f"analysis_roi {','.join(f'{v:g}' for v in roi)}: every value must be a finite number "
                             "(or -1,-1,-1,-1 for the whole slide)")
    if all(v == -1 for v in roi):
        roi = None
    else:
        roi = tuple(int(round(v)) for v in roi)
        if roi[0] < 0 or roi[1] < 0 or roi[2] <= 0 or roi[3] <= 0:
            raise WsinucleiError(f"analysis_roi {roi}: left and top must be >= 0, width and height > 0 "
                                 "(or -1,-1,-1,-1 for the whole slide)")
    workers = int(args.num_workers)
    if workers < 0:
        workers = max(1, (os.cpu_count() or 1) + workers)
    params = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(args).items()}
    return RunOptions(mpp=None if args.mpp is None or args.mpp <= 0 else float(args.mpp), roi=roi,
                      tile_size=int(args.analysis_tile_size), overlap=None if int(args.tile_overlap_value) == -1 else int(args.tile_overlap_value),
                      min_tissue=float(args.min_fgnd_frac), model=args.model_file or getattr(args, "shipped_model", None) or None,
                      min_score=min(0.1, float(args.score_cut)), score_cut=float(args.score_cut),
                      device=args.device, workers=workers, norm_statistics=getattr(args, "norm_statistics", "tile"), scheduler=(args.scheduler or "").strip() or None,
                      progress=False, extra_params={"cli": CLI_NAME, "arguments": params}).validate()


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from wsinuclei.errors import WsinucleiError
    from wsinuclei.pipeline import run_slide

    t0 = time.time()
    progress = Progress()
    try:
        opts = run_options(args)
        out = Path(args.outputNucleiAnnotationFile)
        if out.is_dir():
            raise WsinucleiError(f"{out}: is a folder; the output annotation is a file")
        out.parent.mkdir(parents=True, exist_ok=True)
        progress.start(f"detecting nuclei in {Path(args.inputImageFile).name}")
        # the run's other files (CSV, GeoJSON, thumbnail) go to a scratch folder beside the output, on the same
        # file system, so the annotation is moved into place whole
        with tempfile.TemporaryDirectory(prefix=".wsinuclei-", dir=out.parent) as work:
            report = run_slide(args.inputImageFile, work, opts, log=lambda m: print(m, flush=True),
                               on_progress=lambda done, total: progress.fraction(0.95 * done / max(1, total)))
            if report.tiles_failed:  # never hand the DSA a partial result as if it were the slide's
                raise WsinucleiError(f"{report.tiles_failed} tiles could not be read ({report.failed[0]['error']}); "
                                     "no annotation written")
            os.replace(report.outputs["dsa"], out)
        progress.fraction(1.0)
        print(f"{report.nuclei} nuclei at score >= {opts.score_cut:g} written to {out.name}", flush=True)
        progress.end(time.time() - t0)
    except WsinucleiError as exc:
        print(f"{CLI_NAME}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
