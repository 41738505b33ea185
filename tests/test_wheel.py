"""A user's install: build the wheel, install it (not editable) and run from an empty directory.

The configs ship inside the package, so nothing of the source checkout is needed at run time.
Dependencies come from this test environment's site-packages (no network); the wheel itself
is the only copy of ``auctionlab`` the throwaway environment can import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IGNORED = (".git", ".venv", "outputs", "multirun", "build", "dist", "*.egg-info", "__pycache__")


def _run(args: list, cwd: Path, env: dict | None = None, timeout: float = 600):
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``bin/`` of a fresh virtual environment with the wheel installed; deps borrowed."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*IGNORED, ".*cache", "mlruns"))
    dist = root / "dist"
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            dist,
            ".",
        ],
        cwd=source,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("auctionlab-*.whl")
    prefix = root / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", prefix], cwd=root)
    assert made.returncode == 0, made.stderr
    python = prefix / "bin" / "python"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = prefix / "lib" / version / "site-packages"
    # Dependencies: this environment's site-packages, searched after the venv's own (which
    # holds the wheel); a source checkout on sys.path is left out on purpose.
    borrowed = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz_test_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index"]
    done = _run([*pip, wheel], cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return prefix / "bin"


def _user_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW"))}
    env["AUCTIONLAB_CACHE"] = str(tmp_path / "cache")
    return env


def test_the_wheel_is_what_runs(installed, tmp_path):
    probe = _run(
        [installed / "python", "-c", "import auctionlab.conf as c; print(c.CONF_DIR)"],
        cwd=tmp_path,
        env=_user_env(tmp_path),
    )
    assert probe.returncode == 0, probe.stderr
    conf = Path(probe.stdout.strip())
    assert conf.is_relative_to(installed.parent), conf  # not the checkout
    assert (conf / "train.yaml").is_file() and (conf / "env" / "2x2.yaml").is_file()
    # every config of the checkout ships, however deep (recipe/<scale>/<env>/<mechanism>.yaml)
    source = REPO / "auctionlab" / "conf"
    wanted = {p.relative_to(source) for p in source.rglob("*.yaml")}
    assert wanted == {p.relative_to(conf) for p in conf.rglob("*.yaml")}
    assert (conf.parent / "solvers" / "pf" / "native.c").is_file()


def test_train_smoke_from_an_empty_directory(installed, tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    result = _run([installed / "auctionlab", "train", "scale=smoke"], cwd, _user_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (cwd / "outputs" / "runs").glob("*/*_train")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_revenue"] > 0
    assert (cwd / "outputs" / "mlflow.db").is_file()


@pytest.mark.slow  # the installed console script and package data are checked by train above
def test_reproduce_smoke_from_an_empty_directory(installed, tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    args = [installed / "auctionlab", "reproduce", "experiment=classical_revenue", "scale=smoke"]
    result = _run(args, cwd, _user_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (cwd / "outputs" / "runs").glob("*/*_reproduce")
    table = (run / "classical_revenue.md").read_text()
    assert "myerson_itemwise" in table and "bundled_myerson" in table
