"""Stress tests: revenue, welfare, IR and regret of a mechanism under a given attacker."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from auctionlab.types import Types


def _quantile(x: torch.Tensor, q: float) -> float:
    return float(torch.quantile(x.double().flatten(), q))


def evaluate_mechanism(
    mechanism,
    env,
    attacker,
    types: Types,
    generator: torch.Generator,
    prefix: str = "",
    local_attacker=None,
    wdp_instances: int = 0,
    oracle=None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Measure a mechanism on fixed profiles.

    Args:
        mechanism: the mechanism (put in eval mode here).
        env: the environment.
        attacker: the misreport search; its budget is written next to every regret.
        types: ``B`` held-out profiles.
        generator: randomness of the attacker's restarts.
        prefix: prepended to every metric key (``val_`` during training).
        local_attacker: the local search behind the LIC metrics ([okada2025lic] §3.1); default one
            Adam step of 0.1 of the report range from the truth.
        wdp_instances: combinatorial mechanisms: also solve the first this many truthful
            instances with HiGHS (see ``wdp_metrics``).
        oracle: a reference search run on the same profiles after ``attacker``, from its
            misreports (``oracle_metrics``); ``None``: no ``oracle_*`` metrics. The caller
            checks that it applies to ``env`` (``oracle.unsupported(env)``).

    Returns:
        Flat numeric metrics, and the regret-vs-budget curve as rows
        ``{restarts, steps, regret_mean, regret_se, regret_max}`` (``regret_se``: standard
        error over profiles, as ``regret_se``). Every curve row is also a metric group
        ``curve_r<R>_s<S>_{regret_mean, regret_max, attack_restarts, attack_steps, profiles}``
        (e.g. the PGD phase of the hybrid attacker at several budgets, for stress tables), and
        the curve's largest budget is repeated as ``pgd_*`` (same suffixes). With an
        ``oracle``, the ``oracle_*`` metrics of ``oracle_metrics``.

    """
    mechanism.eval()
    values = types.values
    B, n, _ = values.shape
    with torch.no_grad():
        outcome = mechanism(values, types.public)
        utility = env.utility(outcome, values)
    # the truthful forward's winner determination, before the attacker's forwards replace it
    solved = wdp_metrics(mechanism, values, wdp_instances)
    revenue = outcome.payment.sum(-1)
    # Families may define their own welfare (allocation: sum of capped-linear utilities).
    welfare = env.welfare(outcome, values)
    ir_violation = (-utility).clamp_min(0.0)
    result = attacker.attack(mechanism, env, types, generator)
    regret = result.gain  # [B, n]
    per_profile = regret.mean(-1)
    budget = result.budget
    metrics: dict[str, float] = {
        "profiles": float(B),
        "revenue": float(revenue.mean()),
        "revenue_se": float(revenue.std() / math.sqrt(B)) if B > 1 else 0.0,
        "welfare": float(welfare.mean()),
        "ir_violation_mean": float(ir_violation.mean()),
        "ir_violation_max": float(ir_violation.max()),
        "regret_mean": float(regret.mean()),
        "regret_se": float(per_profile.std() / math.sqrt(B)) if B > 1 else 0.0,
        "regret_max": float(regret.max()),
        "regret_q50": _quantile(regret, 0.5),
        "regret_q90": _quantile(regret, 0.9),
        "regret_q99": _quantile(regret, 0.99),
        "attack_restarts": float(budget["restarts"]),
        "attack_steps": float(budget["steps"]),
        "attack_step_size": float(budget["step_size"]),
        "attack_gradient": float(bool(budget.get("gradient", True))),
    }
    if "deviation_steps" in budget:  # what the search actually spent, in utility evaluations
        metrics["attack_deviation_steps"] = float(budget["deviation_steps"])
        metrics["attack_deviation_steps_per_instance"] = float(budget["deviation_steps"]) / (B * n)
    # e.g. NSW, log-NSW, efficiency
    for key, per_profile_value in env.outcome_metrics(outcome, types).items():
        metrics[key] = float(per_profile_value.mean())
        metrics[f"{key}_se"] = float(per_profile_value.std() / math.sqrt(B)) if B > 1 else 0.0
    metrics.update(_local_metrics(mechanism, env, types, generator, local_attacker))
    if oracle is not None:  # after the local search: its randomness is the same with or without
        metrics.update(oracle_metrics(mechanism, env, types, oracle, result, generator))
    metrics.update(solved)
    for i in range(n):
        metrics[f"regret_mean_bidder{i}"] = float(regret[:, i].mean())
        metrics[f"regret_max_bidder{i}"] = float(regret[:, i].max())
    curve = [
        {
            "restarts": float(r),
            "steps": float(s),
            "regret_mean": float(g.mean()),
            # over profiles of the per-profile mean over bidders, as regret_se
            "regret_se": float(g.mean(-1).std() / math.sqrt(B)) if B > 1 else 0.0,
            "regret_max": float(g.max()),
            # what reaching this point cost, per bidder and profile (where the attacker counts)
            **(
                {"deviation_steps": result.curve_cost[(r, s)]}
                if (r, s) in result.curve_cost
                else {}
            ),
        }
        for (r, s), g in sorted(result.curve.items())
    ]
    for row in curve:
        key = f"curve_r{int(row['restarts'])}_s{int(row['steps'])}_"
        metrics[key + "regret_mean"] = row["regret_mean"]
        metrics[key + "regret_max"] = row["regret_max"]
        metrics[key + "attack_restarts"] = row["restarts"]
        metrics[key + "attack_steps"] = row["steps"]
        metrics[key + "profiles"] = float(B)
    phase = getattr(attacker, "curve_phase", None)
    if curve and phase:  # the curve's largest budget: its whole phase (hybrid: PGD alone)
        top = max(curve, key=lambda row: (row["restarts"], row["steps"]))
        metrics[f"{phase}_regret_mean"] = top["regret_mean"]
        metrics[f"{phase}_regret_max"] = top["regret_max"]
        metrics[f"{phase}_attack_restarts"] = top["restarts"]
        metrics[f"{phase}_attack_steps"] = top["steps"]
        metrics[f"{phase}_profiles"] = float(B)
    return {prefix + k: v for k, v in metrics.items()}, curve


