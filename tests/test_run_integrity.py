"""Run directories are tamper-evident, sweeps are checked whole, results and JSON are finite.

One tiny training run (module fixture) is copied per test. The console script is run where
the one-line message, the exit status, the files left behind or the MLflow status is what is
checked; the rest calls the library in-process. Full and read-only file systems are real:
a tmpfs mounted in a user + mount namespace (``unshare -rm``), skipped where that is not
allowed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from auctionlab import cli
from auctionlab.certify.base import Certificate
from auctionlab.errors import ConfigError, NonFiniteError, OutputError
from auctionlab.runs import (
    MANIFEST,
    SEALED,
    load_trained,
    save_checkpoint,
    sha256_file,
    strict_json,
    verify_manifest,
    write_json,
    write_manifest,
)

#: A tiny but complete training run (a few seconds).
TINY = [
    "env=1x2",
    "scale=smoke",
    "mechanism.hidden=[8]",
    "train.iterations=4",
    "train.log_every=2",
    "train.checkpoint_every=2",
    "validation.profiles=8",
    "threads=1",
]
#: A short stress test.
SHORT = ["scale=smoke", "profiles=16", "attack_budget.restarts=1", "attack_budget.steps=2"]
CPU = torch.device("cpu")
AUCTIONLAB = Path(sys.executable).with_name("auctionlab")


def strict_load(path: Path):
    """``json.loads`` that refuses the non-standard ``NaN`` / ``Infinity`` literals."""

    def refuse(literal: str):
        raise ValueError(f"{path.name}: non-standard JSON literal {literal}")

    return json.loads(path.read_text(), parse_constant=refuse)


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_console) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    directory = root / "run"
    result = run_console(["train", *TINY, f"hydra.run.dir={directory}"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    return directory


@pytest.fixture
def copy(trained, tmp_path) -> Path:
    """A copy of the trained run (relative names in the manifest: a copy stays valid)."""
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def nan_weights(run: Path) -> None:
    """Every weight NaN, the checkpoint hash and the manifest re-sealed: only results tell."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for tensor in state["mechanism"].values():
        if tensor.is_floating_point():
            tensor.fill_(math.nan)
    save_checkpoint(state, run / "checkpoint.pt")
    write_manifest(run)


# -- the manifest ---------------------------------------------------------------------------------
def test_a_finished_run_is_sealed_last_and_its_json_is_strict(trained):
    manifest = strict_load(trained / MANIFEST)
    assert manifest["format"] == 1 and set(manifest["files"]) == set(SEALED)
    for name, digest in manifest["files"].items():
        assert sha256_file(trained / name) == digest, name
    verify_manifest(trained)
    # metrics.json first, the manifest last: a manifest means the results are complete.
    assert (trained / "metrics.json").stat().st_mtime_ns <= (trained / MANIFEST).stat().st_mtime_ns
    for path in trained.glob("*.json"):
        strict_load(path)
    assert not list(trained.rglob("*.tmp"))


def test_edited_config_is_refused_in_one_line(copy, cli, tmp_path, list_runs):
    config = copy / "config.yaml"
    text = config.read_text()
    assert "activation: tanh" in text
    config.write_text(text.replace("activation: tanh", "activation: relu"))
    before = len(list_runs())
    cwd = tmp_path / "evaluate"
    cwd.mkdir()
    result = cli("evaluate", f"run={copy}", *SHORT, cwd=cwd)
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_line(result) == (
        f"auctionlab: error: run={copy}: config.yaml does not match manifest.json "
        "(edited after the run finished?); refusing to use it"
    )
    assert not (cwd / "outputs").exists() and len(list_runs()) == before


def _edit_json(path: Path) -> None:
    data = json.loads(path.read_text())
    data["edited"] = 1
    path.write_text(json.dumps(data))


def _perturb_checkpoint(run: Path) -> None:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    for tensor in state["mechanism"].values():
        if tensor.is_floating_point():
            tensor.add_(0.5)
    save_checkpoint(state, run / "checkpoint.pt")  # its own .sha256 agrees: only the seal tells


