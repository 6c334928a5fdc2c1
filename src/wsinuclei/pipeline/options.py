"""The run's settings and records: what the user asked for (``RunOptions``), what each worker needs
(``SlideContext``), what a tile gives back (``TileResult``) and what a run reports (``RunReport``)."""

from __future__ import annotations

import os

from dataclasses import dataclass, field

import numpy as np

from ..errors import WsinucleiError
from ..inference import BACKENDS


#: The score cut the shipped models' figures are quoted at (their scores are calibrated so that 0.5 is the
#: best validation cut); lower-scoring boxes are written for precision-recall curves, not as nuclei.
OPERATING_POINT = 0.5


#: ``--norm-statistics``: where GroupNorm's statistics come from
NORM_STATISTICS = ("tile", "slide")

#: the tile overlap (model pixels) a run gets when none is given: 64 with each tile's own statistics, 128 with slide
#: statistics (BENCHMARKS.md: INT8 rounding turns context differences near a tile's edge into changed nuclei at 64 px;
#: at 128 >= 99 % stay the same across tilings)
DEFAULT_OVERLAP = {"tile": 64, "slide": 128}

PROFILE_FIELDS = ["tile", "x", "y", "tissue_fraction", "read_s", "tissue_s", "reinhard_s", "deconvolution_s",
                  "inference_s", "postprocess_s", "features_s", "nuclei", "worker", "attempts"]


