"""The documentation site builds strictly, its nav is complete and no page links nowhere.

``mkdocs build --strict`` turns every warning into a failure: a broken relative link or anchor
(``validation`` in mkdocs.yml), a docstring griffe cannot parse or that documents a parameter
the signature lacks (mkdocstrings). mkdocs is a dev dependency (``make setup`` installs it), so
this runs in CI like any other test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CONFIG = REPO / "mkdocs.yml"

FENCED = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def nav_files(node) -> list[str]:
    """Every page path named in a (nested) mkdocs nav."""
    if isinstance(node, str):
        return [node] if not re.match(r"^[a-z]+://", node) else []
    if isinstance(node, dict):
        return [path for value in node.values() for path in nav_files(value)]
    if isinstance(node, list):
        return [path for item in node for path in nav_files(item)]
    return []


def relative_links(page: Path) -> list[str]:
    """Relative link targets of a Markdown page, code blocks and inline code left out."""
    text = INLINE_CODE.sub("", FENCED.sub("", page.read_text()))
    targets = [match.group(1) for match in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^([a-z]+:|#|/)", t)]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_config_is_strict_and_complete(config):
    assert config["strict"] is True
    assert config["theme"]["name"] == "material"
    handlers = config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["options"]
    assert handlers["docstring_style"] == "google" and handlers["show_source"] is False
    # Links to missing pages fail the strict build; pages outside the nav do not.
    assert config["validation"]["not_found"] == "warn"
    assert config["validation"]["omitted_files"] == "info"


def test_every_nav_file_exists(config):
    pages = nav_files(config["nav"])
    assert len(pages) >= 30, pages  # guide, tasks, families, API, results index...
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"nav names pages that do not exist: {missing}"
    assert len(set(pages)) == len(pages), "a page appears twice in the nav"
    for required in ("index.md", "extend.md", "results/index.md", "api/index.md"):
        assert required in pages


def test_no_page_links_to_a_missing_file():
    broken = []
    for page in sorted(DOCS.rglob("*.md")):
        for target in relative_links(page):
            path = target.split("#", 1)[0]
            if not path:
                continue
            resolved = (page.parent / path).resolve()
            if not (resolved.is_file() or (resolved / "index.md").is_file()):
                broken.append(f"{page.relative_to(DOCS)} -> {target}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_strict_build(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert done.returncode == 0, "\n".join(warnings) or done.stderr[-3000:]
    assert not warnings, "\n".join(warnings)
    # The API reference was rendered from the package, not left as `:::` directives.
    mechanisms = (site / "api" / "mechanisms" / "index.html").read_text()
    assert "auctionlab.mechanisms.base.Mechanism" in mechanisms
    assert "RegretNet" in mechanisms and ":::" not in mechanisms
    extend = (site / "extend" / "index.html").read_text()
    assert "mymech/itemnet.py" in extend  # the fenced files keep their titles
    assert (site / "search" / "search_index.json").is_file()
    # A bare citation key on a page links to its bibliography entry (scripts/mkdocs_hooks.py).
    additive = (site / "families" / "additive" / "index.html").read_text()
    assert '<a href="../../references/#myerson1981optimal">myerson1981optimal</a>' in additive
    references = (site / "references" / "index.html").read_text()
    assert 'id="myerson1981optimal"' in references
