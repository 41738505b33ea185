"""Extra figures of ``evaluate`` that an env asks for through ``evaluation_figures``.

An env lists figure kinds (keys of :data:`FIGURES`) in its ``evaluation_figures`` attribute;
``evaluate`` draws each into the run directory and adds its metrics. No task branches on an
env family: [zeng2025rpf]'s allocation env asks for ``inference_time`` (Table 2) and
``allocation_example`` (Figures 1 and 5). ``evaluate figures=[nsw_loss]`` asks for more
(``nsw_loss``: where a learned allocation mechanism loses NSW against PF).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from auctionlab.errors import ConfigError
from auctionlab.reporting.plots import plot_curves, plot_maps
from auctionlab.runs import write_json

#: What a figure kind returns: its metrics and the files it wrote.
Figure = tuple[dict[str, float], list[Path]]


def time_inference(mechanism, types, repeats: int = 3) -> dict[str, float]:
    """Wall time of one no-grad forward pass over all held-out profiles (best of ``repeats``).

    The best of a few passes, because the shared machines this runs on add noise that only
    ever makes a pass slower. Zeng et al. 2025 [zeng2025rpf] Table 2 divides it by ExS-Net's.

    Args:
        mechanism: the mechanism (eval mode).
        types: ``B`` profiles; ``values [B, n, d]`` and public inputs.
        repeats: passes timed.

    Returns:
        ``inference_seconds`` (all ``B`` profiles), ``inference_us_per_profile``,
        ``inference_profiles``.

    """
    mechanism.eval()
    cuda = types.values.is_cuda
    best = math.inf
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            mechanism(types.values, types.public)
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
    B = types.batch_size
    return {
        "inference_seconds": best,
        "inference_us_per_profile": 1e6 * best / B,
        "inference_profiles": float(B),
    }


#: [zeng2025rpf] §2.1 (Figure 1): v1 = (1, 1/2), v2 = (1, 1/4), every demand 1, budgets 1, w = 1.
EXAMPLE = ((1.0, 0.5, 1.0, 1.0), (1.0, 0.25, 1.0, 1.0))


def allocation_figures(
    mechanism, env, out: Path, title: str, ratios: int = 2901, points: int = 41
) -> tuple[dict[str, float], list[Path]]:
    """[zeng2025rpf] Figures 1 and 5 for a 2-agent, 2-resource allocation env (else nothing).

    Figure 1 (``fig1_ratio_curve.csv/.png``): agent 1's true utility in the §2.1 example when
    it reports the ratio ``v12 / v11 = r`` for ``r`` in [0.1, 3] (agent 2 truthful). The report
    is scaled into the report box (``(1, r)`` for ``r <= 1``, ``(1/r, 1)`` above): PF depends
    on the ratio only, and a network sees reports of the kind it was trained on.
    Figure 5 (``fig5_allocation_map.csv/.png``): agent 1's allocation of both resources as its
    reported values ``(v11, v12)`` sweep the value box, agent 2's report fixed at the example's;
    ``fig5_max_jump`` / ``fig5_mean_jump`` (largest / mean change between neighbouring grid
    cells) measure how sharp its boundaries are.

    Args:
        mechanism: an allocation mechanism.
        env: its env.
        out: where the files go.
        title: figure title prefix.
        ratios: grid points of Figure 1.
        points: grid points per axis of Figure 5.

    Returns:
        Metrics (``fig1_*``, ``fig5_*``) and the files written.

    """
    if (env.n_bidders, env.n_items) != (2, 2):
        return {}, []
    device = next((b.device for b in mechanism.buffers()), torch.device("cpu"))
    dtype = torch.get_default_dtype()
    example = torch.tensor(EXAMPLE, dtype=dtype, device=device)
    mechanism.eval()

    def run(reports: torch.Tensor) -> torch.Tensor:  # [R, 2, 4] reports -> [R, 2, 2] allocation
        public = {
            "budgets": reports.new_ones(len(reports), 2),
            "weights": reports.new_ones(len(reports), 2),
        }
        with torch.no_grad():
            return mechanism(reports, public).allocation

    r = torch.linspace(0.1, 3.0, ratios, dtype=dtype, device=device)
    r = torch.cat([r, r.new_tensor([0.5])])  # the truth, exactly, as the last row
    reports = example.repeat(len(r), 1, 1)
    reports[:, 0, 0], reports[:, 0, 1] = (1.0 / r).clamp_max(1.0), r.clamp_max(1.0)
    allocation = run(reports)
    utility = (example[0, :2] * torch.minimum(allocation[:, 0], example[0, 2:])).sum(-1)
    truthful, curve = float(utility[-1]), utility[:-1]
    best = int(curve.argmax())
    metrics = {
        "fig1_truthful_utility": truthful,
        "fig1_max_utility": float(curve[best]),
        "fig1_max_gain_pct": 100.0 * (max(float(curve[best]), truthful) / truthful - 1.0),
        "fig1_best_ratio": float(r[best]),
    }
    grid = torch.linspace(env.value_low, env.value_high, points, dtype=dtype, device=device)
    v11, v12 = torch.meshgrid(grid, grid, indexing="ij")
    reports = example.repeat(points * points, 1, 1)
    reports[:, 0, 0], reports[:, 0, 1] = v11.flatten(), v12.flatten()
    share = run(reports)[:, 0].view(points, points, 2).cpu()  # agent 1: [v11, v12, resource]
    jumps = torch.cat([share.diff(dim=0).abs().flatten(), share.diff(dim=1).abs().flatten()])
    metrics.update(
        fig5_max_jump=float(jumps.max()), fig5_mean_jump=float(jumps.mean()), fig5_points=points
    )

    lines = ["ratio,utility_agent1"] + [
        f"{x:.6g},{u:.6g}" for x, u in zip(r[:-1].tolist(), curve.tolist(), strict=True)
    ]
    (out / "fig1_ratio_curve.csv").write_text("\n".join(lines) + "\n")
    cells = torch.stack([v11.flatten().cpu(), v12.flatten().cpu(), *share.view(-1, 2).T], -1)
    rows = ["v11,v12,a11,a12"] + [",".join(f"{x:.6g}" for x in row) for row in cells.tolist()]
    (out / "fig5_allocation_map.csv").write_text("\n".join(rows) + "\n")
    gain = metrics["fig1_max_gain_pct"]
    files = [
        out / "fig1_ratio_curve.csv",
        plot_curves(
            r[:-1].tolist(),
            {"agent 1": curve.tolist()},
            out / "fig1_ratio_curve.png",
            "reported ratio v12 / v11 (true 0.5)",
            "agent 1 utility (true type)",
            f"{title}: max gain {gain:.1f}% at ratio {metrics['fig1_best_ratio']:.3f}",
            hlines={"agent 1": truthful},
            vline=0.5,
        ),
        out / "fig5_allocation_map.csv",
        plot_maps(
            {f"agent 1's share of resource {j + 1}": share[..., j].numpy() for j in range(2)},
            (env.value_low, env.value_high, env.value_low, env.value_high),
            out / "fig5_allocation_map.png",
            "reported $v_{1,1}$",
            "reported $v_{1,2}$",
            f"{title}: agent 2 reports v2 = (1, 1/4), all demands 1, budgets 1",
        ),
    ]
    return metrics, files


def inference_figure(mechanism, env, types, out: Path, title: str, **_: Any) -> Figure:
    """:func:`time_inference` as a figure kind: metrics only, no file."""
    return time_inference(mechanism, types), []


def example_figure(mechanism, env, types, out: Path, title: str, **_: Any) -> Figure:
    """:func:`allocation_figures` as a figure kind (the held-out ``types`` are not used)."""
    return allocation_figures(mechanism, env, out, title)


def nsw_loss_split(
    mechanism,
    env,
    profiles: int,
    restarts: int,
    steps: int,
    seed: int = 7,
    exploitable: float = 1e-3,
    clean: float = 1e-5,
) -> dict:
    """NSW of ``mechanism`` over PF's and the share of the loss on PF-exploitable profiles.

    Args:
        mechanism: an allocation mechanism (``[B, n, 2m]`` reports -> outcome).
        env: its ``AllocationEnv``.
        profiles: test profiles drawn from eq. 17.
        restarts: PGD restarts on PF (the truthful start is added).
        steps: PGD steps per restart.
        seed: seed of the profiles (the attack uses ``seed + 1``).
        exploitable: PF regret (mean over agents) above which a profile counts as exploitable.
        clean: PF regret below which a profile counts as not exploitable.

    Returns:
        The NSW ratio, the fractions of exploitable / clean profiles, the shares of the NSW
        loss they and the rest carry (summing to 1; ``nan`` when nothing is lost), the ratio
        with the loss on clean profiles undone, and the budget of the attack on PF.

    """
    from auctionlab.attackers.pgd import PGDAttacker
    from auctionlab.mechanisms.pf import ProportionalFairness
    from auctionlab.utils import make_generator

    device = next(iter(mechanism.buffers())).device
    pf = ProportionalFairness(env).to(device)
    types = env.sample(profiles, make_generator(seed, device))
    with torch.no_grad():
        nsw = env.outcome_metrics(mechanism(types.values, types.public), types)["nsw"]
        pf_nsw = env.outcome_metrics(pf(types.values, types.public), types)["nsw"]
    attacker = PGDAttacker(
        restarts=restarts, steps=steps, step_size=0.05, final_step_size=0.002, include_truthful=True
    )
    result = attacker.attack(pf, env, types, make_generator(seed + 1, device), truthful=True)
    regret = result.gain.detach().mean(-1).double()  # [B] PF's regret, mean over agents
    nsw, pf_nsw = nsw.double(), pf_nsw.double()
    loss = pf_nsw - nsw  # per profile; negative where the mechanism beats PF
    total = float(loss.sum())
    hot, cold = regret > exploitable, regret < clean
    # Below the solvers' tolerance the split would be rounding noise.
    lost = total > 1e-5 * float(pf_nsw.sum())

    def share(mask: torch.Tensor) -> float:
        return float(loss[mask].sum()) / total if lost else float("nan")

    return {
        "nsw": float(nsw.mean()),
        "pf_nsw": float(pf_nsw.mean()),
        "nsw_ratio": float(nsw.mean() / pf_nsw.mean()),
        "exploitable_fraction": float(hot.double().mean()),
        "exploitable_loss_share": share(hot),
        "clean_fraction": float(cold.double().mean()),
        "clean_loss_share": share(cold),
        "other_loss_share": share(~hot & ~cold),
        "ratio_without_collateral_loss": float((nsw + loss * cold).mean() / pf_nsw.mean()),
        "profiles": float(profiles),
        "pf_attack_budget": dict(result.budget),
    }


def nsw_loss_figure(mechanism, env, types, out: Path, title: str, **options: Any) -> Figure:
    """:func:`nsw_loss_split` as a figure kind: ``nsw_loss.json`` and ``nsw_loss_*`` metrics.

    Asked for with ``auctionlab evaluate run=<allocation train run> figures=[nsw_loss]``; its
    options (``profiles, restarts, steps, seed, exploitable, clean``) are ``evaluate``'s
    ``nsw_loss`` node. It draws its own profiles (``seed``), not the held-out ``types``.
    """
    result = nsw_loss_split(mechanism, env, **options)
    path = out / "nsw_loss.json"
    write_json(path, result)  # strict JSON: a NaN share is null with its reason
    metrics = {f"nsw_loss_{k}": float(v) for k, v in result.items() if isinstance(v, int | float)}
    budget = result["pf_attack_budget"]
    metrics.update(
        nsw_loss_pf_attack_restarts=float(budget["restarts"]),
        nsw_loss_pf_attack_steps=float(budget["steps"]),
    )
    return metrics, [path]


#: Figure kind -> ``(mechanism, env, types [B profiles], out, title, **options) -> (metrics,
#: files)``. An env asks for kinds through ``evaluation_figures``; ``evaluate figures=[...]``
#: adds more.
FIGURES: dict[str, Callable[..., Figure]] = {
    "inference_time": inference_figure,
    "allocation_example": example_figure,
    "nsw_loss": nsw_loss_figure,
}


def check_figures(kinds: Sequence[str]) -> None:
    """Raise ``ConfigError`` for a figure kind that does not exist."""
    unknown = [k for k in kinds if k not in FIGURES]
    if unknown:
        raise ConfigError(f"figures={list(kinds)}: unknown {unknown}; choose from {list(FIGURES)}")


def evaluation_figures(
    mechanism,
    env,
    types,
    out: Path,
    title: str,
    extra: Sequence[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Figure:
    """Every figure ``env.evaluation_figures`` asks for, then ``extra``, in that order.

    Args:
        mechanism: the evaluated mechanism.
        env: its env.
        types: the held-out profiles (``values [B, n, m]`` and public inputs).
        out: the run directory.
        title: figure title prefix.
        extra: more figure kinds (``evaluate figures=[...]``).
        options: per kind, keyword options of its function.

    Returns:
        The figures' metrics (merged) and the files written.

    """
    metrics: dict[str, float] = {}
    files: list[Path] = []
    kinds = [*env.evaluation_figures, *(k for k in extra)]
    check_figures(kinds)
    for kind in dict.fromkeys(kinds):
        extra_metrics, written = FIGURES[kind](
            mechanism, env, types, out, title, **dict((options or {}).get(kind) or {})
        )
        metrics.update(extra_metrics)
        files += written
    return metrics, files
