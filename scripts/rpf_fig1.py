"""Seed 002 Figure 1: agent 1's utility vs its reported ratio v12/v11 under PF (and RPF-Net).

Example (§2.1): v1 = (1, 1/2), v2 = (1, 1/4), x = 1, b = 1, w = 1; agent 2 truthful.

    python scripts/rpf_fig1.py --out outputs/rpf_fig1            # PF only
    python scripts/rpf_fig1.py --run outputs/runs/<date>/<time>_train   # plus a trained RPF-Net

Writes ``fig1.json`` (max gain, the ratio that achieves it) and ``fig1.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from auctionlab.envs.allocation import AllocationEnv
from auctionlab.mechanisms import ProportionalFairness, RPFNet
from auctionlab.reporting.plots import save_figure


def utility_curve(mechanism, env, ratios: torch.Tensor) -> torch.Tensor:
    """Agent 1's true utility ``[R]`` when it reports ``v1 = (1, ratio)``."""
    truth = torch.tensor([[[1.0, 0.5, 1.0, 1.0], [1.0, 0.25, 1.0, 1.0]]])
    reports = truth.repeat(len(ratios), 1, 1)
    reports[:, 0, 1] = ratios
    public = {"budgets": torch.ones(len(ratios), 2), "weights": torch.ones(len(ratios), 2)}
    with torch.no_grad():
        outcome = mechanism(reports, public)
    return env.utility(outcome, truth.expand(len(ratios), -1, -1))[:, 0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2901)
    parser.add_argument("--run", type=Path, default=None, help="a trained rpfnet 2x2 run dir")
    parser.add_argument("--out", type=Path, default=Path("outputs/rpf_fig1"))
    args = parser.parse_args(argv)
    env = AllocationEnv("allocation/2x2", 2, 2)
    ratios = torch.linspace(0.1, 3.0, args.points)
    curves = {"PF": utility_curve(ProportionalFairness(env), env, ratios)}
    if args.run is not None:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(args.run / "config.yaml").mechanism
        net = RPFNet(env, hidden=list(cfg.hidden), activation=cfg.activation, z_scale=cfg.z_scale)
        state = torch.load(args.run / "checkpoint.pt", weights_only=True)["mechanism"]
        net.load_state_dict(state)
        net.eval()
        curves["RPF-Net"] = utility_curve(net, env, ratios)
    result = {}
    for name, u in curves.items():
        truthful = float(utility_curve_at(u, ratios, 0.5))
        best = int(u.argmax())
        result[name] = {
            "truthful_utility": truthful,
            "max_utility": float(u[best]),
            "max_gain_percent": 100 * (float(u[best]) / truthful - 1),
            "best_ratio": float(ratios[best]),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fig1.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, u in curves.items():
        ax.plot(ratios, u, label=name)
        ax.axhline(result[name]["truthful_utility"], ls="--", lw=0.8, color="grey")
    ax.axvline(0.5, ls=":", color="grey")
    ax.set_xlabel("reported ratio v12 / v11 (true 0.5)")
    ax.set_ylabel("agent 1 utility")
    ax.legend()
    save_figure(fig, args.out / "fig1.png")
    print(json.dumps(result, indent=2))
    return result


def utility_curve_at(u: torch.Tensor, ratios: torch.Tensor, ratio: float) -> torch.Tensor:
    """The curve's value at the grid point closest to ``ratio``."""
    return u[torch.argmin((ratios - ratio).abs())]


if __name__ == "__main__":
    main()
