"""Results pages rendered from a real ``auctionlab reproduce ... scale=smoke`` run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from auctionlab.conf import CONF_DIR
from auctionlab.errors import ConfigError
from auctionlab.experiments import experiment_names
from auctionlab.provenance import code_version, machine
from auctionlab.reporting.results_page import (
    CHEAP_SECONDS,
    METADATA_KEYS,
    NOT_RECORDED,
    RECORD,
    format_budgets,
    job_budget,
    parse_metadata,
    render_results_page,
    scale_budgets,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "results_pages.py"
#: A cheap experiment (two evaluate jobs of closed-form mechanisms): seconds at scale=smoke.
NAME = "classical_menus"
SMOKE = OmegaConf.load(CONF_DIR / "scale" / "smoke.yaml")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, run_console) -> Path:
    """``auctionlab reproduce experiment=classical_menus scale=smoke threads=1``, finished."""
    cwd = tmp_path_factory.mktemp("results_page")
    result = run_console(["reproduce", f"experiment={NAME}", "scale=smoke", "threads=1"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (out,) = (cwd / "outputs" / "runs").glob("*/*_reproduce")
    return out


def _fence(markdown: str) -> tuple[str, list[str]]:
    """The language and lines of the page's first fenced block."""
    match = re.search(r"^```(\w+)\n(.*?)^```", markdown, flags=re.M | re.S)
    assert match, markdown
    return match.group(1), match.group(2).splitlines()


def test_the_run_records_command_times_provenance_and_budgets(run_dir):
    record = json.loads((run_dir / RECORD).read_text())  # strict JSON: json refuses nothing
    assert record["experiment"] == NAME and record["scale"] == "smoke"
    assert record["command"] == f"auctionlab reproduce experiment={NAME} scale=smoke threads=1"
    started = datetime.fromisoformat(record["started"])
    finished = datetime.fromisoformat(record["finished"])
    assert started.utcoffset().total_seconds() == 0 and started <= finished
    assert (finished - started).total_seconds() == pytest.approx(record["seconds"], abs=1.5)
    assert (record["points"], record["jobs"], record["failed"]) == (2, 2, 0)
    found = record["provenance"]
    assert found["auctionlab_version"] == code_version()["auctionlab_version"]
    assert {k: found[k] for k in machine()} == machine()
    assert found["threads"] == "1" and found["device"] == "cpu"  # what the jobs ran with
    scale = record["attacker_budgets"]["scale"]
    for block in ("evaluation", "validation"):
        expected = {k: SMOKE[block][k] for k in ("restarts", "steps", "profiles")}
        assert scale[block] == expected, block
    statistical = SMOKE.certify.statistical
    assert scale["certify.statistical"]["profiles"] == statistical.holdout_profiles
    (job,) = record["attacker_budgets"]["jobs"]  # both points: the same evaluate budget
    assert job["stage"] == "evaluate"
    assert (job["restarts"], job["steps"], job["profiles"]) == (
        SMOKE.evaluation.restarts,
        SMOKE.evaluation.steps,
        SMOKE.evaluation.profiles,
    )