def oracle_metrics(
    mechanism, env, types: Types, oracle, attack, generator: torch.Generator
) -> dict[str, float]:
    """How much regret the attacker left on the table: a reference search on its profiles.

    The oracle (``evaluate``'s ``oracle``: an exhaustive grid of each bidder's report) starts
    from the attacker's misreports (``init``), so per profile and bidder its gain is at least
    the attacker's; it is taken as the larger of the two, so float noise between the two
    forward passes cannot make the gap negative.

    Args:
        mechanism: the mechanism under attack.
        env: the environment (the oracle must apply to it: ``oracle.unsupported(env)``).
        types: the profiles the attacker searched.
        oracle: the reference search.
        attack: the attacker's result on ``types`` (truthful utility included).
        generator: randomness of the oracle (a grid uses none).

    Returns:
        ``oracle_regret_mean`` / ``_max``; ``oracle_gap_mean``, the mean over profiles and
        bidders of the oracle's gain minus the attacker's; ``oracle_gap_mean_frac`` (that gap
        over the oracle's mean regret) and ``oracle_gap_max_frac`` (the max regret the
        attacker missed over the oracle's max), both 0 when the oracle finds no regret;
        ``oracle_deviation_steps`` (deviation utilities it computed) and ``oracle_points``
        (its grid levels per report dimension; 0 for a search without a grid).

    """
    found = oracle.attack(mechanism, env, types, generator, init=attack.misreports.unsqueeze(0))
    gain = attack.gain
    oracle_gain = torch.maximum(found.gain, gain)
    regret_mean, regret_max = float(oracle_gain.mean()), float(oracle_gain.max())
    gap_mean = float((oracle_gain - gain).mean())
    gap_max = regret_max - float(gain.max())
    return {
        "oracle_regret_mean": regret_mean,
        "oracle_regret_max": regret_max,
        "oracle_gap_mean": gap_mean,
        "oracle_gap_mean_frac": gap_mean / regret_mean if regret_mean > 0 else 0.0,
        "oracle_gap_max_frac": gap_max / regret_max if regret_max > 0 else 0.0,
        "oracle_deviation_steps": float(found.budget.get("deviation_steps", 0.0)),
        "oracle_points": float(found.budget.get("points", 0)),
    }


#: Largest enumeration built as the exact reference of ``wdp_metrics`` (beyond: HiGHS).
REFERENCE_ALLOCATIONS = 20_000  # the [B, A] float64 totals stay small


