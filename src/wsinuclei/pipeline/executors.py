"""Where tiles run: in-process (reader threads ahead of batched inference), a local Dask cluster, a running
Dask cluster, or Dask workers started as Slurm jobs. Each executor calls ``on_result`` with every
``TileResult`` as it arrives."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..errors import WsinucleiError
from ..tiles import Tile
from . import worker
from .options import RunOptions
from .plan import SlidePlan
from .worker import (TileReadError, _close_slide, _dask_worker_init, _failed, postprocess, process_tile,
                     read_and_preprocess)


def _yield_to_inference() -> None:
    """Run the calling thread at the lowest CPU priority (Linux, where a thread has its own nice value). The
    post-processing thread then takes the cores only when inference leaves them idle: at equal priority it can
    preempt one of torch's threads, and torch's parallel steps wait for their slowest thread."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:  # not permitted here: run at the normal priority
            pass


def _run_in_process(plan: SlidePlan, todo: list[Tile], opts: RunOptions, on_result):
    """Reader threads read and normalise tiles ahead; inference runs in batches on this thread, and each batch's
    post-processing on more threads, at low priority, while the next batch is inferred: the detector leaves part
    of the cores idle (its serial steps), which the post-processing uses. Without features one post-processing
    thread keeps up; with them (several times the detector's work) there is one per core, each on its own batch,
    since their compiled steps (filters, distance transforms, sums) release the GIL. Results still reach
    ``on_result`` on this thread, in tile order."""
    ctx = plan.ctx
    det = worker.in_process_detector(ctx.model, ctx.device, ctx.backend, ctx.model_mpp, ctx.embeddings,
                                     ctx.norm_stats, ctx.norm_key)
    batch_size = in_process_batch(opts, det)

    def prepare(t):
        try:
            return t, *read_and_preprocess(ctx, t), None
        except TileReadError as exc:
            return t, None, None, None, exc

    def finish(good, preds):
        return [postprocess(ctx, t, b, s, p, o, rgb, ty, e) for (t, _, p, rgb), (b, s, o, ty, e) in zip(good, preds)]

    post_threads = post_processing_threads(ctx.features)
    with ThreadPoolExecutor(max_workers=max(1, opts.readers)) as pool, \
            ThreadPoolExecutor(max_workers=post_threads, initializer=_yield_to_inference) as post:
        # bounded look-ahead: memory is set by tiles in flight, not slide size
        window = max(2 * batch_size, opts.readers * 2)
        pending = [pool.submit(prepare, t) for t in todo[:window]]
        nxt = window
        finishing = []  # earlier batches' post-processing, oldest first, at most post_threads in flight

        def deliver():
            for r in finishing.pop(0).result():
                on_result(r)

        while pending:
            batch = []
            while pending and len(batch) < batch_size:
                batch.append(pending.pop(0).result())
                if nxt < len(todo):
                    pending.append(pool.submit(prepare, todo[nxt]))
                    nxt += 1
            good = [(t, x, p, rgb) for t, x, p, rgb, e in batch if e is None]
            if good:
                t0 = time.perf_counter()
                preds = det.predict_full([x for _, x, _, _ in good])
                dt = (time.perf_counter() - t0) / len(good)
                for _, _, p, _ in good:
                    p["inference_s"] = dt
            while len(finishing) >= post_threads:
                deliver()
            failed = [_failed(t, str(e), e.attempts) for t, _, _, _, e in batch if e is not None]
            if failed:  # queued behind the batches in flight, so results keep tile order
                finishing.append(Future())
                finishing[-1].set_result(failed)
            if good:
                finishing.append(post.submit(finish, good, preds))
        while finishing:
            deliver()


def post_processing_threads(features) -> int:
    """Threads that post-process in-process batches: one per usable core when features are measured, else one."""
    return max(1, os.cpu_count() or 1) if features else 1


def in_process_batch(opts: RunOptions, det) -> int:
    """Tiles per call to the detector in-process: ``--batch-size``, or as many as it runs at once (its OpenVINO
    streams) where that is more."""
    return max(opts.batch_size, det.tiles_at_once)


#: seconds a local Dask worker waits for its lost scheduler before it exits
WORKER_DEATH_TIMEOUT_S = 10


def local_cluster_kwargs(opts: RunOptions, gpus: int) -> dict:
    """LocalCluster settings. With --device cuda every worker offers one GPU resource (tiles ask for one,
    so a cluster started without it would never run a tile), and there must be a GPU for each worker."""
    # a worker that loses its scheduler (it lives in the run's process) exits after this long: a safeguard, since
    # with this distributed a killed run's workers already end with it (tests/test_pipeline.py); the reported
    # orphans came from a run of 1,000 workers, which validate() now refuses
    kwargs = dict(n_workers=opts.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                  silence_logs=40, death_timeout=WORKER_DEATH_TIMEOUT_S)
    if opts.device.startswith("cuda"):
        if opts.workers > gpus:
            raise WsinucleiError(f"--workers {opts.workers} --device cuda takes one GPU per worker and this machine "
                                 f"has {gpus}: use --workers {gpus} or fewer")
        kwargs["resources"] = {"GPU": 1}
    return kwargs


