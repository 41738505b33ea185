"""End-of-run summaries: an env family's headline metrics, their attacker budget, IR violation.

Every env declares ``headline_metrics()`` (``nsw, efficiency, regret_mean`` for allocation,
``revenue, regret_mean`` for auctions...). ``train`` and ``evaluate`` print those, each regret
with the attacker budget (restarts x steps on how many profiles) that measured it, and always
the IR violation; ``auctionlab runs`` reads the same names back from the run's
``headline_metrics`` MLflow tag.

IR violation is *material* when its mean exceeds :data:`IR_MATERIAL` times the scale of the
outcome (the larger of mean |welfare| and mean |revenue|, at least 1): a mechanism that
charges more than a bidder's value is no result, however high its revenue. 1e-3 sits well
above float noise of a solver or a softmax head (< 1e-6) and far below the violations of an
untrained or broken net (O(0.1) and up).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

log = logging.getLogger("auctionlab")

#: Mean IR violation over the outcome's scale above which a summary warns.
IR_MATERIAL = 1e-3
#: The headline of a run whose env declared none (runs logged before the tag existed).
DEFAULT_HEADLINE = ("revenue", "regret_mean")
#: MLflow tags that carry the headline to ``auctionlab runs``.
HEADLINE_TAG = "headline_metrics"
REGRET_LABEL_TAG = "regret_label"


def headline_of(env: object) -> tuple[str, ...]:
    """The env's declared headline metric names (``Env.headline_metrics``)."""
    return tuple(env.headline_metrics())


def regret_label_of(env: object) -> str:
    """What the env calls mean regret (``exploitability`` where there is no money)."""
    return str(env.regret_label)


def headline_tags(env: object) -> dict[str, str]:
    """MLflow tags that let ``auctionlab runs`` show this env's headline metrics."""
    return {HEADLINE_TAG: ",".join(headline_of(env)), REGRET_LABEL_TAG: regret_label_of(env)}


def _get(metrics: Mapping[str, float], key: str) -> float:
    value = metrics.get(key)
    return math.nan if value is None else float(value)


def budget(metrics: Mapping[str, float], prefix: str = "") -> str:
    """``"2 restarts x 10 steps, 64 profiles"``: the attacker behind ``<prefix>regret_mean``."""
    restarts = _get(metrics, f"{prefix}attack_restarts")
    steps = _get(metrics, f"{prefix}attack_steps")
    profiles = _get(metrics, f"{prefix}profiles")
    if math.isnan(restarts) or math.isnan(steps):
        return ""
    return f"{restarts:.0f} restarts x {steps:.0f} steps, {profiles:.0f} profiles"


def ir_material(metrics: Mapping[str, float], prefix: str = "") -> bool:
    """Whether the mean IR violation exceeds :data:`IR_MATERIAL` of the outcome's scale."""
    violation = _get(metrics, f"{prefix}ir_violation_mean")
    if math.isnan(violation):
        return False
    scale = max(
        abs(_get(metrics, f"{prefix}welfare")) if f"{prefix}welfare" in metrics else 0.0,
        abs(_get(metrics, f"{prefix}revenue")) if f"{prefix}revenue" in metrics else 0.0,
        1.0,
    )
    return violation > IR_MATERIAL * scale


def headline_items(
    metrics: Mapping[str, float],
    names: Sequence[str],
    prefix: str = "",
    regret_label: str = "regret",
) -> list[tuple[str, float]]:
    """``(label, value)`` for each headline metric present in ``metrics``, IR violation last.

    Args:
        metrics: a run's metrics (``metrics.json``).
        names: headline metric names without prefix (``env.headline_metrics()``).
        prefix: ``val_`` for a ``train`` run's final validation, ``""`` for ``evaluate``.
        regret_label: the label of ``regret_mean``.

    """
    items = []
    for name in names:
        if f"{prefix}{name}" in metrics:
            label = regret_label if name == "regret_mean" else name
            items.append((label, _get(metrics, f"{prefix}{name}")))
    items.append(("IR violation", _get(metrics, f"{prefix}ir_violation_mean")))
    return items


def summary_line(
    metrics: Mapping[str, float],
    names: Sequence[str],
    prefix: str = "",
    regret_label: str = "regret",
) -> str:
    """One line: headline metrics, the attacker budget of the regret, IR violation (mean, max).

    Example: ``nsw 0.0800, efficiency 0.5660, exploitability 3.70e-03 (PGD 2 restarts x 10
    steps, 64 profiles), IR violation 0.00e+00 (max 0.00e+00)``.
    """
    parts = []
    for label, value in headline_items(metrics, names, prefix, regret_label)[:-1]:
        if label == regret_label:
            attacker = budget(metrics, prefix)
            parts.append(f"{label} {value:.2e}" + (f" (attacker {attacker})" if attacker else ""))
        else:
            parts.append(f"{label} {value:.4f}")
    mean = _get(metrics, f"{prefix}ir_violation_mean")
    worst = _get(metrics, f"{prefix}ir_violation_max")
    parts.append(f"IR violation {mean:.2e} (max {worst:.2e})")
    return ", ".join(parts)