def wdp_metrics(mechanism, reports: torch.Tensor, instances: int = 0) -> dict[str, float]:
    """Winner-determination statistics of a combinatorial mechanism's last forward pass.

    Reads ``mechanism.last_wdp`` (the truthful forward): its solver's per-instance time
    (``wdp_seconds_*``: HiGHS per instance, enumeration amortised over the batch), gap and
    nodes, and how often its allocation differs from the exact, tie-ruled maximiser of the same
    scores (the bids when the rule solves nothing, e.g. greedy): ``wdp_differs_frac`` and the
    mean ratio of its score total to the optimum, ``wdp_score_ratio``, over
    ``wdp_reference_instances`` instances. The exact reference is the enumeration (at most
    ``REFERENCE_ALLOCATIONS`` allocations, every instance) or else HiGHS at gap 0.
    With ``instances > 0`` the first ``instances`` score vectors are also solved by HiGHS with
    the mechanism's tie rule and ``mip_rel_gap`` (``highs_*``: seconds p50 / p95 / p99 / mean,
    stage-1 seconds p50, nodes, realised gap, and ``highs_differs_frac`` against the exact
    reference). Mechanisms without ``last_wdp`` (item auctions, fractional rules) give ``{}``.

    Args:
        mechanism: the mechanism, right after its forward pass on ``reports``.
        reports: ``[B, n, k]`` the bids of that forward pass.
        instances: how many instances HiGHS re-solves (0: none).

    """
    from auctionlab.errors import ConfigError
    from auctionlab.solvers.wdp import ExactWDP, HighsWDP

    last = mechanism.last_wdp
    membership = mechanism.wdp_membership()
    if last is None or membership is None:
        return {}
    scores = (last.scores if last.scores is not None else reports).detach().double().cpu()
    tie_tol = float(mechanism.tie_tol)
    seed = int(mechanism.priority_seed)
    gap = float(mechanism.mip_rel_gap)
    out: dict[str, float] = {}
    certificate = last.certificate
    if "seconds" in certificate:
        seconds = certificate["seconds"].double()
        out["wdp_seconds_mean"] = float(seconds.mean())
        for q in (50, 95, 99):
            out[f"wdp_seconds_p{q}"] = _quantile(seconds, q / 100)
    if "gap" in certificate:
        out["wdp_gap_max"] = float(certificate["gap"].max())
    if "nodes" in certificate:
        out["wdp_nodes_mean"] = float(certificate["nodes"].double().mean())
    try:
        reference = ExactWDP(membership.cpu(), tie_tol, seed, limit=REFERENCE_ALLOCATIONS)
        exact = reference.solve(scores)
    except ConfigError:  # too many allocations to enumerate: HiGHS on the re-solved subset
        exact = None
    count = min(int(instances), scores.shape[0])
    if count > 0:
        subset = scores[:count]
        highs = HighsWDP(membership.cpu(), tie_tol, seed, gap).solve(subset)
        seconds = highs.certificate["seconds"]
        out["highs_instances"] = float(count)
        out["highs_seconds_mean"] = float(seconds.mean())
        for q in (50, 95, 99):
            out[f"highs_seconds_p{q}"] = _quantile(seconds, q / 100)
        out["highs_stage1_seconds_p50"] = _quantile(highs.certificate["stage1_seconds"], 0.5)
        out["highs_nodes_mean"] = float(highs.certificate["nodes"].mean())
        out["highs_gap_max"] = float(highs.certificate["gap"].max())
        out["highs_optimal_frac"] = float(highs.certificate["optimal"].mean())
        if exact is None:
            exact = highs if gap == 0 else HighsWDP(membership.cpu(), tie_tol, seed).solve(subset)
        differs = (highs.choice.cpu() != exact.choice[:count].cpu()).any(-1)
        out["highs_differs_frac"] = float(differs.double().mean())
    if exact is not None:
        count = exact.choice.shape[0]
        choice = last.choice[:count].cpu()
        out["wdp_reference_instances"] = float(count)
        out["wdp_differs_frac"] = float((choice != exact.choice.cpu()).any(-1).double().mean())
        # score total of the deployed allocation over the optimum (instances with optimum > 0)
        from auctionlab.solvers.wdp import choice_to_allocation

        k = scores.shape[-1]
        deployed = (choice_to_allocation(choice, k).double() * scores[:count]).sum((-1, -2))
        best = exact.objective.cpu().double()
        positive = best > 1e-12
        ratio = deployed[positive] / best[positive]
        out["wdp_score_ratio"] = float(ratio.mean()) if bool(positive.any()) else 1.0
    return out


