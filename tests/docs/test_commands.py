"""Every documented command that runs at ``scale=smoke`` (or only reads) runs, page by page.

The commands are collected from the Markdown (see ``documented.py``), so the README's tour and
the guide pages' examples cannot drift from what the tool accepts. Each page runs in its own
empty working directory, in reading order, through the installed console script.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from conftest import run_cli
from documented import REPO, pages, parse

#: Pages whose commands another test runs with stronger checks.
RUN_ELSEWHERE = {"docs/extend.md": "tests/docs/test_extend.py runs it end to end"}
#: Generated pages, not run here: a results page's command is the one its reproduce run
#: recorded (tests/docs/test_results_pages.py checks the pages).
GENERATED = ("docs/results/",)
#: Commands run by this module (reported at the end of the session, see conftest.py).
RAN: dict[str, int] = {}


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


def _run_page(path: Path, cwd: Path, mlflow_uri: str) -> int:
    env: dict[str, str] = {}
    ran = 0
    for kind, step in parse(path).steps:
        if kind == "export":
            name, value = step  # type: ignore[misc]
            env[name] = value
        elif kind == "file":
            relative, text = step  # type: ignore[misc]
            target = cwd / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        else:
            done = run_cli(step, cwd, mlflow_uri, timeout=600, env=env)  # type: ignore[arg-type]
            command = "auctionlab " + shlex.join(step)  # type: ignore[arg-type]
            assert done.returncode == 0, (
                f"{_id(path)}: `{command}` exited {done.returncode}\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            )
            ran += 1
    return ran


#: Pages whose commands run in ``make test-slow``, so the default suite stays within its time:
#: it runs the README's (the commands CI promises) and the configuration page's (read-only).
SLOW = ("docs/getting-started.md", "docs/tasks/", "docs/families/", "docs/sweeps.md")


def _documented() -> list:
    return [
        pytest.param(p, marks=pytest.mark.slow) if _id(p).startswith(SLOW) else p
        for p in pages()
        if not _id(p).startswith(GENERATED)
    ]


@pytest.mark.parametrize("path", _documented(), ids=_id)
def test_documented_commands_run(path, tmp_path, mlflow_uri):
    if _id(path) in RUN_ELSEWHERE:
        pytest.skip(RUN_ELSEWHERE[_id(path)])
    work = tmp_path / "page"
    work.mkdir()
    RAN[_id(path)] = _run_page(path, work, mlflow_uri)


def test_readme_starts_with_setup_main_job_and_the_ci_test_command():
    first = parse(REPO / "README.md").shell[:3]
    assert first == [
        "make setup",
        ".venv/bin/auctionlab train mechanism=regretnet env=2x2",
        "make test",
    ], first
    # CI runs exactly the README's test command.
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"


def test_readme_tour_is_collected():
    """The collector finds the README's tour (so the page test above cannot pass vacuously)."""
    tour = parse(REPO / "README.md").runnable
    tasks = {argv[0] for argv in tour}
    assert {"train", "evaluate", "certify", "reproduce", "runs"} <= tasks, tour
