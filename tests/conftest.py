"""Shared fixtures: isolated MLflow store and cwd, config composition, console-script runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from auctionlab.conf import CONF_DIR

REPO = Path(__file__).resolve().parent.parent

CONF = CONF_DIR
#: Config groups and their yaml options, discovered from disk (new options are picked up).
GROUPS = ("env", "mechanism", "attacker", "trainer", "scale", "tracking")

torch.set_num_threads(1)

# Fuzz budgets: the default suite keeps property tests short; `make test-slow` runs the same
# properties with many more examples (HYPOTHESIS_PROFILE=slow).
settings.register_profile("default", max_examples=10, deadline=None)
settings.register_profile("slow", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def options(group: str) -> list[str]:
    """The yaml options of a config group."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def env_names(family: str = "auction") -> list[str]:
    """Top-level env options whose declared problem family is ``family``."""
    names = sorted(p.stem for p in (CONF / "env").glob("*.yaml"))
    return [n for n in names if compose_cfg("train", [f"env={n}"]).family.name == family]


def env_node(name: str):
    """The ``env`` config node of ``env=<name>`` as Hydra composes it (family defaults applied)."""
    return compose_cfg("train", [f"env={name}"]).env


def compose_cfg(task: str, overrides: list[str] | tuple[str, ...] = ()):
    """The task's primary config composed with ``overrides`` (Hydra's compose API)."""
    from auctionlab.conf import compose

    return compose(task, list(overrides))


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One sqlite store for the whole session (its migrations run once)."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{db}"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path, mlflow_uri):
    """Every test runs in a temp cwd and logs to the session's temp MLflow store.

    Nothing may land in the repository's ``outputs/`` (runs, ``outputs/adhoc``, mlflow.db).
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def compose() -> Callable:
    """``compose(task, overrides)``: see :func:`compose_cfg`."""
    return compose_cfg


@pytest.fixture
def group_options() -> Callable[[str], list[str]]:
    """``group_options(group)``: the yaml names of a config group."""
    return options


def _cli_env(mlflow_uri: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=mlflow_uri,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HYDRA_FULL_ERROR="0",
    )
    return env


def run_cli(
    args: list[str],
    cwd: Path,
    mlflow_uri: str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the installed ``auctionlab`` console script in ``cwd``; output captured as text.

    ``env`` adds to (or, with ``None`` values, removes from) the test environment.
    """
    exe = Path(sys.executable).with_name("auctionlab")
    command = str(exe) if exe.exists() else "auctionlab"
    environment = _cli_env(mlflow_uri)
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return subprocess.run(
        [command, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _as_in_a_terminal() -> None:
    """The child takes Ctrl-C like a foreground command, even when the suite runs in the
    background (a background job of a non-interactive shell ignores SIGINT, and so would the
    child; auctionlab keeps an ignored signal ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def spawn_console(mlflow_uri) -> Callable[..., subprocess.Popen]:
    """``spawn_console(args, cwd)``: the console script started in the background (to signal)."""
    exe = Path(sys.executable).with_name("auctionlab")

    def spawn(args: list[str], cwd: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [str(exe), *args],
            cwd=cwd,
            env=_cli_env(mlflow_uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_as_in_a_terminal,
        )

    return spawn


@pytest.fixture(scope="session")
def run_console(mlflow_uri) -> Callable[..., subprocess.CompletedProcess]:
    """``run_console(args, cwd)``: the console script with the session's MLflow store."""
    return lambda args, cwd: run_cli(list(args), cwd, mlflow_uri)


@pytest.fixture(scope="session")
def smoke_runs(run_console) -> Callable[[Path, dict[str, list[str]]], dict[str, Path]]:
    """``smoke_runs(root, {name: overrides})``: 2x2 ``scale=smoke`` train runs under ``root``."""

    def train(root: Path, specs: dict[str, list[str]]) -> dict[str, Path]:
        runs = {}
        for name, args in specs.items():
            directory = root / name
            args = ["env=2x2", "scale=smoke", "threads=1", f"hydra.run.dir={directory}", *args]
            done = run_console(["train", *args], root)
            assert done.returncode == 0, done.stderr[-2000:]
            runs[name] = directory
        return runs

    return train


@pytest.fixture
def cli(run_console, tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """``cli(*args, cwd=None)``: the console script in a fresh temp cwd (or ``cwd``)."""
    default = tmp_path / "cli"
    default.mkdir()

    def call(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return run_console(args, cwd or default)

    return call


def mlflow_runs(uri: str) -> list:
    """Every run in every experiment of the store at ``uri``."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    if not experiments:
        return []
    return client.search_runs([e.experiment_id for e in experiments], max_results=10000)


@pytest.fixture
def mlflow_client(mlflow_uri):
    """An ``MlflowClient`` on the session store."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=mlflow_uri)


@pytest.fixture(scope="session")
def list_runs(mlflow_uri) -> Callable[[], list]:
    """``list_runs()``: every MLflow run recorded in the session store so far."""
    return lambda: mlflow_runs(mlflow_uri)


def pytest_terminal_summary(terminalreporter) -> None:
    """How many documented commands the docs tests ran, per page (tests/docs/test_commands.py)."""
    ran = getattr(sys.modules.get("test_commands"), "RAN", None)
    if ran:
        per_page = [f"{page}: {n}" for page, n in sorted(ran.items()) if n]
        terminalreporter.write_line(
            f"documented commands run: {sum(ran.values())} from {len(per_page)} pages "
            f"({len(ran)} pages read): {', '.join(per_page)}"
        )
