"""Commands collected from the Markdown of README.md and docs/ (helpers of the docs tests).

A documented command is a line of a ```bash (or ```sh / ```shell) fence that starts with
``auctionlab`` (or ``.venv/bin/auctionlab``). It is *runnable* when it names no ``<placeholder>``
and either runs at ``scale=smoke`` or only reads (``auctionlab runs``, ``--help``, ``--list``,
``--cfg``). ``export NAME=value`` lines of the same fences set the environment of the commands
after them, and a fence with a ``title="path"`` attribute is a file the page asks the reader to
write (``mkdir``-free: the path's folders are created).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHELLS = {"bash", "sh", "shell"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>.*)$")
TITLE = re.compile(r'title="(?P<path>[^"]+)"')
PLACEHOLDER = re.compile(r"<[^<>]+>")
READ_ONLY = ("--help", "--list", "--cfg")


@dataclass
class Page:
    """What a page asks the reader to do, in reading order."""

    path: Path
    #: ``("run", argv)``, ``("export", (name, value))`` or ``("file", (path, text))``.
    steps: list[tuple[str, object]] = field(default_factory=list)
    #: every documented ``auctionlab`` command line, runnable or not.
    commands: list[str] = field(default_factory=list)
    #: every line of the page's shell fences, comments dropped, in reading order.
    shell: list[str] = field(default_factory=list)

    @property
    def runnable(self) -> list[list[str]]:
        """The argv (without the program) of every command the docs test runs."""
        return [argv for kind, argv in self.steps if kind == "run"]  # type: ignore[misc]


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/, in a stable order."""
    found = [REPO / "README.md"]
    docs = REPO / "docs"
    if docs.is_dir():
        found += sorted(docs.rglob("*.md"))
    return [p for p in found if p.is_file()]


def _logical_lines(lines: list[str]) -> list[str]:
    """Join backslash-continued lines."""
    joined: list[str] = []
    pending = ""
    for line in lines:
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    if pending:
        joined.append(pending)
    return joined


def runnable(words: list[str]) -> bool:
    """Whether the docs test runs this ``auctionlab`` command (``words`` without the program)."""
    text = " ".join(words)
    if PLACEHOLDER.search(text):
        return False
    if "scale=smoke" in words:
        return True
    return bool(words) and (words[0] == "runs" or any(w in READ_ONLY for w in words))


def parse(path: Path) -> Page:
    """The steps of one Markdown page."""
    page = Page(path)
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opened = FENCE.match(lines[index])
        index += 1
        if not opened:
            continue
        fence, info = opened["fence"], opened["info"]
        body: list[str] = []
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        indent = len(opened["indent"])
        body = [line[indent:] if line[:indent].isspace() else line for line in body]
        titled = TITLE.search(info)
        if titled:
            page.steps.append(("file", (titled["path"], "\n".join(body) + "\n")))
            continue
        language = info.split()[0].lower() if info.split() else ""
        if language not in SHELLS:
            continue
        for line in _logical_lines(body):
            text = line.strip().removeprefix("$ ")
            if text.startswith("export "):
                name, _, value = text.removeprefix("export ").partition("=")
                value = shlex.split(value)[0] if value.strip() else ""
                page.steps.append(("export", (name.strip(), value)))
                continue
            words = shlex.split(text, comments=True)
            if words:
                page.shell.append(shlex.join(words))
            if not words or Path(words[0]).name != "auctionlab":
                continue
            page.commands.append(text)
            if runnable(words[1:]):
                page.steps.append(("run", words[1:]))
    return page
