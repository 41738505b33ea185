"""The statistical certificate's metrics, Markdown and per-sample CSV ([lemma2026certified] §6)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import Tensor


def statistical_metrics(report: dict) -> dict[str, float]:
    """The flat metrics of a statistical certificate report (``metrics.json``, tracker)."""
    cert = report["certificate"]
    gap = report["oracle"]["gap"]
    m = {
        "revenue": report["revenue"]["mean"],
        "revenue_se": report["revenue"]["se"],
        "profiles": float(report["revenue"]["profiles"]),
        "delta": float(cert["delta"]),
        "regret_estimate_max": cert["regret"]["estimate_max"],
        "regret_mean": float(sum(cert["regret"]["estimate"]) / len(cert["regret"]["estimate"])),
        "regret_slack_max": max(cert["regret"]["slack"]),
        "regret_hoeffding_slack": max(cert["regret"]["hoeffding_slack"]),
        "regret_bernstein_slack_max": max(cert["regret"]["bernstein_slack"]),
        "eta": float(gap["eta"]),
        # 1: eta from exact MIP solves (whole holdout or subsample + slack), 0: estimated.
        "eta_exact": float(str(gap.get("kind", "")).startswith(("exact", "estimated from"))),
        "eta_exact_solves": float(gap.get("solves", 0)),
        "regret_bound": cert["regret"]["bound_max"],
        "regret_range": cert["regret"]["range"],
        "ir_estimate_max": cert["ir"]["estimate_max"],
        "ir_slack_max": max(cert["ir"]["slack"]),
        "ir_bound": cert["ir"]["bound_max"],
        "regret_max_sample": max(report["regret_distribution"]["max"]),
        "regret_q99": max(report["regret_distribution"]["q99"]),
        "attack_restarts": float(report["oracle"]["holdout"].get("restarts", 0)),
        "attack_steps": float(report["oracle"]["holdout"].get("steps", 0)),
        "seconds": report["seconds"],
    }
    for i, (est, bound) in enumerate(
        zip(cert["regret"]["estimate"], cert["regret"]["bound"], strict=True)
    ):
        m[f"regret_estimate_b{i}"] = est
        m[f"regret_bound_b{i}"] = bound
    if cert.get("fairness"):
        m["fairness_estimate"] = cert["fairness"]["estimate_max"]
        m["fairness_bound"] = cert["fairness"]["bound_max"]
    if report["train_holdout_gap"]:
        m["train_regret_mean"] = report["train_holdout_gap"]["train_regret_mean"]
        m["train_holdout_gap"] = report["train_holdout_gap"]["gap"]
    if report["revenue"]["objective"]:
        m[report["revenue"]["objective"]["name"]] = report["revenue"]["objective"]["mean"]
    if report["mechanism"]["lipschitz"]:
        m["lipschitz_L"] = report["mechanism"]["lipschitz"]["L_recomputed"]
    if report.get("random_oracle_ablation"):
        ablation = report["random_oracle_ablation"]
        m["random_regret_estimate_max"] = ablation["regret_estimate_max"]
        m["random_regret_bound"] = ablation["regret_bound_no_eta"]
        # the random oracle's own budget, next to its regret (uniform draws, no steps)
        m["random_attack_restarts"] = ablation["oracle"]["restarts"]
        m["random_attack_steps"] = 0.0
        m["random_profiles"] = ablation["profiles"]
    if "share_not_stationary" in gap:
        m["share_not_stationary"] = gap["share_not_stationary"]
    return {k: float(v) for k, v in m.items()}


def _fmt(values: list[float], digits: int = 5) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def statistical_title(r: dict) -> str:
    """The certificate's Markdown heading."""
    mech = r["mechanism"]
    return f"Statistical certificate: {mech['name']} on {mech['env']}"