@dataclass
class RunOptions:
    mpp: float | None = None  # override the slide's µm/px
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h in base pixels
    regions: str | None = None  # a QuPath GeoJSON / DSA annotation file: only tiles touching its regions run
    tile_size: int = 1024
    overlap: int | None = None  # None: DEFAULT_OVERLAP for the run's norm_statistics (filled in by validate)
    min_tissue: float = 0.0  # a tile runs when its core holds more tissue than this (0: any tissue at all)
    tissue_mask: bool = True  # False: run every tile and keep every detection (images that are all tissue)
    native_resolution: bool = True  # slides inside the model's µm/px range run at their own resolution
    read_mpp: float | None = None  # read tiles at this µm/px (inside the model's range), e.g. 0.5 for a 40x slide
    model: str | None = None  # path; None = the shipped default
    min_score: float = 0.1  # floor for the CSV: every box at or above it, for precision-recall work
    score_cut: float = OPERATING_POINT  # what counts as a nucleus: the GeoJSON, the DSA file and the count
    device: str = "cpu"
    backend: str = "auto"  # inference.BACKENDS: a star model's INT8 network on OpenVINO where the file carries one
    batch_size: int = 1
    readers: int = 2
    workers: int = 0  # 0 = in-process; N = local Dask cluster with N worker processes
    scheduler: str | None = None  # address of an existing Dask scheduler
    force: bool = False
    gzip: bool = False
    retries: int = 2
    progress: bool = True
    keep_parts: bool = False
    # Reinhard source statistics (lab mean, lab std) to use instead of the slide's own: for a region cut
    # out of a larger slide, pass the whole slide's so the region is normalised as the slide would be.
    lab_stats: tuple | None = None
    # recorded in the annotation's attributes beside the options (the DSA CLI puts its own arguments here)
    extra_params: dict | None = None
    # a Slurm cluster (dask-jobqueue): each job is one Dask worker running the same tile tasks
    cluster: str | None = None  # None or "slurm"
    jobs: int = 2
    slurm_queue: str | None = None
    slurm_account: str | None = None
    slurm_cores: int = 4
    slurm_memory: str = "16GB"
    slurm_walltime: str = "02:00:00"
    slurm_wait_s: float = 600.0  # how long to wait for the first job to start
    slurm_log_dir: str | None = None  # the jobs' dask-worker-JOBID.out/.err (run_slide: OUT_DIR/slurm-logs)
    features: bool = False  # measure every nucleus at the score cut: NAME.nuclei.parquet and NAME.bag.parquet
    # each nucleus' embedding (the star head's features over its polygon) in NAME.nuclei.parquet, per-tile means
    # in NAME.bag.parquet (the two tables are written with it, with or without --features)
    embeddings: bool = False
    feature_families: tuple = ("morphometry", "fsd", "intensity", "gradient")
    # write the tables (NAME.nuclei.parquet, NAME.bag.parquet) and NAME.run.json only, not the CSV, GeoJSON, DSA
    # file, thumbnail or region counts (regions then only say where to run): for a library caller that reads the
    # tables back (train-types)
    tables_only: bool = False
    # "tile": GroupNorm's statistics over each tile (as the models were trained); "slide": measured once per slide
    # on windows of its tissue (models/norm_statistics.py), so the nuclei do not depend on the tiling or an ROI
    norm_statistics: str = "tile"

    def validate(self) -> "RunOptions":
        """Every option in its range, and only executor/device combinations that work; one clear error each. An
        overlap left at None becomes the default for the run's normalisation statistics (``DEFAULT_OVERLAP``)."""
        if self.regions is not None and self.roi is not None:
            raise WsinucleiError("--roi and --regions both say where to run: give one")
        if self.norm_statistics not in NORM_STATISTICS:
            raise WsinucleiError(f"--norm-statistics {self.norm_statistics}: expected one of {', '.join(NORM_STATISTICS)}")
        if self.overlap is None:
            self.overlap = DEFAULT_OVERLAP[self.norm_statistics]
        def integer(name, value, low, high):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise WsinucleiError(f"--{name} must be a whole number from {low} to {high}, got {value}")

        integer("tile-size", self.tile_size, 64, 16384)
        integer("overlap", self.overlap, 0, self.tile_size - 1)
        for name, value in (("tile-size", self.tile_size), ("overlap", self.overlap)):
            if value % 32:  # tiles start on the lattice of the network's coarsest stride (plan.lattice_area)
                raise WsinucleiError(f"--{name} must be a multiple of 32 (the network's coarsest stride, so every "
                                     f"tile starts on one lattice in slide coordinates), got {value}")
        integer("batch-size", self.batch_size, 1, 256)
        integer("readers", self.readers, 1, 64)
        integer("workers", self.workers, 0, 1024)
        cores = os.cpu_count() or 1
        if self.workers > cores and not (self.scheduler or self.cluster):
            # local workers each hold a model and a tile batch: more than the cores only thrash
            raise WsinucleiError(f"--workers {self.workers}: this machine has {cores} cores; use --workers {cores} "
                                 "or fewer (one local worker per core)")
        integer("retries", self.retries, 0, 10)
        for name, value in (("min-tissue", self.min_tissue), ("min-score", self.min_score),
                            ("score-cut", self.score_cut)):
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise WsinucleiError(f"--{name} must be a number from 0 to 1, got {value}")
        if self.features:
            from ..features import FAMILIES

            unknown = [f for f in self.feature_families if f not in FAMILIES]
            if unknown or not self.feature_families:
                raise WsinucleiError(f"--feature-families: unknown {', '.join(unknown) or '(none given)'}; "
                                     f"known: {', '.join(FAMILIES)}")
        if self.tables_only and not (self.features or self.embeddings):
            raise WsinucleiError("tables_only writes the feature and embedding tables only: ask for features or "
                                 "embeddings too")
        if self.score_cut < self.min_score:
            raise WsinucleiError(f"--score-cut {self.score_cut:g} is below --min-score {self.min_score:g}: boxes "
                                 "under --min-score are never kept; lower --min-score too")
        if self.mpp is not None and not (self.mpp > 0 and np.isfinite(self.mpp)):
            raise WsinucleiError(f"--mpp must be a positive number, got {self.mpp}")
        if self.read_mpp is not None:
            if not (isinstance(self.read_mpp, (int, float)) and self.read_mpp > 0 and np.isfinite(self.read_mpp)):
                raise WsinucleiError(f"--read-mpp must be a positive number, got {self.read_mpp}")
            if not self.native_resolution:
                raise WsinucleiError("--read-mpp and --model-resolution both set the reading resolution: give one")
        if self.scheduler and self.workers:
            raise WsinucleiError("--workers starts a local Dask cluster and --scheduler uses a running one: give one of them")
        if self.cluster is not None:
            if self.cluster != "slurm":
                raise WsinucleiError(f"--cluster {self.cluster}: only slurm is supported")
            if self.scheduler or self.workers:
                raise WsinucleiError("--cluster slurm starts its own Dask workers as Slurm jobs: leave out --workers "
                                     "and --scheduler")
            integer("jobs", self.jobs, 1, 10000)
            integer("slurm-cores", self.slurm_cores, 1, 1024)
            if self.device.startswith("cuda:"):
                raise WsinucleiError("with --cluster slurm each job takes its own GPU: give --device cuda")
        if self.batch_size > 1 and (self.scheduler or self.workers or self.cluster):
            raise WsinucleiError("--batch-size batches tiles in-process; with --workers or --scheduler each Dask task "
                                 "is one tile (leave --batch-size at 1)")
        if self.backend not in BACKENDS:
            raise WsinucleiError(f"--backend {self.backend}: expected one of {', '.join(BACKENDS)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise WsinucleiError(f"--device {self.device}: expected cpu, cuda or cuda:N")
        if self.device.startswith("cuda:") and (self.workers or self.scheduler):
            raise WsinucleiError("with Dask each worker takes its own GPU: give --device cuda, not a numbered device")
        return self


@dataclass
class SlideContext:
    """Everything a worker needs to process any tile of one slide (small; sent with each task)."""

    path: str
    mpp: float
    model: str | None
    model_mpp: float
    input_channels: str
    src_mu: list[float]
    src_sigma: list[float]
    target_mu: list[float]
    target_sigma: list[float]
    device: str = "cpu"
    min_score: float = 0.1
    retries: int = 2
    score_cut: float = OPERATING_POINT
    features: tuple | None = None  # feature families to measure, None for none
    backend: str = "auto"
    embeddings: bool = False  # each nucleus' embedding (--embeddings)
    # --norm-statistics slide: the slide's GroupNorm statistics (norm_statistics.to_lists) and their digest
    norm_stats: dict | None = None
    norm_key: str = ""


@dataclass
class TileResult:
    key: str
    boxes: np.ndarray
    scores: np.ndarray
    profile: dict
    failed: str | None = None
    outlines: np.ndarray | None = None  # (N, rays, 2) nuclear contours in base pixels, for contour models
    features: dict | None = None  # column -> (N,) values, for runs with --features (NaN under the score cut)
    type_probs: np.ndarray | None = None  # (N, types) type probabilities, for typed models
    embeddings: np.ndarray | None = None  # (N, C) float16 embeddings, for runs with --embeddings


def _version() -> str:
    from .. import __version__

    return __version__


@dataclass
class RunReport:
    name: str
    slide: str = ""  # absolute path of the slide or image
    mpp: float = 0.0  # µm/px of its base level, as used
    read_mpp: float = 0.0  # µm/px the tiles were read at (the slide's own when the model serves it)
    outputs: dict = field(default_factory=dict)
    nuclei: int = 0  # score >= score_cut: what the model counts as nuclei (GeoJSON, DSA file)
    nuclei_by_type: dict = field(default_factory=dict)  # type name -> nuclei of that type (typed models)
    candidates: int = 0  # boxes in the CSV: score >= min_score
    score_cut: float = OPERATING_POINT
    min_score: float = 0.1
    model: dict = field(default_factory=dict)  # file, sha1 prefix
    wsinuclei: str = field(default_factory=lambda: _version())  # the version that made the run
    device: str = "cpu"
    backend: str = ""  # what ran the network in-process (torch, openvino, openvino-int8); the option, distributed
    tiles_total: int = 0
    tiles_processed: int = 0
    tiles_skipped_tissue: int = 0
    tiles_outside_regions: int = 0  # with --regions: tiles whose core touches none of them (not run)
    tiles_resumed: int = 0
    tiles_failed: int = 0
    dropped_off_tissue: int = 0  # detections whose centre lay off the (grown) tissue mask
    # the tissue in the cores of the tiles that ran, mm² (each core's area times its tissue fraction; the whole core
    # without a tissue mask): what per-mm² densities of a slide divide by (wsinuclei cohort)
    tissue_mm2: float | None = None
    wall_s: float = 0.0
    tiles_per_s: float = 0.0
    executor: str = ""
    workers: int = 1
    stage_totals_s: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)
    reinhard_source: dict = field(default_factory=dict)
    # --norm-statistics slide: the windows, runtime and digest of the slide's GroupNorm statistics
    norm_statistics: dict = field(default_factory=dict)
