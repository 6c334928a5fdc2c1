"""Whole-slide detection: tissue, tiles, stain steps, inference, seam-safe merging, outputs, profile.

One pipeline with four executors (``executors.py``): in-process (reader threads and batched inference, the GPU
path), a local Dask cluster, an existing Dask cluster by scheduler address, or Dask workers started as Slurm
jobs. Workers open the slide by path and load the model once per process (``worker.py``); only tile
coordinates travel to them and only boxes (and contours, and features) come back.

Per-tile results are saved as they finish under ``OUT/.NAME.parts/<settings-hash>/``; rerunning the same
command skips finished tiles, so an interrupted run resumes and gives the same output. The final files are
written atomically once every tile is done (``run.py``).

Modules, top to bottom: ``run`` (a slide, start to end) → ``executors`` → ``worker`` (one tile) and ``plan``
(the slide's grid), ``seams``, ``thumbnail``; ``options`` holds the settings and records they share.
"""

from .executors import check_remote_workers, local_cluster_kwargs, slurm_cluster_kwargs
from .options import OPERATING_POINT, RunOptions, RunReport, SlideContext, TileResult
from .plan import SlidePlan, fitted_tile_shape, on_tissue, plan_slide, run_mpp
from .run import annotation_attributes, format_report, plan_only, run_slide, survey_slide
from .seams import merge_seams
from .thumbnail import draw_thumbnail, overlay_nuclei
from .worker import _STATE, postprocess, process_tile, read_and_preprocess  # noqa: F401 (_STATE: tests look in)

__all__ = ["OPERATING_POINT", "RunOptions", "RunReport", "SlideContext", "SlidePlan", "TileResult",
           "annotation_attributes", "check_remote_workers", "draw_thumbnail", "fitted_tile_shape", "format_report",
           "local_cluster_kwargs", "merge_seams", "on_tissue", "overlay_nuclei", "plan_slide", "postprocess",
           "process_tile", "read_and_preprocess", "run_mpp", "run_slide", "slurm_cluster_kwargs", "survey_slide"]
