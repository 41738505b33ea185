"""The committed results pages (docs/results/) say how they were made, and the index is whole.

Every page is written by ``scripts/results_pages.py`` from a reproduce run; here each must name
its command, commit, scale and attacker budget in its key/value table, its figure must be
committed next to it, and ``index.md`` must list every experiment of ``auctionlab reproduce
--list``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from auctionlab.experiments import experiment_names
from auctionlab.experiments.plan import options
from auctionlab.reporting.results_page import METADATA_KEYS, NOT_RECORDED, parse_metadata

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
PAGES = sorted(p for p in RESULTS.glob("*.md") if p.name != "index.md")
NO_PAGES = "docs/results has no results pages yet (make results RUNS=<reproduce run dirs>)"


@pytest.mark.skipif(not PAGES, reason=NO_PAGES)
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_a_page_names_command_commit_scale_and_budget(page):
    text = page.read_text()
    meta = parse_metadata(text)
    assert list(meta) == list(METADATA_KEYS), f"{page.name}: regenerate it with the script"
    name = page.stem
    assert page.stem in experiment_names(), f"{page.name}: no such experiment"
    command = meta["command"].strip("`")
    assert command.startswith("auctionlab reproduce "), meta["command"]
    assert f"experiment={name}" in command.split(), meta["command"]
    assert re.fullmatch(r"`[0-9a-f]{40}`( \(uncommitted changes\))?", meta["commit"]), meta[
        "commit"
    ]
    scale = meta["scale"].strip("`")
    assert scale in options("scale"), meta["scale"]
    budget = meta["attacker budget"]
    assert budget != NOT_RECORDED and re.search(r"\d+ restarts x \d+ steps", budget), budget
    assert meta["date (UTC)"] != NOT_RECORDED
    figure = RESULTS / "img" / f"{name}.png"
    assert f"](img/{name}.png)" in text and figure.stat().st_size > 0, figure
    assert (scale == "smoke") == ('!!! warning "scale=smoke' in text)


@pytest.mark.skipif(not PAGES, reason=NO_PAGES)
def test_the_index_lists_every_experiment():
    index = (RESULTS / "index.md").read_text()
    for name in experiment_names():
        assert f"| `{name}` |" in index, name
        linked = f"[{name}]({name}.md)" in index
        assert linked == (RESULTS / f"{name}.md").is_file(), f"index.md is stale for {name}"
