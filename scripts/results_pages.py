"""Write the results pages of finished ``auctionlab reproduce`` runs into the docs.

For each run directory: ``<docs>/results/<experiment>.md`` (see
``auctionlab.reporting.results_page``) and its figure ``<docs>/results/img/<experiment>.png``;
then ``<docs>/results/index.md`` is regenerated from every experiment of
``auctionlab reproduce --list`` and the pages that exist.

    python scripts/results_pages.py outputs/runs/<date>/<time>_reproduce [...] [--docs docs]
    make results RUNS="outputs/runs/<date>/<time>_reproduce ..."

With no run directory, only the index is regenerated. A directory that is not a finished
reproduce run is a one-line error (exit status 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from auctionlab.errors import ConfigError
from auctionlab.experiments import compose, experiment_names
from auctionlab.reporting.results_page import ResultsPage, render_index, render_results_page
from auctionlab.runs import write_bytes


def experiments() -> list[tuple[str, str]]:
    """``(name, title)`` of every experiment ``auctionlab reproduce --list`` names."""
    out = []
    for name in experiment_names():
        cfg = compose("reproduce", [f"experiment={name}"])
        out.append((name, str(cfg.experiment.get("title") or name)))
    return out


def write_page(page: ResultsPage, results: Path) -> Path:
    (results / "img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(page.figure, results / "img" / f"{page.name}.png")
    return write_bytes(results / f"{page.name}.md", page.markdown.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="reproduce run directories")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="the docs folder")
    args = parser.parse_args(argv)
    try:
        # Every run is rendered before anything is written: one bad directory writes nothing.
        pages = [render_results_page(run) for run in args.runs]
    except ConfigError as err:
        print(f"results_pages: error: {err}", file=sys.stderr)
        return 2
    results = args.docs / "results"
    results.mkdir(parents=True, exist_ok=True)
    for page in pages:
        print(f"wrote {write_page(page, results)}")
    index = write_bytes(results / "index.md", render_index(experiments(), results).encode())
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
