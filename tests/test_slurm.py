"""`--cluster slurm` through a real single-node Slurm: munged, slurmctld and slurmd started here on loopback
with a configuration of the test's own (Debian's slurm-wlm and munge; .ci/run installs them)."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from test_pipeline import OPTS, assert_same_detections
from wsinuclei.pipeline import RunOptions, run_slide

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scancel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"Slurm test cluster: {what} did not happen within {timeout} s")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"needs Slurm and munge ({', '.join(missing)} not found; Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs; this test runs only as root (as CI does)")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = d / "munge.sock"
    subprocess.run(["munged", "--force", f"--socket={sock}", f"--key-file={key}", f"--pid-file={d}/munged.pid",
                    f"--log-file={d}/munged.log", f"--seed-file={d}/munge.seed"], check=True)
    host = socket.gethostname()
    cpus = os.cpu_count() or 2
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=wsinucleitest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName=wsinuclei Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # sbatch/squeue/scancel called by dask-jobqueue read it
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
        subprocess.run(["slurmd", "-f", str(conf), "-N", host], check=True, env=env)

        def idle():
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env)
            return r.stdout.strip() == "idle"

        _wait(idle, 60, "the node coming up idle")
        yield {"conf": conf, "dir": d, "cpus": cpus}
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True, env=env)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            p = d / pid_file
            if p.exists():
                try:
                    os.kill(int(p.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def test_slurm_run_equals_in_process(slurm, pyramid_slide, random_model, tmp_path):
    ref = run_slide(pyramid_slide[0], tmp_path / "ref", RunOptions(model=str(random_model), **OPTS),
                    log=lambda *_: None)
    report = run_slide(pyramid_slide[0], tmp_path / "slurm",
                       RunOptions(model=str(random_model), cluster="slurm", jobs=2, slurm_cores=1,
                                  slurm_memory="2GB", slurm_walltime="00:15:00", slurm_wait_s=120, **OPTS),
                       log=lambda *_: None)
    assert report.executor.startswith("slurm, 2 jobs") and report.tiles_failed == 0
    assert report.tiles_processed == ref.tiles_processed and report.candidates == ref.candidates
    name = Path(pyramid_slide[0]).stem
    assert_same_detections(tmp_path / "ref" / f"{name}.csv", tmp_path / "slurm" / f"{name}.csv")
    # the tiles ran in the Slurm jobs' Dask workers, not here
    import csv

    workers = {row["worker"] for row in csv.DictReader(open(tmp_path / "slurm" / f"{name}.profile.csv"))}
    assert workers and not any(w.startswith("pid") for w in workers), workers
    # the jobs' logs go beside the results, not into the directory the command ran from
    assert len(list((tmp_path / "slurm" / "slurm-logs").glob("dask-worker-*.out"))) == 2 and not Path("slurm-1.out").exists()


def test_slurm_options_are_checked():
    from wsinuclei.errors import WsinucleiError

    with pytest.raises(WsinucleiError, match="leave out --workers"):
        RunOptions(cluster="slurm", workers=2).validate()
    with pytest.raises(WsinucleiError, match="--jobs must be a whole number"):
        RunOptions(cluster="slurm", jobs=0).validate()
