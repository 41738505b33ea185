"""A two-job sweep through a real one-node Slurm (``scripts/slurm_local.sh``): make test-slow.

The test starts munged, slurmctld and slurmd from the distribution's packages in a temporary
state dir, submits ``train -m hydra/launcher=submitit_slurm`` through them and stops the daemons
again, whatever the outcome. Without the Slurm binaries (CI) it skips.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, mlflow_runs, run_cli

SCRIPT = REPO / "scripts" / "slurm_local.sh"
#: What the script needs on PATH (Debian: slurmctld slurmd slurm-client munge).
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")
#: Accounting (sacct) on top: slurmdbd and MariaDB (Debian: slurmdbd mariadb-server).
ACCOUNTING = ("slurmdbd", "sacctmgr", "sacct", "mariadbd", "mariadb", "mariadb-install-db")
PARTITION = "local"


def _why_not() -> str | None:
    """Why this machine cannot host the local Slurm, or None."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return f"no Slurm here ({', '.join(missing)} not on PATH); see scripts/slurm_local.sh"
    if os.geteuid() != 0:
        return "the local Slurm runs its daemons as root (scripts/slurm_local.sh)"
    return None


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports nothing listens on (all held open while choosing)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@dataclass
class Cluster:
    """A running local Slurm: its state dir and the environment its clients need."""

    state: Path
    env: dict[str, str]
    #: whether slurmdbd keeps accounting, so that ``sacct`` answers
    accounting: bool

    def log(self, name: str, lines: int = 30) -> str:
        """The last ``lines`` lines of ``log/<name>`` (for failure messages)."""
        path = self.state / "log" / name
        text = path.read_text(errors="replace") if path.exists() else "(none)"
        return f"--- {name}\n" + "\n".join(text.splitlines()[-lines:])


def _script(action: str, state: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), action, str(state)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def slurm() -> Iterator[Cluster]:
    """munged + slurmctld + slurmd on free ports, stopped (and their state removed) afterwards."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    # A short path: the munge socket lives in it, and a Unix socket path has at most 107 bytes.
    state = Path(tempfile.mkdtemp(prefix="auctionlab-slurm-"))
    accounting = all(shutil.which(name) for name in ACCOUNTING)
    names = ("CTLD", "SLURMD", "DBD", "DB")
    chosen = zip(names, _free_ports(len(names)), strict=True)
    ports = {f"SLURM_LOCAL_{name}_PORT": str(port) for name, port in chosen}
    ports |= {
        "SLURM_LOCAL_PARTITION": PARTITION,
        "SLURM_LOCAL_ACCOUNTING": "yes" if accounting else "no",
    }
    cluster = Cluster(state, {"SLURM_CONF": str(state / "slurm.conf")}, accounting)
    try:
        started = _script("start", state, ports)
        assert started.returncode == 0, f"{started.stdout}\n{started.stderr}"
        yield cluster
    finally:
        stopped = _script("stop", state, ports)
        daemons = ("slurmctld", "slurmd", "slurmdbd", "db/mariadbd", "munge/munged")
        leftover = [n for n in daemons if _alive(state, n)]
        if not leftover:
            shutil.rmtree(state, ignore_errors=True)
        assert stopped.returncode == 0 and not leftover, (
            f"daemons left running: {leftover}\n{stopped.stdout}\n{stopped.stderr}"
        )


def _alive(state: Path, name: str) -> bool:
    pidfile = state / f"{name}.pid"
    if not pidfile.exists():
        return False
    try:
        os.kill(int(pidfile.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def _completed_jobs(jobcomp: Path) -> list[dict[str, str]]:
    """The records of jobcomp/filetxt's log, one ``Key=value`` dict per finished job."""
    if not jobcomp.exists():
        return []
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in jobcomp.read_text().splitlines()]