def statistical_markdown(r: dict) -> str:
    """The certificate's Markdown body: bounds table, provenance, tail, curve, stress tests."""
    cert, mech, oracle = r["certificate"], r["mechanism"], r["oracle"]
    gap = oracle["gap"]
    lines = [
        f"**{r['statement']}**",
        "",
        "| constraint | per-bidder estimate | Hoeffding slack | emp. Bernstein slack | slack used "
        "| eta | per-bidder bound | bound (max over bidders) | range U | delta |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("regret", "ir", "fairness"):
        c = cert.get(name)
        if not c:
            lines.append(
                f"| {name} | n/a (the env defines no fairness functional) | | | | | | | | |"
            )
            continue
        lines.append(
            f"| {name} | {_fmt(c['estimate'])} | {_fmt(c['hoeffding_slack'])} "
            f"| {_fmt(c['bernstein_slack'])} | {_fmt(c['slack'])} | {c['eta']:.5f} "
            f"| {_fmt(c['bound'])} | **{c['bound_max']:.5f}** | {c['range']:g} "
            f"| {c['delta']:.4g} ({c['delta_each']:.4g} each) |"
        )
    lines += [
        "",
        f"- Confidence: delta = {cert['delta']} split {cert['delta_split']} "
        f"(unused shares are simply not spent); slack `{cert['slack_method']}`; union bound "
        f"{cert['union_bound']}.",
        f"- Holdout oracle ({oracle['kind']} gap): `{oracle['holdout']}`.",
        f"- Oracle gap eta = {gap['eta']:.3g} ({gap.get('kind')}): "
        + (
            f"stronger oracle `{gap.get('stronger_oracle')}` on {gap.get('profiles')} profiles "
            f"raised mean regret from {gap.get('holdout_regret_on_subsample', 0):.5f} to "
            f"{gap.get('stronger_regret_on_subsample', 0):.5f}; projected-gradient norm mean "
            f"{gap.get('projected_gradient_norm_mean', 0):.3g}, max "
            f"{gap.get('projected_gradient_norm_max', 0):.3g}, share above "
            f"{gap.get('stationarity_tol')}: {gap.get('share_not_stationary', 0):.3f}."
            if gap.get("kind") == "estimated"
            else f"{gap.get('note', '')}"
            + (
                f" MIP solves: {gap['solves']} ({gap['status']}), "
                f"{gap['solve_seconds']:.1f} s; mean regret on them: oracle "
                f"{gap['holdout_regret_on_subsample']:.5f}, exact "
                f"{gap['exact_regret_on_subsample']:.5f}."
                if "solves" in gap
                else ""
            )
        ),
        f"- Revenue (truthful, holdout): {r['revenue']['mean']:.4f} ± {r['revenue']['se']:.4f}.",
        f"- Mechanism: `{mech['class']}`, state SHA-256 `{mech['state_sha256']}`"
        + (
            f", checkpoint SHA-256 `{mech['checkpoint_sha256']}`"
            if "checkpoint_sha256" in mech
            else ""
        )
        + (f", config SHA-256 `{mech['config_sha256']}`" if "config_sha256" in mech else "")
        + ".",
    ]
    if mech.get("lipschitz"):
        lip = mech["lipschitz"]
        lines.append(
            f"- A priori Lipschitz constant L = {lip['L_recomputed']:.4g} ({lip['norm']}); "
            f"stored with the weights: {lip['L_stored']:.4g} (agree: {lip['agree']})."
        )
    lines.append("- Data (SHA-256 of the float64 profile arrays; row-level overlap with holdout):")
    for name, d in r["data"].items():
        if name == "seeds_used_by_training":
            continue
        lines.append(f"  - {name}: {d}")
    dist = r["regret_distribution"]
    lines += [
        "",
        "## Per-sample regret (tail)",
        "",
        "| bidder | mean | q50 | q90 | q99 | q999 | max | share > 0.01 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i in range(len(dist["mean"])):
        lines.append(
            f"| {i} | {dist['mean'][i]:.5f} | {dist['q5'][i]:.5f} | {dist['q9'][i]:.5f} "
            f"| {dist['q99'][i]:.5f} | {dist['q999'][i]:.5f} | {dist['max'][i]:.5f} "
            f"| {dist['share_above_0.01'][i]:.4f} |"
        )
    if r["regret_vs_budget"]:
        lines += [
            "",
            "## Regret vs adversary budget",
            "",
            "| oracle | restarts | steps | mean regret | SE | max over bidders | profiles |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in r["regret_vs_budget"]:
            se = row.get("regret_se")  # absent from certificates written before it existed
            lines.append(
                f"| {row['oracle']} | {row['restarts']} | {row['steps']} | "
                f"{row['regret_mean']:.5f} | {'' if se is None else f'{se:.5f}'} "
                f"| {row['regret_max_bidder_mean']:.5f} | {row['profiles']} |"
            )
    if r["stress_tests"]:
        s = r["stress_tests"]
        lines += [
            "",
            "## Stress tests (not part of the 1 - delta statement)",
            "",
            f"- Random misreports ({s['random_misreports']['samples']} per bidder): mean regret "
            f"{s['random_misreports']['regret_mean']:.5f} vs the oracle's "
            f"{s['random_misreports']['oracle_regret_mean_same_profiles']:.5f} on the same "
            f"{s['profiles']} profiles.",
            f"- Perturbed values (noise sd {s['perturbed_values']['noise_sd_fraction_of_range']} "
            f"of the range): mean regret {s['perturbed_values']['regret_mean']:.5f} (unperturbed "
            f"{s['perturbed_values']['oracle_regret_mean_unperturbed']:.5f}).",
            f"- Worst slice by total value: {s['worst_slice']}.",
        ]
    if r.get("random_oracle_ablation"):
        a = r["random_oracle_ablation"]
        lines += [
            "",
            "## Random-misreport certification (ablation, not part of the statement)",
            "",
            f"Random search ({a['oracle']['restarts']} uniform reports per bidder + truthful) "
            f"on all {a['profiles']} holdout profiles: max-bidder regret estimate "
            f"{a['regret_estimate_max']:.5f} against the main oracle's "
            f"{a['main_oracle_regret_estimate_max']:.5f} ({100 * a['share_of_main_estimate']:.0f}"
            f"%); the bound it would certify without eta: {a['regret_bound_no_eta']:.5f}.",
        ]
    if r["train_holdout_gap"]:
        t = r["train_holdout_gap"]
        lines += [
            "",
            f"## Train vs holdout regret (same oracle)\n\ntrain {t['train_regret_mean']:.5f} "
            f"({t['train_profiles']} training profiles), holdout {t['holdout_regret_mean']:.5f}: "
            f"gap {t['gap']:.5f}.",
        ]
    return "\n".join(lines) + "\n"


def write_per_sample(path: Path, regret: Tensor, ir: Tensor) -> Path:
    """``per_sample.csv``: per-sample regret ``[N, n]`` and IR violation ``[N, n]``."""
    n = regret.shape[1]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [*(f"regret_b{i}" for i in range(n)), *(f"ir_violation_b{i}" for i in range(n))]
        )
        for row in torch.cat([regret, ir], dim=1).double().tolist():
            writer.writerow([f"{v:.8g}" for v in row])
    return path
