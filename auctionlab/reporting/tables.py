"""Aggregate per-job metrics into a table; write it as CSV, markdown and LaTeX.

A table is described by a :class:`TableSpec` (the ``experiment.table`` node of an experiment
config): row keys, the metric behind each column, reference rows to join (closed forms,
literature numbers) and derived columns. Every regret column must come with the attacker
budget that produced it (restarts, steps, profiles of the same job), see
:func:`check_budget_columns`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from auctionlab.errors import ConfigError
from auctionlab.references import CLOSED_FORM, check_keys

#: The metrics that state an attacker budget, next to every regret.
BUDGET = ("attack_restarts", "attack_steps", "profiles")
MISSING = "–"


@dataclass
class TableSpec:
    """What a table shows.

    Attributes:
        index: row keys, taken from each point's labels (its Hydra choices and sweep keys).
        columns: output column -> ``"<stage>.<metric>"`` (e.g. ``evaluate.revenue``).
        reference: rows joined on ``index`` (e.g. closed-form targets, literature values).
            Each row names its source with ``cite``: a key of
            :data:`auctionlab.references.BIBLIOGRAPHY` (the paper that prints the number, or
            the theory behind a closed form auctionlab computes: ``myerson1981optimal``), or
            the reserved value ``closed_form`` for a closed form with no paper behind it. The
            ``cite`` is validated and kept out of the table's columns (see ``citations``).
        relative: output column -> ``{column, key, to[, by]}``: ``column`` divided by its
            value in the row where index key ``key`` equals ``to`` and the index keys ``by``
            (default: all the others) agree (e.g. local training time over standard's, per
            setting: ``by: env``).
        derived: output column -> pandas expression over the columns before it.
        order: the final column order (default: index, columns, reference, derived).
        formats: output column -> Python format spec (``".4f"``, ``".2e"``; ``"d"`` for ints).
        caption: one sentence under the table (markdown) / the LaTeX caption.
        citations: the bibliography keys the reference rows cite, in order, without repeats
            (``closed_form`` rows add none); :meth:`from_config` collects them (keys given here
            too are validated and kept first, so a spec's fields round-trip).

    """

    index: list[str]
    columns: dict[str, str]
    reference: list[dict[str, Any]] = field(default_factory=list)
    relative: dict[str, dict[str, Any]] = field(default_factory=dict)
    derived: dict[str, str] = field(default_factory=dict)
    order: list[str] | None = None
    formats: dict[str, str] = field(default_factory=dict)
    caption: str = ""
    citations: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, node: Mapping[str, Any], experiment: str | None = None) -> TableSpec:
        """Build from a plain mapping (``OmegaConf.to_container(cfg.experiment.table)``).

        Args:
            node: the ``experiment.table`` mapping.
            experiment: the experiment's name, for error messages.

        Raises:
            ConfigError: unknown keys, no index or columns, or a reference row whose ``cite``
                is not a bibliography key (nor ``closed_form``).

        """
        owner = f"experiment {experiment}: " if experiment else ""
        unknown = set(node) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"{owner}experiment.table: unknown keys {sorted(unknown)}; valid keys: "
                + ", ".join(cls.__dataclass_fields__)
            )
        if not node.get("index") or not node.get("columns"):
            raise ConfigError(f"{owner}experiment.table needs 'index' (row keys) and 'columns'")
        reference = []
        citations = check_keys(node.get("citations"), f"{owner}experiment.table.citations")
        for number, row in enumerate(node.get("reference") or []):
            row = dict(row)
            where = f"{owner}experiment.table.reference[{number}].cite"
            for key in check_keys(row.pop("cite", None), where, extra=(CLOSED_FORM,)):
                if key != CLOSED_FORM and key not in citations:
                    citations.append(key)
            reference.append(row)
        return cls(
            index=[str(k) for k in node["index"]],
            columns={str(k): str(v) for k, v in node["columns"].items()},
            reference=reference,
            relative={
                str(k): {
                    str(a): [str(x) for x in b] if isinstance(b, list | tuple) else str(b)
                    for a, b in v.items()
                }
                for k, v in (node.get("relative") or {}).items()
            },
            derived={str(k): str(v) for k, v in (node.get("derived") or {}).items()},
            order=[str(k) for k in node["order"]] if node.get("order") else None,
            formats={str(k): str(v) for k, v in (node.get("formats") or {}).items()},
            caption=str(node.get("caption") or ""),
            citations=citations,
        )

    def stages(self) -> set[str]:
        """The job stages (``train``, ``evaluate``) the columns read from."""
        return {source.split(".", 1)[0] for source in self.columns.values()}


def check_budget_columns(spec: TableSpec) -> None:
    """Every regret column must sit next to the attacker budget of the same job.

    A column reading ``<stage>.<prefix>regret_*`` needs columns reading
    ``<stage>.<prefix>attack_restarts``, ``attack_steps`` and ``profiles``.

    Raises:
        ConfigError: naming the regret column and the missing budget metrics.

    """
    sources = set(spec.columns.values())
    for name, source in spec.columns.items():
        stage, _, metric = source.partition(".")
        if "regret" not in metric or metric == "regret_budget":  # a target, not a measurement
            continue
        prefix = metric[: metric.index("regret")]
        missing = [f"{stage}.{prefix}{b}" for b in BUDGET if f"{stage}.{prefix}{b}" not in sources]
        if missing:
            raise ConfigError(
                f"experiment.table: column {name} ({source}) needs its attacker budget next to "
                f"it; add columns for {', '.join(missing)}"
            )


def build_table(records: Sequence[Mapping[str, Any]], spec: TableSpec) -> pd.DataFrame:
    """One row per distinct ``spec.index``: the mean over jobs sharing it, then joins.

    Args:
        records: one mapping per point: its labels (``mechanism``, ``env``, ``seed``...) and
            metrics keyed ``"<stage>.<metric>"``.
        spec: the table description.

    Returns:
        The numeric table (a ``runs`` column is added when some row averages several jobs).

    """
    frame = pd.DataFrame(list(records))
    for key in spec.index:
        if key not in frame:
            raise ConfigError(f"experiment.table.index: no point has a value for '{key}'")
    table = frame[spec.index].astype(str)
    for name, source in spec.columns.items():
        table[name] = pd.to_numeric(frame[source], errors="coerce") if source in frame else math.nan
    grouped = table.groupby(spec.index, sort=False, dropna=False)
    table = grouped.mean(numeric_only=True).reset_index()
    counts = grouped.size().to_numpy()
    if (counts > 1).any():
        table.insert(len(spec.index), "runs", counts)
    for name in spec.columns:  # a column that is NaN everywhere is dropped by mean()
        if name not in table:
            table[name] = math.nan
    if spec.reference:
        reference = pd.DataFrame(spec.reference)
        missing = [k for k in spec.index if k not in reference]
        if missing:
            raise ConfigError(f"experiment.table.reference: rows lack the index keys {missing}")
        reference[spec.index] = reference[spec.index].astype(str)
        table = table.merge(reference, on=spec.index, how="left")
    for name, rule in spec.relative.items():
        table[name] = _relative(table, spec, name, rule)
    for name, expression in spec.derived.items():
        try:
            table[name] = table.eval(expression, engine="python")
        except Exception as err:  # noqa: BLE001 - a bad expression names itself
            raise ConfigError(f"experiment.table.derived.{name}: '{expression}' ({err})") from err
    if spec.order:
        unknown = [c for c in spec.order if c not in table]
        if unknown:
            raise ConfigError(
                f"experiment.table.order: unknown columns {unknown}; valid: {list(table.columns)}"
            )
        order = list(spec.order)
        if "runs" in table and "runs" not in order:
            order.insert(len(spec.index), "runs")
        table = table[order]
    return table


def _relative(table: pd.DataFrame, spec: TableSpec, name: str, rule: dict[str, Any]) -> pd.Series:
    """``rule['column']`` over its value in the matching ``rule['key'] == rule['to']`` row."""
    where = f"experiment.table.relative.{name}"
    if not {"column", "key", "to"} <= set(rule) <= {"column", "key", "to", "by"}:
        raise ConfigError(
            f"{where}: needs the keys column, key, to (and optionally by); got {sorted(rule)}"
        )
    column, key, base = rule["column"], rule["key"], rule["to"]
    if column not in table or key not in spec.index:
        raise ConfigError(
            f"{where}: column={column} must be a table column and key={key} an index key"
        )
    by = rule.get("by")
    others = (
        [k for k in spec.index if k != key]
        if by is None
        else ([by] if isinstance(by, str) else list(by))
    )
    if any(k not in spec.index or k == key for k in others):
        raise ConfigError(f"{where}: by={by} must name index keys other than key={key}")
    reference = table.loc[table[key] == base, [*others, column]]
    reference = reference.rename(columns={column: "__reference"})
    if others:
        joined = table[others].merge(reference, on=others, how="left")["__reference"]
    else:
        value = reference["__reference"].iloc[0] if len(reference) else math.nan
        joined = pd.Series([value] * len(table))
    return pd.Series(table[column].to_numpy() / joined.to_numpy(), index=table.index)


def _format(value: Any, spec: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if spec == "d" or (spec is None and float(value).is_integer() and abs(value) < 1e9):
            return str(int(round(float(value))))
        return format(float(value), spec or ".4g")
    return str(value)


def format_table(table: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """The table as strings: ``spec.formats`` per column, ints as ints, NaN as a dash."""
    out = pd.DataFrame(index=table.index)
    for column in table.columns:
        fmt = spec.formats.get(column)
        values = table[column].tolist()
        out[column] = [_format(v.item() if hasattr(v, "item") else v, fmt) for v in values]
    return out


def render_markdown(formatted: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of a string table (numbers right-aligned)."""

    def numeric(column: str) -> bool:
        cells = [c for c in formatted[column] if c != MISSING]
        try:
            [float(c) for c in cells]
        except ValueError:
            return False
        return bool(cells)

    header = "| " + " | ".join(str(c) for c in formatted.columns) + " |"
    align = "|" + "|".join("---:" if numeric(c) else "---" for c in formatted.columns) + "|"
    rows = ["| " + " | ".join(row) + " |" for row in formatted.itertuples(index=False)]
    return "\n".join([header, align, *rows]) + "\n"


def write_table(
    table: pd.DataFrame,
    spec: TableSpec,
    directory: Path,
    stem: str,
    title: str,
    notes: Sequence[str] = (),
) -> list[Path]:
    """Write ``<stem>.csv`` (full precision), ``<stem>.md`` and ``<stem>.tex``.

    Args:
        table: from :func:`build_table`.
        spec: its description (formats, caption).
        directory: where the files go.
        stem: file name without suffix.
        title: the markdown heading.
        notes: extra markdown lines under the table (scale, budgets, where runs are).

    Returns:
        The three paths.

    """
    directory.mkdir(parents=True, exist_ok=True)
    formatted = format_table(table, spec)
    csv_path = directory / f"{stem}.csv"
    table.to_csv(csv_path, index=False)
    md_path = directory / f"{stem}.md"
    lines = [f"# {title}", ""]
    if spec.caption:
        lines += [spec.caption, ""]
    lines.append(render_markdown(formatted))
    if notes:
        lines += [*notes, ""]
    md_path.write_text("\n".join(lines))
    tex_path = directory / f"{stem}.tex"
    tex_path.write_text(
        formatted.to_latex(
            index=False,
            escape=True,
            caption=spec.caption or title,
            label=f"tab:{stem}",
            column_format="l" * len(spec.index) + "r" * (len(formatted.columns) - len(spec.index)),
        )
    )
    return [csv_path, md_path, tex_path]