def _sacct(cluster: Cluster, job: str) -> dict[str, str]:
    """``sacct``'s state of each task of job ``job`` (steps left out)."""
    done = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", job],
        env={**os.environ, **cluster.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(line.split("|") for line in done.stdout.splitlines())


@pytest.mark.slow
def test_two_job_sweep_through_slurm(slurm, tmp_path):
    cwd = tmp_path / "sweep"
    cwd.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "train",
        "-m",
        "hydra/launcher=submitit_slurm",
        f"hydra.launcher.partition={PARTITION}",
        "hydra.launcher.cpus_per_task=1",  # the node has 2 cores: both jobs run at once
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=10",
        "env=1x2",
        "seed=0,1",
        "scale=smoke",
        "threads=1",
        f"tracking.uri={uri}",
    ]
    # The jobs inherit this environment through sbatch (--export=ALL): PYTHONPATH, when the
    # suite runs a checkout that is not the installed one, reaches them too.
    done = run_cli(args, cwd, uri, timeout=600, env=slurm.env)
    logs = "\n".join(slurm.log(n) for n in ("slurmctld.log", "slurmd.log", "jobcomp.log"))
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{logs}"

    every = mlflow_runs(uri)
    (parent,) = [r for r in every if r.data.tags.get("task") == "multirun"]
    runs = [r for r in every if r is not parent]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"], logs
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    assert {r.data.tags["choice.env"] for r in runs} == {"1x2"}

    # Submitted through sbatch as one job array, and both tasks completed in Slurm's own records.
    (sweep,) = (cwd / "outputs" / "multirun").glob("*/*")
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    array_id = script.name.removesuffix("_submission.sh")
    assert f"#SBATCH --partition={PARTITION}" in script.read_text()
    submitted = slurm.log("slurmctld.log", lines=10_000)
    assert f"_slurm_rpc_submit_batch_job: JobId={array_id} " in submitted, logs
    # submitit returns when a task's result file appears; slurmctld records the task's end when
    # slurmd reports it, moments later (seconds on a busy machine)
    deadline = time.monotonic() + 60
    while True:
        jobcomp = _completed_jobs(slurm.state / "log" / "jobcomp.log")
        jobs = [j for j in jobcomp if j.get("ArrayJobId") == array_id]
        if len(jobs) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sorted(j["ArrayTaskId"] for j in jobs) == ["0", "1"], logs
    assert all(j["JobState"] == "COMPLETED" and j["ExitCode"] == "0:0" for j in jobs), jobs
    assert {j["Partition"] for j in jobs} == {PARTITION}
    if slurm.accounting:  # what submitit polls for job states
        states = _sacct(slurm, array_id)
        assert states == {f"{array_id}_0": "COMPLETED", f"{array_id}_1": "COMPLETED"}, states

    # Each array task ran one of the MLflow runs: its submitit log names that run's directory.
    run_dirs = {r.data.tags["run_dir"] for r in runs}
    ran = set()
    for job in jobs:
        out = sweep / ".submitit" / f"{array_id}_{job['ArrayTaskId']}"
        text = "".join(p.read_text() for p in out.glob("*_log.out"))
        assert f"job_id={array_id}_{job['ArrayTaskId']}" in text  # submitit saw the Slurm ids
        ran |= {d for d in run_dirs if d in text}
    assert ran == run_dirs
    # ...and records it: the MLflow run's provenance names its array task as sacct does
    tasks = {f"{array_id}_{j['ArrayTaskId']}" for j in jobs}
    assert {r.data.tags.get("provenance.slurm_job_id") for r in runs} == tasks
    ids = ", ".join(f"{array_id}_{j['ArrayTaskId']} (JobId={j['JobId']})" for j in jobs)
    sacct = "sacct: both COMPLETED" if slurm.accounting else "no accounting"
    print(f"Slurm jobs: {ids} ({sacct}); MLflow runs: {sorted(r.info.run_id for r in runs)}")


def test_script_names_its_actions_on_a_wrong_one(tmp_path):
    done = _script("restart", tmp_path / "state", {})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"slurm_local.sh: usage: {SCRIPT} start|stop|status [STATE_DIR] (got 'restart')"
    ]