def warn_ir(metrics: Mapping[str, float], prefix: str = "", where: str = "") -> bool:
    """Log a warning when the IR violation is material; returns whether it was."""
    if not ir_material(metrics, prefix):
        return False
    log.warning(
        "%sIR violation is material: mean %.3g (max %.3g) > %g of the outcome's scale; "
        "bidders would pay more than their value, so revenue is overstated",
        f"{where}: " if where else "",
        _get(metrics, f"{prefix}ir_violation_mean"),
        _get(metrics, f"{prefix}ir_violation_max"),
        IR_MATERIAL,
    )
    return True


#: Further rows of ``evaluation.md`` after the headline (when present in the metrics).
DETAIL = (
    "revenue",
    "revenue_se",
    "welfare",
    "regret_mean",
    "regret_se",
    "regret_max",
    "regret_q90",
    "regret_q99",
    "ir_violation_mean",
    "ir_violation_max",
)


def render_evaluation(
    label: str,
    env: object,
    attacker: str,
    metrics: Mapping[str, float],
    curve: list[dict],
    oracle: str | None = None,
) -> str:
    """``evaluate``'s markdown report: summary line, metric table, regret vs attacker budget.

    Args:
        label: what was evaluated (mechanism, run directory).
        env: the env (its name and declared headline metrics).
        attacker: the attacker's description (its budget).
        metrics: ``metrics.json``.
        curve: regret per attacker budget (rows with ``restarts, steps, regret_mean,
            regret_max``, and ``regret_se`` when measured).
        oracle: the reference search's description; its line is shown when the
            ``oracle_*`` metrics are present.

    """
    names = headline_of(env)
    lines = [
        f"# Evaluation of {label} on {getattr(env, 'name', env)}",
        "",
        f"Attacker: {attacker}, truthful report among the starts; "
        f"{int(metrics['profiles'])} held-out profiles.",
        "",
        "Summary: " + summary_line(metrics, names, "", regret_label_of(env)) + ".",
        "",
    ]
    line = oracle_line(metrics, oracle)
    if line:
        lines += [line, ""]
    lines += ["| metric | value |", "|---|---|"]
    shown = [*names, *(k for k in DETAIL if k not in names)]
    lines += [f"| {key} | {metrics[key]:.6g} |" for key in shown if key in metrics]
    if ir_material(metrics):
        lines += ["", f"**Warning**: IR violation is material (mean > {IR_MATERIAL:g} of scale)."]
    if "attack_deviation_steps_per_instance" in metrics:
        lines += [
            "",
            f"Deviation-steps spent: {metrics['attack_deviation_steps_per_instance']:.0f} per "
            f"bidder and profile ({metrics['attack_deviation_steps']:.4g} in all).",
        ]
    if curve:
        cost = all("deviation_steps" in r for r in curve)
        se = all("regret_se" in r for r in curve)
        lines += [
            "",
            "Regret vs attacker budget"
            + (" (SE: standard error over profiles)" if se else "")
            + ":",
            "",
            "| restarts | steps | "
            + ("deviation-steps per bidder and profile | " if cost else "")
            + "mean regret | "
            + ("SE | " if se else "")
            + "max regret |",
            "|---|---|" + ("---|" if cost else "") + "---|" + ("---|" if se else "") + "---|",
        ]
        lines += [
            f"| {int(r['restarts'])} | {int(r['steps'])} | "
            + (f"{r['deviation_steps']:.0f} | " if cost else "")
            + f"{r['regret_mean']:.6g} | "
            + (f"{r['regret_se']:.2g} | " if se else "")
            + f"{r['regret_max']:.6g} |"
            for r in curve
        ]
    return "\n".join(lines) + "\n"


def oracle_line(metrics: Mapping[str, float], oracle: str | None = None) -> str:
    """The reference search's regret and the attacker's gap to it ("" without ``oracle_*``).

    Example: ``Oracle (grid 81x81 + 2 refinements (21 per dim)): regret mean 1.20e-02, max
    8.10e-02; the attacker's gap: 3.1% of mean, 0.0% of max.``
    """
    if "oracle_regret_mean" not in metrics:
        return ""
    name = f" ({oracle})" if oracle else ""
    return (
        f"Oracle{name}: regret mean {_get(metrics, 'oracle_regret_mean'):.2e}, "
        f"max {_get(metrics, 'oracle_regret_max'):.2e}; the attacker's gap: "
        f"{100 * _get(metrics, 'oracle_gap_mean_frac'):.1f}% of mean, "
        f"{100 * _get(metrics, 'oracle_gap_max_frac'):.1f}% of max."
    )


def summarize(env: object, metrics: Mapping[str, float], prefix: str = "") -> str:
    """:func:`summary_line` for ``env``'s declared headline metrics."""
    return summary_line(metrics, headline_of(env), prefix, regret_label_of(env))
