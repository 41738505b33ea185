"""docs/extend.md end to end: its files written out, its commands run with the console script.

The page promises that a new mechanism is one module plus one yaml in the user's own package
and config dir. This test takes the page literally: every fenced block with a ``title="path"``
becomes that file in an empty directory, then the page's ``export`` lines set the environment
and its ``auctionlab ... scale=smoke`` lines run in order (with ``threads=1``).
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from documented import REPO, Page, parse

PAGE = REPO / "docs" / "extend.md"


def page_files(page: Page) -> dict[str, str]:
    """``{path: content}`` of every fenced block whose info string has ``title="path"``."""
    return dict(step for kind, step in page.steps if kind == "file")  # type: ignore[misc]


def test_page_shows_complete_files():
    files = page_files(parse(PAGE))
    assert set(files) == {
        "mymech/__init__.py",
        "mymech/itemnet.py",
        "myconf/mechanism/itemnet.yaml",
    }
    module = files["mymech/itemnet.py"]
    assert "class ItemNet(Mechanism)" in module and "def forward" in module
    assert "_target_: mymech.itemnet.ItemNet" in files["myconf/mechanism/itemnet.yaml"]


def test_extend_page_end_to_end(tmp_path, mlflow_uri):
    page = parse(PAGE)
    for path, content in page_files(page).items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)

    # Only the page's export may trust mymech.
    env: dict[str, str | None] = {"PWD": str(tmp_path), "AUCTIONLAB_TRUSTED_MODULES": None}
    run_dirs, ran = {}, []
    for kind, step in page.steps:  # paper-scale variants and placeholders are not steps
        if kind == "export":
            name, value = step  # type: ignore[misc]
            env[name] = value.replace("$PWD", str(tmp_path))
        elif kind == "run":
            words: list[str] = step  # type: ignore[assignment]
            done = run_cli([*words, "threads=1"], tmp_path, mlflow_uri, timeout=600, env=env)
            assert done.returncode == 0, f"{' '.join(words)}\n{done.stderr[-3000:]}"
            (run_dir,) = [w.split("=", 1)[1] for w in words if w.startswith("hydra.run.dir=")]
            run_dirs[words[0]] = tmp_path / run_dir
            ran.append(words[0])

    assert ran == ["train", "evaluate", "certify"]
    for task, run_dir in run_dirs.items():
        # manifest.json is written last, by a run that finished.
        assert (run_dir / "manifest.json").is_file(), task
        metrics = json.loads((run_dir / "metrics.json").read_text())
        prefix = "val_" if task == "train" else ""
        assert metrics[f"{prefix}revenue"] > 0, task
        assert metrics[f"{prefix}regret_mean"] >= 0, task

    saved = (run_dirs["train"] / "config.yaml").read_text()
    assert "mymech.itemnet.ItemNet" in saved  # the user's class, not a packaged one
    certificate = json.loads((run_dirs["certify"] / "certificate.json").read_text())
    assert certificate["mechanism"]["architecture"]["class"] == "item-wise shared MLP"


@pytest.mark.parametrize(
    "trusted, env_name, message",
    [
        (False, "2x2", "not in a trusted module"),  # the gate, as the page shows it
        (True, "2x2_unit", "mechanism=itemnet supports demand additive"),  # check_env
        (True, "1x2_asym", "items have different value ranges"),  # the constructor's check
    ],
)
def test_page_mechanism_is_refused_in_one_line(tmp_path, mlflow_uri, trusted, env_name, message):
    """Untrusted package, or an env the mechanism cannot serve: exit 2 before any work."""
    for path, content in page_files(parse(PAGE)).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(content)
    env = {"PYTHONPATH": str(tmp_path), "AUCTIONLAB_TRUSTED_MODULES": "mymech" if trusted else None}
    args = ["train", "--config-dir", "myconf", "mechanism=itemnet", f"env={env_name}"]
    done = run_cli([*args, "scale=smoke", "threads=1"], tmp_path, mlflow_uri, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("auctionlab: error:") and message in line
    assert not list(tmp_path.glob("outputs/runs/*/*"))  # refused before a run directory