def test_page_names_command_commit_scale_budget_table_and_figure(run_dir):
    page = render_results_page(run_dir)
    record = json.loads((run_dir / RECORD).read_text())
    meta = parse_metadata(page.markdown)
    assert list(meta) == list(METADATA_KEYS) and meta == page.metadata
    assert meta["command"] == f"`auctionlab reproduce experiment={NAME} scale=smoke threads=1`"
    commit = record["provenance"].get("git_commit")
    if commit:  # from a checkout: the commit the jobs ran
        assert meta["commit"].startswith(f"`{commit}`")
        assert ("(uncommitted changes)" in meta["commit"]) == (
            record["provenance"]["git_dirty"] == "true"
        )
    else:
        assert meta["commit"].startswith(NOT_RECORDED)
    assert meta["scale"] == "`smoke`"
    ev = SMOKE.evaluation
    assert meta["attacker budget"] == (
        f"evaluate (pgd): {ev.restarts} restarts x {ev.steps} steps on {ev.profiles} profiles"
    )
    assert meta["failed jobs"] == "0 of 2"
    assert meta["date (UTC)"] == record["started"][:19].replace("T", " ")
    assert machine()["cpu_model"] in meta["machine"] and "torch threads: 1" in meta["machine"]
    title = OmegaConf.load(run_dir / "config.yaml").experiment.title
    assert page.markdown.startswith(f"# {title}\n")
    assert '!!! warning "scale=smoke' in page.markdown  # smoke: a pipeline check
    # the runnable command: experiment and scale only; a bash block only when it is cheap
    language, lines = _fence(page.markdown)
    assert lines[0] == f"auctionlab reproduce experiment={NAME} scale=smoke"
    assert language == ("bash" if record["seconds"] <= CHEAP_SECONDS else "text")
    # the table: every row of the run's table, its notes, no absolute run path
    table = pd.read_csv(run_dir / f"{NAME}.csv")
    run_md = (run_dir / f"{NAME}.md").read_text()
    for row in run_md.splitlines():
        if row.startswith(f"| {table['mechanism'][0]} ") or row.startswith("| pavlov "):
            assert row in page.markdown
    assert "| restarts | steps | profiles |" in page.markdown
    assert str(run_dir) not in page.markdown and "`<run dir>/points`" in page.markdown
    assert "`lit_*`" in page.markdown
    # the figure: the run's own, shown next to the page
    assert page.figure == run_dir / f"{NAME}.png" and page.figure.stat().st_size > 0
    assert f"](img/{NAME}.png)" in page.markdown


