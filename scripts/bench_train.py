"""Seconds per RegretNet training iteration (misreport search + primal step), JSON out.

Example:
    python scripts/bench_train.py --env 2x2 --batch 512 --misreport-steps 50 --threads 2
    python scripts/bench_train.py --batch 128 --misreport-steps 25 --local --no-reference

``--local`` also times RegretNet-Local ([okada2025lic]: one gradient step from the truth) at the
same batch, interleaved with the standard iterations so machine noise hits both alike, and
reports the ratio of their medians.

Also times a minimal hand-written loop (same nets, same work, no framework) on the same
machine for reference, unless ``--no-reference``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from auctionlab.attackers import LocalAttacker, PGDAttacker
from auctionlab.conf import compose
from auctionlab.mechanisms.regretnet import RegretNet
from auctionlab.training import AugmentedLagrangian, RegretBudget, Trainer


def time_iterations(step, iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def reference_loop(mechanism, values, steps: int, lr: float = 1e-3):
    """The smallest honest RegretNet iteration: per-bidder misreports, Adam on reports."""
    optimizer = torch.optim.Adam(mechanism.parameters(), lr=lr)
    B, n, m = values.shape

    def utilities(reports_for, mech):
        out = []
        for i in range(n):
            profile = values.clone()
            profile[:, i] = reports_for[:, i]
            o = mech(profile)
            out.append((o.allocation[:, i] * values[:, i]).sum(-1) - o.payment[:, i])
        return torch.stack(out, -1)

    def step():
        mis = torch.rand_like(values).requires_grad_(True)
        opt = torch.optim.Adam([mis], lr=0.1)
        for _ in range(steps):
            opt.zero_grad()
            (-utilities(mis, mechanism).sum()).backward()
            opt.step()
            with torch.no_grad():
                mis.clamp_(0, 1)
        o = mechanism(values)
        truth = (o.allocation * values).sum(-1) - o.payment
        regret = (utilities(mis.detach(), mechanism) - truth).clamp_min(0).mean(0)
        loss = -o.payment.sum(-1).mean() + 5.0 * regret.sum() + 0.5 * (regret**2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="2x2")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--misreport-steps", type=int, default=50)
    parser.add_argument("--hidden", default="100,100,100")
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument(
        "--local", action="store_true", help="also time local regret (1 step from the truth)"
    )
    parser.add_argument(
        "--local-steps", type=int, default=1, help="gradient steps from the truth (paper: 1)"
    )
    parser.add_argument("--out", default="-", help="JSON file (default: stdout)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    env = instantiate(compose("train", [f"env={args.env}"]).env)
    hidden = [int(h) for h in args.hidden.split(",")]

    def make_trainer(attacker) -> Trainer:
        torch.manual_seed(0)
        return Trainer(
            RegretNet(env, hidden=hidden, activation=args.activation),
            env,
            attacker,
            RegretBudget() if args.local else AugmentedLagrangian(),
            iterations=10**9,
            batch_size=args.batch,
            num_samples=args.batch * 20,
            device=device,
            progress=False,
        )

    trainer = make_trainer(PGDAttacker(restarts=1, steps=args.misreport_steps, step_size=0.1))
    if args.local:
        local = make_trainer(LocalAttacker(steps=args.local_steps, step_size=0.1))
        times, local_times = [], []
        for _ in range(4):  # interleaved blocks
            times += time_iterations(trainer.step, args.iterations // 4, args.warmup)
            local_times += time_iterations(local.step, args.iterations // 4, args.warmup)
    else:
        times = time_iterations(trainer.step, args.iterations, args.warmup)
    result = {
        "benchmark": "train_iteration",
        "env": args.env,
        "batch": args.batch,
        "misreport_steps": args.misreport_steps,
        "hidden": hidden,
        "activation": args.activation,
        "threads": args.threads,
        "device": str(device),
        "iterations": args.iterations,
        "seconds_per_iteration_median": statistics.median(times),
        "seconds_per_iteration_min": min(times),
        "seconds_per_iteration_max": max(times),
        "constraint": "regret_budget" if args.local else "lagrangian",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    if args.local:
        result["local_steps"] = args.local_steps
        result["local_seconds_per_iteration_median"] = statistics.median(local_times)
        result["local_over_standard"] = statistics.median(local_times) / statistics.median(times)
    if not args.no_reference:
        reference = RegretNet(env, hidden=hidden, activation=args.activation).to(device)
        values = env.sample(args.batch, torch.Generator(device=device).manual_seed(0)).values
        ref_times = time_iterations(
            reference_loop(reference, values, args.misreport_steps), max(3, args.iterations // 4), 1
        )
        result["reference_seconds_per_iteration_median"] = statistics.median(ref_times)
        result["speedup_vs_reference"] = statistics.median(ref_times) / statistics.median(times)
    text = json.dumps(result, indent=2)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
