"""The bibliography: stable keys, the generated reference page, and every citation resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import compose_cfg

from auctionlab.errors import ConfigError
from auctionlab.experiments.stages import table_notes
from auctionlab.references import (
    BIBLIOGRAPHY,
    CLOSED_FORM,
    Reference,
    citation,
    markdown,
    resolve,
)
from auctionlab.reporting.tables import TableSpec, build_table
from auctionlab.tasks import reproduce

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "auctionlab"
EXPERIMENTS = sorted((PACKAGE / "conf" / "experiment").glob("*.yaml"))
#: A citation in prose, comments and notes: ``[key]``.
CITATION = re.compile(r"\[([a-z]+\d{4}[a-z]+)\]")
#: Internal names of the papers and of the old target list: never in the project.
FORBIDDEN = re.compile(r"seed 00[0-4]|TARGETS\.md", re.IGNORECASE)
#: The README rewrite brings it under this many lines; until then it still has old wording.
README_LINES = 250


def _files(patterns: list[str]) -> list[Path]:
    return sorted({p for pattern in patterns for p in ROOT.glob(pattern) if p.is_file()})


def _experiment(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))["experiment"]


def test_keys_follow_the_scheme_and_entries_are_complete():
    assert len(BIBLIOGRAPHY) >= 12
    for key, entry in BIBLIOGRAPHY.items():
        assert isinstance(entry, Reference) and entry.key == key
        assert re.fullmatch(r"[a-z]+\d{4}[a-z]+", key), key
        assert str(entry.year) in key, key
        assert entry.authors and entry.title and entry.venue and entry.used_for, key
    with pytest.raises(AttributeError):
        BIBLIOGRAPHY["myerson1981optimal"].year = 1982  # frozen


def test_resolve_and_citation():
    assert resolve("curry2020certifying").title == "Certifying Strategyproof Auction Networks"
    line = citation("zeng2025rpf")
    assert "\n" not in line and "Regularized Proportional Fairness" in line
    assert "https://openreview.net/forum?id=K85nJ60lDR" in line
    with pytest.raises(ConfigError, match=r"unknown citation key 'curry2020'; valid keys: ") as err:
        resolve("curry2020")
    assert "\n" not in str(err.value) and "myerson1981optimal" in str(err.value)


def test_committed_reference_page_is_generated():
    page = ROOT / "docs" / "references.md"
    assert page.read_text(encoding="utf-8") == markdown(), (
        "docs/references.md is stale: run python scripts/references_page.py"
    )


def test_reference_page_has_one_section_per_key_with_the_key_as_heading():
    headings = re.findall(r"^## (.+)$", markdown(), flags=re.MULTILINE)
    assert headings == list(BIBLIOGRAPHY)
    for key in BIBLIOGRAPHY:
        assert citation(key) in markdown()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_cites_resolvable_keys(path):
    experiment = _experiment(path)
    cite = experiment.get("cite")
    assert isinstance(cite, list) and cite, f"{path.name}: experiment.cite lists no key"
    for key in cite:
        resolve(key)
    for text in (experiment["title"], experiment["reproduces"]):
        assert not FORBIDDEN.search(text), text
    assert CITATION.search(experiment["reproduces"]), "reproduces names no [key]"
    for number, row in enumerate((experiment.get("table") or {}).get("reference") or []):
        assert "cite" in row, f"{path.name}: reference row {number} has no cite"
        keys = row["cite"] if isinstance(row["cite"], list) else [row["cite"]]
        for key in keys:
            assert key == CLOSED_FORM or resolve(key), key


def test_every_bracketed_citation_resolves():
    files = _files(["auctionlab/**/*.py", "auctionlab/conf/**/*.yaml", "README.md", "docs/**/*.md"])
    assert any(p.suffix == ".py" for p in files) and any(p.suffix == ".yaml" for p in files)
    unknown = [
        f"{path.relative_to(ROOT)}: [{key}]"
        for path in files
        for key in CITATION.findall(path.read_text(encoding="utf-8"))
        if key not in BIBLIOGRAPHY
    ]
    assert not unknown, unknown


@pytest.mark.parametrize("target", ["auctionlab", "docs", "README.md"])
def test_papers_are_cited_by_key_only(target):
    path = ROOT / target
    if not path.exists():
        pytest.skip(f"{target} does not exist")
    if target == "README.md":
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > README_LINES:
            pytest.skip(
                f"README.md still has {lines} lines: the README rewrite (<= {README_LINES} "
                "lines) replaces its old seed / target-list wording; checked once it lands"
            )
    files = [path] if path.is_file() else _files([f"{target}/**/*"])
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in files
        if p.suffix in (".py", ".yaml", ".md", ".txt", ".cfg", ".toml", "")
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert not hits, hits


TABLE = {
    "index": ["mechanism"],
    "columns": {"revenue": "evaluate.revenue"},
    "reference": [
        {"cite": "myerson1981optimal", "mechanism": "myerson", "target": 0.53125},
        {"cite": CLOSED_FORM, "mechanism": "second_price", "target": 0.5},
        {"cite": ["myerson1981optimal", "dutting2019optimal"], "mechanism": "x", "target": 1.0},
    ],
}


def test_reference_row_cites_are_collected_and_kept_out_of_the_table():
    spec = TableSpec.from_config(TABLE)
    assert spec.citations == ["myerson1981optimal", "dutting2019optimal"]
    records = [
        {"mechanism": "myerson", "evaluate.revenue": 0.53},
        {"mechanism": "second_price", "evaluate.revenue": 0.5},
    ]
    table = build_table(records, spec)
    assert "cite" not in table.columns
    assert list(table["target"]) == [0.53125, 0.5]


def test_a_bad_row_cite_is_one_line_naming_experiment_key_and_valid_keys():
    bad = {**TABLE, "reference": [{"cite": "myerson1891", "mechanism": "myerson"}]}
    with pytest.raises(ConfigError) as err:
        TableSpec.from_config(bad, "demo")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("experiment demo: experiment.table.reference[0].cite")
    assert "'myerson1891'" in message and "myerson1981optimal" in message
    assert message.endswith(CLOSED_FORM)
    # a spec's own fields round-trip; the keys there are checked too
    assert TableSpec.from_config(TableSpec.from_config(TABLE).__dict__).citations == [
        "myerson1981optimal",
        "dutting2019optimal",
    ]
    with pytest.raises(ConfigError, match=r"experiment.table.citations: unknown citation key"):
        TableSpec.from_config({**TABLE, "citations": ["myerson1891"]})


def test_a_bad_experiment_cite_is_one_line_naming_experiment_key_and_valid_keys():
    cfg = compose_cfg(
        "reproduce", ["experiment=classical_menus", "scale=smoke", "experiment.cite=[pavlov2011]"]
    )
    with pytest.raises(ConfigError) as err:
        reproduce.prepare(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("experiment classical_menus: experiment.cite: ")
    assert "'pavlov2011'" in message and "pavlov2011optimal" in message


def test_table_notes_end_with_the_references_of_experiment_and_rows(tmp_path):
    cfg = compose_cfg("reproduce", ["experiment=myerson_single_item", "scale=smoke"])
    plan = reproduce.prepare(cfg)
    assert plan.cite == ["myerson1981optimal", "dutting2019optimal"]
    assert plan.table.citations == ["myerson1981optimal", "dutting2019optimal"]
    notes = table_notes(plan, cfg, tmp_path)
    start = notes.index("References:")
    assert notes[start + 1 :] == [
        "",
        f"- [myerson1981optimal] {citation('myerson1981optimal')}",
        f"- [dutting2019optimal] {citation('dutting2019optimal')}",
    ]
    assert any(line.startswith("Reproduces: ") for line in notes[:start])
