"""Extra figures of ``evaluate`` that an env asks for through ``evaluation_figures``.

An env lists figure kinds (keys of :data:`FIGURES`) in its ``evaluation_figures`` attribute;
``evaluate`` draws each into the run directory and adds its metrics. No task branches on an
env family: seed 002's allocation env asks for ``inference_time`` (Table 2) and
``allocation_example`` (Figures 1 and 5).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from auctionlab.reporting.plots import plot_curves, plot_maps


def time_inference(mechanism, types, repeats: int = 3) -> dict[str, float]:
    """Wall time of one no-grad forward pass over all held-out profiles (best of ``repeats``).

    The best of a few passes, because the shared machines this runs on add noise that only
    ever makes a pass slower. Seed 002 Table 2 divides it by ExS-Net's.

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


#: Seed 002 §2.1 (Figure 1): v1 = (1, 1/2), v2 = (1, 1/4), every demand 1, budgets 1, w = 1.
EXAMPLE = ((1.0, 0.5, 1.0, 1.0), (1.0, 0.25, 1.0, 1.0))


def allocation_figures(
    mechanism, env, out: Path, title: str, ratios: int = 2901, points: int = 41
) -> tuple[dict[str, float], list[Path]]:
    """Seed 002 Figures 1 and 5 for a 2-agent, 2-resource allocation env (else nothing).

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


def inference_figure(mechanism, env, types, out: Path, title: str) -> tuple[dict, list[Path]]:
    """:func:`time_inference` as a figure kind: metrics only, no file."""
    return time_inference(mechanism, types), []


def example_figure(mechanism, env, types, out: Path, title: str) -> tuple[dict, list[Path]]:
    """:func:`allocation_figures` as a figure kind (the held-out ``types`` are not used)."""
    return allocation_figures(mechanism, env, out, title)


#: Figure kind -> ``(mechanism, env, types [B profiles], out, title) -> (metrics, files)``.
FIGURES: dict[str, Callable[..., tuple[dict, list[Path]]]] = {
    "inference_time": inference_figure,
    "allocation_example": example_figure,
}


def evaluation_figures(mechanism, env, types, out: Path, title: str) -> tuple[dict, list[Path]]:
    """Every figure ``env.evaluation_figures`` asks for, in its order.

    Args:
        mechanism: the evaluated mechanism.
        env: its env.
        types: the held-out profiles (``values [B, n, m]`` and public inputs).
        out: the run directory.
        title: figure title prefix.

    Returns:
        The figures' metrics (merged) and the files written.

    """
    metrics: dict[str, float] = {}
    files: list[Path] = []
    for kind in getattr(env, "evaluation_figures", ()):
        extra, written = FIGURES[kind](mechanism, env, types, out, title)
        metrics.update(extra)
        files += written
    return metrics, files
