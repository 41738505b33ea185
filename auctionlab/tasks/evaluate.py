"""``auctionlab evaluate``: stress-test a trained run or a classical mechanism."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from auctionlab.errors import ConfigError
from auctionlab.evaluation import evaluate_mechanism, write_curve
from auctionlab.reporting.plots import plot_curves, plot_maps
from auctionlab.runs import load_trained
from auctionlab.tasks.common import (
    build,
    build_env_and_mechanism,
    choices,
    integer,
    log,
    progress_enabled,
    run_dir,
    save_config,
    setup_runtime,
    sha256_file,
    write_json,
)
from auctionlab.tracking import Tracker
from auctionlab.utils import make_generator


def prepare(cfg: DictConfig):
    """Build and check the mechanism, env and attacker; raises ``ConfigError`` on bad input.

    Returns:
        ``(env, mechanism, mechanism_name, label, attacker, device, choices)``.

    """
    device = setup_runtime(cfg)
    picked = choices()
    if cfg.run:
        env, mechanism, trained_choices = load_trained(str(cfg.run), device)
        # Tag the evaluation with what was evaluated, not with evaluate.yaml's defaults.
        picked.update(trained_choices)
        mechanism_name = trained_choices["mechanism"]
        label = f"{mechanism_name} ({Path(str(cfg.run)).name})"
    else:
        env, mechanism = build_env_and_mechanism(cfg)
        mechanism = mechanism.to(device)
        if mechanism.learnable:
            raise ConfigError(
                f"mechanism={picked.get('mechanism', mechanism.config_name)} is learned: pass "
                "run=<train run dir> to evaluate trained weights"
            )
        mechanism_name = picked.get("mechanism", mechanism.config_name)
        label = mechanism_name
    attacker = build(cfg.attacker, "attacker")
    if getattr(attacker, "name", "") == "local":
        raise ConfigError(
            "attacker=local searches only next to the truth (a training device): stress tests "
            "need attacker=pgd or random; evaluate reports the local LIC metrics anyway"
        )
    attacker.progress = progress_enabled(cfg)
    integer(cfg, "profiles", 1)
    integer(cfg, "profile_seed")
    if cfg.get("wdp_instances") is not None:
        integer(cfg, "wdp_instances", 0)
    return env, mechanism, mechanism_name, label, attacker, device, picked


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate; returns the metrics written to metrics.json."""
    env, mechanism, mechanism_name, label, attacker, device, picked = prepare(cfg)
    out = run_dir()
    tags = {
        "task": "evaluate",
        "run_dir": str(out.resolve()),
        "device": str(device),
        "evaluated": str(cfg.run or mechanism_name),
    }
    tags.update({f"choice.{k}": v for k, v in picked.items()})
    if cfg.run:  # exactly which weights these numbers belong to (verified when loaded)
        tags["checkpoint_sha256"] = sha256_file(Path(str(cfg.run)) / "checkpoint.pt")
    with Tracker(cfg, cfg.tracking, f"evaluate {label} {env.name}", tags) as tracker:
        save_config(cfg, out)
        types = env.sample(int(cfg.profiles), make_generator(int(cfg.profile_seed), device))
        log.info(
            "evaluating %s on %s: %d profiles, attacker %s",
            label,
            env.name,
            int(cfg.profiles),
            attacker.describe(),
        )
        metrics, curve = evaluate_mechanism(
            mechanism,
            env,
            attacker,
            types,
            make_generator(int(cfg.seed), device),
            wdp_instances=int(cfg.get("wdp_instances") or 0),
        )
        files = write_curve(curve, out, f"{env.name} {label}: {attacker.describe()}")
        if getattr(env, "family", "") == "allocation":  # seed 002 Table 2, Figures 1 and 5
            metrics.update(time_inference(mechanism, types))
            extra, figures = allocation_figures(mechanism, env, out, f"{env.name} {label}")
            metrics.update(extra)
            files += figures
        write_json(out / "metrics.json", metrics)
        report = out / "evaluation.md"
        report.write_text(render_report(label, env.name, attacker.describe(), metrics, curve))
        tracker.log_metrics(metrics)
        tracker.log_artifacts([out / "config.yaml", out / "metrics.json", report, *files])
    print(render_report(label, env.name, attacker.describe(), metrics, curve))
    return metrics


def render_report(label: str, env: str, budget: str, metrics: dict, curve: list[dict]) -> str:
    """Markdown summary: headline metrics (regret with its attacker budget) and the curve."""
    lines = [
        f"# Evaluation of {label} on {env}",
        "",
        f"Attacker: {budget}, truthful report among the starts; "
        f"{int(metrics['profiles'])} held-out profiles.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
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
    ):
        lines.append(f"| {key} | {metrics[key]:.6g} |")
    if curve:
        lines += [
            "",
            "Regret vs attacker budget:",
            "",
            "| restarts | steps | mean regret | max regret |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {int(r['restarts'])} | {int(r['steps'])} | {r['regret_mean']:.6g} | "
            f"{r['regret_max']:.6g} |"
            for r in curve
        ]
    return "\n".join(lines) + "\n"


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