TAMPER = {
    "metrics.json": (lambda run: _edit_json(run / "metrics.json"), "does not match manifest"),
    "checkpoint.pt": (_perturb_checkpoint, "does not match manifest"),
    "choices.json": (lambda run: _edit_json(run / "choices.json"), "does not match manifest"),
    ".hydra/overrides.yaml": (
        lambda run: (run / ".hydra/overrides.yaml").write_text("- mechanism.hidden=[8]\n"),
        "does not match manifest",
    ),
    "choices.json-removed": (lambda run: (run / "choices.json").unlink(), "is missing"),
    "manifest.json": (lambda run: (run / MANIFEST).unlink(), "is missing"),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_run_is_refused_naming_the_file(case, copy):
    damage, words = TAMPER[case]
    damage(copy)
    with pytest.raises(ConfigError) as info:
        load_trained(str(copy), CPU)
    message = str(info.value)
    name = case.removesuffix("-removed")
    assert message.startswith(f"run={copy}: {name} {words}"), message
    assert message.endswith("refusing to use it") and "\n" not in message


def test_a_finished_run_resumes_and_is_sealed_again(copy, cli):
    # Inside the job Hydra has rewritten .hydra/ before the seal is checked again.
    result = cli("train", f"resume={copy}", "train.iterations=6", "tracking=none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert strict_load(copy / "metrics.json")["iterations"] == 6
    verify_manifest(copy)
    load_trained(str(copy), CPU)


def test_resume_of_a_finished_run_checks_its_seal(copy, compose):
    from auctionlab.tasks import train

    resume = [*TINY, "train.iterations=6", f"resume={copy}"]
    train.prepare(compose("train", resume))  # as sealed: it may continue
    recorded = copy / ".hydra" / "overrides.yaml"
    recorded.write_text(recorded.read_text() + "- trainer.lr=0.5\n")
    with pytest.raises(ConfigError, match=r"overrides\.yaml does not match manifest\.json"):
        train.prepare(compose("train", resume))
    # An unfinished run has no seal yet (its checkpoint has its own hash): it resumes.
    (copy / "metrics.json").unlink()
    (copy / MANIFEST).unlink()
    train.prepare(compose("train", resume))


# -- a checkpoint that does not fit its config ----------------------------------------------------
def test_resume_with_other_hidden_sizes_is_refused_in_one_line(copy):
    # What `auctionlab train resume=<run> mechanism.hidden=[4]` checks before Hydra starts.
    args = cli.resume_overrides([f"resume={copy}", "mechanism.hidden=[4]", "tracking=none"])
    with pytest.raises(ConfigError) as info:
        cli.precheck("train", args)
    message = str(info.value)
    assert message.startswith(
        f"resume={copy}: checkpoint does not fit this config (mechanism.hidden=[4]: "
    ), message
    assert "] in the checkpoint, [" in message and message.endswith("] here)"), message
    assert "\n" not in message


def test_resealed_config_with_other_hidden_sizes_is_refused(copy):
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("hidden:\n  - 8\n", "hidden:\n  - 4\n"))
    write_manifest(copy)
    with pytest.raises(ConfigError) as info:
        load_trained(str(copy), CPU)
    message = str(info.value)
    assert message.startswith(f"run={copy}: checkpoint does not fit its config ("), message
    assert "mechanism.hidden=[4]" in message and "\n" not in message


# -- non-finite results ---------------------------------------------------------------------------
def test_nan_weights_evaluate_fails_and_writes_no_result(copy, cli, tmp_path, mlflow_client):
    nan_weights(copy)
    out = tmp_path / "evaluated"
    result = cli("evaluate", f"run={copy}", *SHORT, f"hydra.run.dir={out}")
    assert result.returncode == 1, result.stderr[-3000:]
    line = one_line(result)
    assert line.startswith("auctionlab: run failed: non-finite results (revenue"), line
    assert not (out / "metrics.json").exists() and not (out / MANIFEST).exists()
    failure = strict_load(out / "failure.json")
    assert failure["status"] == "failed" and "revenue" in failure["non_finite"]
    (run,) = mlflow_client.search_runs(
        [e.experiment_id for e in mlflow_client.search_experiments()],
        filter_string=f"tags.run_dir = '{out.resolve()}'",
    )
    assert run.info.status == "FAILED" and "non-finite results" in run.data.tags["failure"]


def test_nan_weights_certificate_fails_and_writes_no_certificate(copy, compose):
    from auctionlab.tasks import certify

    nan_weights(copy)
    cfg = compose(
        "certify",
        ["certifier=statistical", f"run={copy}", "scale=smoke", "tracking=none", "threads=1"],
    )
    with pytest.raises(NonFiniteError, match="non-finite certificate results"):
        certify.run(cfg)  # outside Hydra: writes into outputs/adhoc of the temp cwd
    out = Path("outputs/adhoc")
    assert strict_load(out / "failure.json")["non_finite"]
    for name in ("certificate.json", "metrics.json", MANIFEST):
        assert not (out / name).exists(), name


def test_overflowing_values_fail_the_evaluation(compose):
    from auctionlab.tasks import evaluate

    # finite bounds whose sums overflow float32: inf revenue and welfare
    cfg = compose(
        "evaluate",
        ["mechanism=vcg", "env=2x2", "env.distribution.high=3e38", "tracking=none", *SHORT],
    )
    with pytest.raises(NonFiniteError, match="non-finite results"):
        evaluate.run(cfg)
    assert not Path("outputs/adhoc/metrics.json").exists()


def test_infinite_value_bound_is_refused_before_the_run():
    with pytest.raises(ConfigError, match=r"env\.distribution\.high=inf must be finite"):
        cli.precheck("evaluate", ["mechanism=vcg", "env=2x2", "env.distribution.high=inf"])


def test_a_finished_evaluation_is_sealed(compose):
    from auctionlab.tasks import evaluate

    evaluate.run(compose("evaluate", ["mechanism=vcg", "env=2x2", "tracking=none", *SHORT]))
    out = Path("outputs/adhoc")
    verify_manifest(out)
    assert {"config.yaml", "metrics.json"} <= set(strict_load(out / MANIFEST)["files"])


# -- strict JSON ----------------------------------------------------------------------------------
def test_json_is_strict_and_says_why_a_value_is_missing(tmp_path):
    record = {
        "a": math.nan,
        "b": math.inf,
        "c": [1.0, -math.inf],
        "d": {"e": math.nan},
        "f": 2.0,
        "rows": [{"g": math.inf}],
    }
    data = strict_load(write_json(tmp_path / "x.json", record))
    assert data == {
        "a": None,
        "a_reason": "nan",
        "b": None,
        "b_reason": "inf",
        "c": [1.0, None],
        "c_reason": [None, "-inf"],
        "d": {"e": None, "e_reason": "nan"},
        "f": 2.0,
        "rows": [{"g": None, "g_reason": "inf"}],
    }
    assert strict_json({"x": 1.0, "x_reason": "kept"}) == {"x": 1.0, "x_reason": "kept"}


def test_certificate_files_are_strict_json(tmp_path):
    certificate = Certificate(
        name="certify",
        title="t",
        markdown="",
        report={"summary": {"time_limit": math.inf, "regret_certified_max": math.nan}},
        metrics={"time_limit": math.inf, "revenue": 0.5},
        finite=("revenue",),
    )
    assert certificate.non_finite() == []
    certificate.write(tmp_path)
    report = strict_load(tmp_path / "certify.json")
    assert report["summary"]["time_limit"] is None
    assert report["summary"]["time_limit_reason"] == "inf"
    assert strict_load(tmp_path / "metrics.json")["time_limit_reason"] == "inf"
    certificate.metrics["revenue"] = math.nan
    assert certificate.non_finite() == ["revenue"]


# -- failed writes --------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_failed_write_names_the_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    (tmp_path / "metrics.json.tmp").symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(OutputError) as info:
        write_json(target, {"a": 1.0})
    assert str(info.value) == f"cannot write {target}: No space left on device"
    checkpoint = tmp_path / "checkpoint.pt"
    (tmp_path / "checkpoint.pt.tmp").symlink_to("/dev/full")
    with pytest.raises(OutputError, match=f"cannot write {checkpoint}: No space left"):
        save_checkpoint({"w": torch.zeros(4)}, checkpoint)
    assert not list(tmp_path.glob("*.tmp")), "a temp file was left behind"
    assert not target.exists() and not checkpoint.exists()
    assert not (tmp_path / "checkpoint.sha256").exists()


def _namespaces() -> bool:
    """Whether tmpfs can be mounted in a user + mount namespace here."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', "/tmp"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces(), reason="no user + mount namespaces (unshare -rm) to mount a tmpfs"
)


def _on_tmpfs(mount: str, options: str, args: list[str], cwd: Path, mlflow_uri: str):
    """The console script in ``cwd`` with a fresh tmpfs at ``cwd/mount``; then the temp files
    left there (``TMP <path>`` lines on stdout), since the tmpfs goes with the namespace.
    """
    script = (
        'mount -t tmpfs -o "$1" tmpfs "$2" || exit 99; cd "$PWD"; shift 2; "$@"; rc=$?; '
        'find . -name "*.tmp" | sed "s/^/TMP /"; exit $rc'
    )
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_uri, OMP_NUM_THREADS="1")
    env["HYDRA_FULL_ERROR"] = "0"
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", options, mount, str(AUCTIONLAB), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@needs_namespaces
def test_full_disk_fails_in_one_line_without_temp_files(tmp_path, mlflow_uri):
    # 2 MiB: the run starts (over the 1 MiB floor), its first checkpoint (~6 MB) does not fit.
    args = ["train", *TINY, "mechanism.hidden=[512,512]", "tracking=none"]
    result = _on_tmpfs(".", "size=2m", args, tmp_path, mlflow_uri)
    assert result.returncode == 1, result.stderr[-3000:]
    line = one_line(result)
    assert line.startswith("auctionlab: run failed: cannot write ") and "outputs/runs/" in line
    assert line.endswith("/checkpoint.pt: No space left on device"), line
    assert "TMP " not in result.stdout, result.stdout[-2000:]


@needs_namespaces
def test_read_only_outputs_fail_in_one_line(tmp_path, mlflow_uri):
    (tmp_path / "outputs").mkdir()
    result = _on_tmpfs("outputs", "ro", ["train", *TINY], tmp_path, mlflow_uri)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_line(result)
    assert line.startswith("auctionlab: error: cannot write outputs/runs/"), line
    assert line.endswith(": Read-only file system"), line


# -- seeds ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "override"),
    [
        ("train", "seed=99999999999999999999"),
        ("train", "validation.seed=18446744073709551616"),
        ("evaluate", "profile_seed=-1"),
    ],
)
def test_a_seed_out_of_range_is_refused_in_one_line(task, override):
    extra = ["mechanism=vcg", "env=2x2"] if task == "evaluate" else ["env=1x2"]
    with pytest.raises(ConfigError) as info:
        cli.precheck(task, ["scale=smoke", "tracking=none", *extra, override])
    assert str(info.value) == f"{override}: must be an integer in [0, 2**63-1]"


def test_the_largest_seed_is_accepted():
    cli.precheck("train", ["scale=smoke", "tracking=none", "env=1x2", f"seed={2**63 - 1}"])


# -- sweeps ---------------------------------------------------------------------------------------
def test_an_18_point_sweep_with_one_bad_point_runs_nothing(cli, tmp_path, list_runs):
    rates = [f"{0.001 * (i + 1):g}" for i in range(18)]
    rates[8] = "-1"
    before = len(list_runs())
    result = cli("train", "-m", f"trainer.lr={','.join(rates)}", *TINY, "tracking=none")
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_line(result) == (
        "auctionlab: error: sweep job 8 of 18 (trainer.lr=-1): trainer.lr=-1.0 must be > 0 "
        "and finite"
    )
    assert not (tmp_path / "cli" / "outputs").exists() and len(list_runs()) == before


def test_a_large_sweep_builds_every_swept_value(capsys):
    # Point 9 is the first with rochetnet (one bidder only): a failure only building it shows.
    seeds = ",".join(str(i) for i in range(9))
    args = ["-m", "mechanism=regretnet,rochetnet", f"seed={seeds}", "env=2x2", "scale=smoke"]
    with pytest.raises(SystemExit) as info:
        cli.precheck("train", [*args, "tracking=none"])
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("auctionlab: error: sweep job 9 of 18 (mechanism=rochetnet seed=0): ")
    assert "one bidder" in line, line
