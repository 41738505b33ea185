"""Tables and plots from finished runs (``auctionlab reproduce``, ``auctionlab runs``)."""

from auctionlab.reporting.collect import child_metrics, read_metrics_json
from auctionlab.reporting.plots import plot_table
from auctionlab.reporting.tables import (
    TableSpec,
    build_table,
    check_budget_columns,
    format_table,
    render_markdown,
    write_table,
)

__all__ = [
    "TableSpec",
    "build_table",
    "check_budget_columns",
    "child_metrics",
    "format_table",
    "plot_table",
    "read_metrics_json",
    "render_markdown",
    "write_table",
]