def test_cited_keys_link_the_references(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = OmegaConf.load(copy / "config.yaml")
    cfg.experiment.cite = ["manelli2006bundling", "pavlov2011optimal"]
    OmegaConf.save(cfg, copy / "config.yaml")
    markdown = render_results_page(copy).markdown
    cited = re.search(r"^\*\*Reproduces:\*\*.*$", markdown, flags=re.M).group(0)
    for key in ("manelli2006bundling", "pavlov2011optimal"):
        assert f"[{key}](../references.md#{key})" in cited


def test_a_run_without_its_record_falls_back_and_says_what_is_missing(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / RECORD).unlink()
    meta = render_results_page(copy).metadata
    assert meta["command"] == f"`auctionlab reproduce experiment={NAME} scale=smoke threads=1`"
    job = json.loads(next((copy / "points").glob("*/evaluate/metrics.json")).read_text())
    if "git_commit" in job["provenance"]:
        assert meta["commit"].startswith(f"`{job['provenance']['git_commit']}`")
    assert meta["date (UTC)"].startswith(NOT_RECORDED) and "reproduce.log" in meta["date (UTC)"]
    assert meta["run time"].startswith(NOT_RECORDED)
    assert meta["attacker budget"].startswith("evaluate (pgd): 4 restarts x 20 steps")
    assert meta["failed jobs"] == "0 of 2"
    # nothing at all about the machine or the commit: said so, not invented
    for metrics in (copy / "points").glob("*/*/metrics.json"):
        metrics.unlink()
    (copy / ".hydra" / "overrides.yaml").unlink()
    meta = render_results_page(copy).metadata
    assert meta["command"] == meta["commit"] == meta["machine"] == NOT_RECORDED


@pytest.mark.parametrize("what", ["missing", "empty", "train run", "unfinished"])
def test_a_directory_that_is_not_a_finished_reproduce_run_is_refused(what, run_dir, tmp_path):
    bad = tmp_path / "bad"
    if what == "empty":
        bad.mkdir()
    elif what == "train run":
        bad.mkdir()
        (bad / "config.yaml").write_text("task: train\nseed: 0\n")
    elif what == "unfinished":
        shutil.copytree(run_dir, bad)
        (bad / f"{NAME}.png").unlink()
    with pytest.raises(ConfigError) as caught:
        render_results_page(bad)
    message = str(caught.value)
    assert "\n" not in message and "not a finished auctionlab reproduce run" in message
    assert str(bad) in message


def test_the_script_writes_page_figure_and_index(run_dir, tmp_path):
    docs = tmp_path / "docs"
    cmd = [sys.executable, str(SCRIPT), str(run_dir), "--docs", str(docs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    page = docs / "results" / f"{NAME}.md"
    assert page.read_text() == render_results_page(run_dir).markdown
    figure = docs / "results" / "img" / f"{NAME}.png"
    assert figure.read_bytes() == (run_dir / f"{NAME}.png").read_bytes()
    index = (docs / "results" / "index.md").read_text()
    for name in experiment_names():
        assert f"| `{name}` |" in index, name
        if name != NAME:
            assert f"no page yet: `auctionlab reproduce experiment={name}`" in index
    assert f"[{NAME}]({NAME}.md): scale `smoke`" in index
    # a bad directory among good ones: one line, exit 2, nothing written
    shutil.rmtree(docs)
    cmd = [sys.executable, str(SCRIPT), str(run_dir), str(tmp_path), "--docs", str(docs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("results_pages: error:")
    assert not docs.exists()


@pytest.mark.parametrize(
    ("task", "overrides", "stage", "expected"),
    [
        (
            "train",
            [],
            "train",
            "train (validation): 2 restarts x 10 steps on 64 profiles; "
            "train (training attacker): 1 restarts x 25 steps per batch of 64",
        ),
        (
            "certify",
            ["certifier=statistical"],
            "certify",
            "certify (holdout oracle): 2 restarts x 20 steps on 256 profiles",
        ),
        (
            "certify",
            ["certifier=mip"],
            "certify",
            "certify (pgd): 4 restarts x 20 steps on 4 profiles",
        ),
    ],
)
def test_a_stage_budget_is_read_from_its_job_config(task, overrides, stage, expected, compose):
    cfg = compose(task, ["scale=smoke", *overrides])
    OmegaConf.resolve(cfg)
    assert format_budgets(job_budget(stage, cfg)) == expected


@pytest.mark.parametrize(
    ("attacker", "metrics", "expected"),
    [
        (
            "pgd",
            {"attack_restarts": 4.0, "attack_steps": 20.0, "profiles": 128.0},
            "evaluate (pgd): 4 restarts x 20 steps on 128 profiles",
        ),
        (
            "adaptive",
            {"attack_restarts": 4.0, "attack_steps": 30.0, "profiles": 128.0},
            "evaluate (adaptive): 4 restarts x 30 steps on 128 profiles",
        ),
        ("adaptive", None, "not recorded"),  # no metrics: no regret, no budget behind one
    ],
)
def test_an_evaluate_budget_is_the_one_its_attacker_reported(attacker, metrics, expected, compose):
    cfg = compose("evaluate", ["scale=smoke", "mechanism=vcg", f"attacker={attacker}"])
    OmegaConf.resolve(cfg)
    assert format_budgets(job_budget("evaluate", cfg, metrics, attacker)) == expected


def test_every_attacker_budget_of_a_scale_is_found(compose):
    scale = compose("reproduce", ["scale=smoke"]).scale
    found = scale_budgets(OmegaConf.to_container(scale, resolve=True))
    assert found["allocation.val"] == {"restarts": 2, "steps": 10, "profiles": 64}
    assert {"evaluation", "validation", "certify.statistical", "allocation"} <= set(found)
    assert "train" not in found  # training schedule, not an attacker


def test_bare_citations_become_links_but_not_in_code_or_existing_links():
    from auctionlab.references import link_citations

    text = "\n".join(
        [
            "Table 1 of [curry2020certifying] and [okada2025lic](../references.md#okada2025lic).",
            "```text",
            "[curry2020certifying] stays in a fence",
            "```",
            "`[okada2025lic]` stays in backticks, [not a key] stays",
        ]
    )
    linked = link_citations(text, "../references.md").splitlines()
    assert linked[0] == (
        "Table 1 of [curry2020certifying](../references.md#curry2020certifying) and "
        "[okada2025lic](../references.md#okada2025lic)."
    )
    assert linked[1:] == text.splitlines()[1:]