def slurm_cluster_kwargs(opts: RunOptions) -> dict:
    """dask-jobqueue SLURMCluster settings: one Dask worker per job with --slurm-cores threads (torch uses them),
    this Python for the workers, and a GPU request per job with --device cuda."""
    import sys

    kwargs = dict(cores=opts.slurm_cores, processes=1, memory=opts.slurm_memory, walltime=opts.slurm_walltime,
                  queue=opts.slurm_queue, account=opts.slurm_account, python=sys.executable,
                  scheduler_options={"dashboard_address": None}, silence_logs="error")
    if opts.slurm_log_dir:
        kwargs["log_directory"] = opts.slurm_log_dir
    if opts.device.startswith("cuda"):
        kwargs["job_extra_directives"] = ["--gres=gpu:1"]
        kwargs["worker_extra_args"] = ["--resources", "GPU=1"]
    return kwargs


def check_remote_workers(info: dict, device: str, address: str) -> None:
    """Refuse a cluster whose workers cannot run the tiles (instead of waiting for them forever)."""
    workers = info.get("workers", {})
    if not workers:
        raise WsinucleiError(f"the Dask scheduler at {address} has no workers; start some with 'dask worker {address}'")
    if device.startswith("cuda") and not any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values()):
        raise WsinucleiError(f"--device cuda: no worker of the Dask scheduler at {address} offers a GPU; start them "
                             f"with 'dask worker {address} --resources GPU=1' (one per GPU)")


def _start_slurm(opts: RunOptions):
    from distributed import Client

    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise WsinucleiError("--cluster slurm needs dask-jobqueue: pip install dask-jobqueue") from None
    import shutil

    if shutil.which("sbatch") is None:
        raise WsinucleiError("--cluster slurm: no sbatch on PATH (run on a Slurm login node)")
    try:
        cluster = SLURMCluster(**slurm_cluster_kwargs(opts))
        cluster.scale(jobs=opts.jobs)
    except Exception as exc:
        raise WsinucleiError(f"--cluster slurm: cannot submit the worker jobs ({str(exc).strip().splitlines()[-1]})") from None
    client = Client(cluster)
    try:
        client.wait_for_workers(1, timeout=opts.slurm_wait_s)
    except Exception:
        client.close()
        cluster.close()
        raise WsinucleiError(f"--cluster slurm: no worker job started within {opts.slurm_wait_s:g} s (check squeue; "
                             "the jobs are cancelled)") from None
    # jobs start one by one: a worker plugin sets up every worker, those that join later too (each job
    # has its own GPU from --gres, so no GPU is picked by worker name here)
    from distributed.diagnostics.plugin import WorkerPlugin

    class TorchThreads(WorkerPlugin):
        name = "wsinuclei-torch-threads"

        def setup(self, worker):
            _dask_worker_init(opts.slurm_cores, "cpu")

    client.register_plugin(TorchThreads())
    return cluster, client


def _run_dask(plan: SlidePlan, todo: list[Tile], opts: RunOptions, on_result):
    with _environment_kept():
        _run_dask_cluster(plan, todo, opts, on_result)


@contextlib.contextmanager
def _environment_kept():
    """Dask's nanny writes into this process's environment each time it starts a worker and leaves it there: its
    pre-spawn variables (OMP_NUM_THREADS=1 and the like), PYTHONHASHSEED and a parent-pid marker. Every process
    started later (a slide after this one on Slurm, a user's own subprocess) would run its math on one thread, and
    torch's sums in another order. The environment is put back as it was when the run ends: every variable the
    run added, removed or changed (a run of ours sets none of its own)."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for k in set(os.environ) - set(before):
            os.environ.pop(k, None)
        for k, v in before.items():
            if os.environ.get(k) != v:
                os.environ[k] = v


def _run_dask_cluster(plan: SlidePlan, todo: list[Tile], opts: RunOptions, on_result):
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if opts.cluster == "slurm":
        cluster, client = _start_slurm(opts)
    elif opts.scheduler:
        try:
            client = Client(opts.scheduler, timeout="20s")
        except Exception as exc:
            raise WsinucleiError(f"cannot reach the Dask scheduler at {opts.scheduler} ({exc})") from None
        try:
            client.wait_for_workers(1, timeout=30)
        except Exception:
            pass  # reported just below
        try:
            check_remote_workers(client.scheduler_info(), plan.ctx.device, opts.scheduler)
        except WsinucleiError:
            client.close()
            raise
    else:
        import torch

        threads = max(1, (os.cpu_count() or 1) // opts.workers)
        gpus = torch.cuda.device_count() if opts.device.startswith("cuda") else 0
        cluster = LocalCluster(**local_cluster_kwargs(opts, gpus))
        client = Client(cluster)
        client.run(_dask_worker_init, threads, opts.device)
    try:
        ctx_future = client.scatter(plan.ctx, broadcast=True)  # sent once per worker, not per tile
        # On GPUs: one worker per GPU, started with `--resources GPU=1` (and its own CUDA_VISIBLE_DEVICES);
        # each tile then claims one GPU, so no two tiles share a card.
        extra = {"resources": {"GPU": 1}} if plan.ctx.device.startswith("cuda") else {}
        futures = [client.submit(process_tile, ctx_future, t, key=f"tile-{Path(plan.ctx.path).name}-{t.key}-{id(plan)}",
                                 retries=2, pure=False, **extra) for t in todo]
        for fut in as_completed(futures):
            on_result(fut.result())
            fut.release()
    finally:
        if cluster is None:  # a long-lived cluster's workers let go of this slide
            try:
                client.run(_close_slide, plan.ctx.path, plan.ctx.mpp)
            except Exception:  # a worker lost meanwhile has nothing to close
                pass
        client.close()
        if cluster is not None:
            cluster.close()