def curve_lines(curve: list[dict[str, float]]) -> dict[str, dict[str, list[float]]]:
    """The regret-vs-budget curve as the lines :func:`write_curve` draws.

    One line per attacker (rows may name theirs: ``oracle``) and restart count, its points in
    step order: ``x`` (deviation-steps per bidder and profile where every row says, else
    ``steps + 1``), ``regret_mean`` and ``regret_se`` (NaN where a row has none).
    """
    by_cost = all("deviation_steps" in row for row in curve)
    lines: dict[str, dict[str, list[float]]] = {}
    for oracle, r in sorted({(str(row.get("oracle", "")), row["restarts"]) for row in curve}):
        rows = sorted(
            (row for row in curve if (str(row.get("oracle", "")), row["restarts"]) == (oracle, r)),
            key=lambda row: row["steps"],
        )
        label = f"{int(r)} restart" + ("" if r == 1 else "s")
        lines[f"{oracle}, {label}" if oracle else label] = {
            "x": [float(row["deviation_steps"] if by_cost else row["steps"] + 1) for row in rows],
            "regret_mean": [float(row["regret_mean"]) for row in rows],
            "regret_se": [float(row.get("regret_se", math.nan)) for row in rows],
        }
    return lines


def write_curve(curve: list[dict[str, float]], run_dir: Path, title: str) -> list[Path]:
    """Write the regret-vs-budget curve as CSV and a PNG plot; returns the files written.

    Error bars: ± one standard error over profiles (``regret_se``), where the rows carry it.
    """
    if not curve:
        return []
    csv_path = run_dir / "regret_vs_budget.csv"
    fields = list(dict.fromkeys(key for row in curve for key in row))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(curve)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from auctionlab.core.figures import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    by_cost = all("deviation_steps" in row for row in curve)
    lines = curve_lines(curve)
    with_se = all(math.isfinite(se) for line in lines.values() for se in line["regret_se"])
    for label, line in lines.items():
        ax.errorbar(
            line["x"],
            line["regret_mean"],
            yerr=line["regret_se"] if with_se else None,
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("deviation-steps per bidder and profile" if by_cost else "attacker steps + 1")
    ax.set_ylabel("mean regret per bidder" + ("\n(± 1 SE over profiles)" if with_se else ""))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return [csv_path, save_figure(fig, run_dir / "regret_vs_budget.png")]


def _local_metrics(mechanism, env, types: Types, generator, local_attacker) -> dict[str, float]:
    """Both LIC conditions of [okada2025lic] §3.1 at the misreport a local search finds.

    ``local_regret_*``: condition 1 (the truth beats a nearby report, for the true type);
    ``lic_reverse_violation_*``: condition 2 (a nearby type prefers its own outcome to the
    truth's), each maximised by its own local search from the truth with the same budget
    (``local_attack_*``). They are no substitute for the global regret above.
    """
    from auctionlab.attackers import LocalAttacker, reverse_lic_search

    local = local_attacker or LocalAttacker(steps=1, step_size=0.1)
    result = local.attack(mechanism, env, types, generator)
    reverse = reverse_lic_search(mechanism, env, types, local.steps, local.step_size)
    return {
        "local_regret_mean": float(result.gain.mean()),
        "local_regret_max": float(result.gain.max()),
        "lic_reverse_violation_mean": float(reverse.mean()),
        "lic_reverse_violation_max": float(reverse.max()),
        "local_attack_restarts": 1.0,
        "local_attack_steps": float(local.steps),
        "local_attack_step_size": float(local.step_size),
        "local_profiles": float(types.batch_size),
    }


def boundary_lines(first: torch.Tensor, second: torch.Tensor, field: torch.Tensor) -> list:
    """Where ``field`` crosses 1/2 over a grid: the edges of a deterministic allocation's regions.

    Args:
        first: ``[P]`` grid of the first report.
        second: ``[Q]`` grid of the second report.
        field: ``[P, Q]`` values (an allocation probability), indexed ``[first, second]``.

    Returns:
        Polylines, each a ``[K, 2]`` numpy array of ``(first, second)`` points.

    """
    import contourpy

    generator = contourpy.contour_generator(
        first.double().numpy(),
        second.double().numpy(),
        field.T.double().numpy(),
        line_type="Separate",
    )
    return [line for line in generator.lines(0.5) if len(line) > 1]


def optimal_boundary(env, grid: torch.Tensor, first, second) -> tuple[str, list] | None:
    """The region edges of ``env``'s known optimal mechanism on the allocation map's grid.

    Computed from that mechanism's own allocation on the grid (contours at 1/2 of each item's
    probability, :func:`boundary_lines`), so the overlay is what the code implements.

    Args:
        env: a 1-bidder, 2-item env.
        grid: ``[P*Q, 1, 2]`` the map's report profiles.
        first: ``[P]`` the first report's grid.
        second: ``[Q]`` the second report's grid.

    Returns:
        ``(config name, [(item, [K, 2] polyline), ...])``, or ``None`` where no optimal
        mechanism is known for ``env`` (:func:`~auctionlab.mechanisms.optimal_mechanism`).

    """
    from auctionlab.mechanisms import optimal_mechanism

    optimal = optimal_mechanism(env)
    if optimal is None:
        return None
    with torch.no_grad():
        allocation = optimal(grid.cpu()).allocation.view(len(first), len(second), 2)
    lines = [
        (item, line)
        for item in range(2)
        for line in boundary_lines(first, second, allocation[..., item])
    ]
    return optimal.config_name, lines


def write_allocation_map(
    mechanism, env, run_dir: Path, title: str, points: int = 101
) -> list[Path]:
    """The classic RegretNet figure for one bidder and two items: P(item j) over the value box.

    Writes ``allocation_map.png`` (one heatmap per item) and ``allocation_map.csv`` (the grid);
    other env shapes, or unbounded report spaces, get nothing. Where a revenue-optimal mechanism
    is known for ``env`` (Manelli-Vincent on two U[0,1] items, Pavlov for unit demand), the
    edges of its regions are drawn in white on both panels, as the RegretNet papers do, and
    written to ``allocation_map_optimal.csv`` (``mechanism, item, line, v1, v2``: the item
    whose probability changes across the edge, one row per polyline point).

    Args:
        mechanism: a mechanism for ``env`` (put in eval mode here).
        env: a 1-bidder, 2-item environment.
        run_dir: where the files go.
        title: the figure's title.
        points: grid points per axis.

    Returns:
        The files written.

    """
    space = env.report_space
    if env.n_bidders != 1 or env.n_items != 2 or not space.bounded:
        return []
    low, high = space.low[0].tolist(), space.high[0].tolist()
    first = torch.linspace(low[0], high[0], points)
    second = torch.linspace(low[1], high[1], points)
    grid = torch.stack(torch.meshgrid(first, second, indexing="ij"), -1).view(-1, 1, 2)
    device = next((b.device for b in mechanism.buffers()), torch.device("cpu"))
    mechanism.eval()
    with torch.no_grad():
        outcome = mechanism(grid.to(device))
    allocation = outcome.allocation.view(points, points, 2).cpu()
    csv_path = run_dir / "allocation_map.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["v1", "v2", "p_item1", "p_item2", "payment"])
        for row, payment in zip(
            torch.cat([grid.view(-1, 2), allocation.view(-1, 2)], -1).tolist(),
            outcome.payment.view(-1).tolist(),
            strict=True,
        ):
            writer.writerow([f"{x:.6g}" for x in [*row, payment]])
    files = [csv_path]
    optimal = optimal_boundary(env, grid, first, second)
    if optimal is not None:
        name, lines = optimal
        files.append(run_dir / "allocation_map_optimal.csv")
        with files[-1].open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["mechanism", "item", "line", "v1", "v2"])
            for index, (item, line) in enumerate(lines):
                for x, y in line.tolist():
                    writer.writerow([name, item + 1, index, f"{x:.6g}", f"{y:.6g}"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from auctionlab.core.figures import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for item, ax in enumerate(axes):
        image = ax.imshow(
            allocation[..., item].T.numpy(),
            origin="lower",
            extent=(low[0], high[0], low[1], high[1]),
            aspect="auto",
            vmin=0.0,
            vmax=1.0,
            cmap="viridis",
        )
        if optimal is not None:
            # every region edge on both panels: where the optimum switches what it sells
            for index, (_, line) in enumerate(optimal[1]):
                ax.plot(
                    line[:, 0],
                    line[:, 1],
                    # solid: an edge where both items change is drawn twice, and two dash
                    # patterns out of phase would look like one solid line anyway
                    color="white",
                    linewidth=1.3,
                    label=f"optimal ({optimal[0]}) regions" if index == 0 else None,
                )
            ax.set_xlim(low[0], high[0])
            ax.set_ylim(low[1], high[1])
            ax.legend(fontsize=7, loc="upper right", framealpha=0.6)
        ax.set_xlabel("$v_1$")
        ax.set_ylabel("$v_2$")
        ax.set_title(f"probability of allocating item {item + 1}", fontsize=9)
        fig.colorbar(image, ax=ax)
    fig.suptitle(title, fontsize=10)
    return [*files, save_figure(fig, run_dir / "allocation_map.png")]
