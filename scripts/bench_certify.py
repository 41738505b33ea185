"""Seconds per exact MIP certificate (one profile, one bidder) with HiGHS on one thread, JSON out.

Example:
    python scripts/bench_certify.py --run outputs/runs/<date>/<time>_train --profiles 50
    python scripts/bench_certify.py --train --env 2x2 --iterations 3000   # trains its own net

The network is a ``regretnet_sparsemax`` run (the IR-penalty architecture: free payment, clipped at
0, with the ReLU-stability regulariser for the [curry2020certifying] Table 1 row). ``--train``
trains one first (``auctionlab train``: 32x32 trunk, ``relu_stability=1.0``, no teacher). Each
instance is solved in this process, one after the other, with one HiGHS thread: ``solve`` times are
HiGHS's wall time per instance, ``bounds`` the LP tightening before it (``--bounds lp``), ``total``
their sum. Only ``optimal`` solves are certificates; the JSON counts the rest.

``--empirical`` times certify's empirical-regret stage instead (the attack on the certified
profiles and on ``scale.evaluation.profiles`` held-out profiles, as ``certify certifier=mip`` runs
it): the previous default (``attacker=pgd``, 100 x 1000 at ``scale=cpu``, on the float64 network)
against the current one (``attacker=adaptive`` on a float32 copy, finds re-scored in float64), on
the same profiles in one process, with the regret each finds:

    python scripts/bench_certify.py --run <regretnet_sparsemax run> --empirical --profiles 100
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from auctionlab.certify.mip import SolverSettings, solve_instances
from auctionlab.certify.mip_certifier import attack_in_float32
from auctionlab.conf import compose
from auctionlab.runs import load_trained
from auctionlab.solvers.mip_encoding import NetworkSpec, instance_bounds
from auctionlab.tasks.certify import build_attacker
from auctionlab.utils import make_generator

CPU = torch.device("cpu")


def stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "median": statistics.median(values),
        "max": max(values),
        "min": min(values),
    }


def train(env: str, iterations: int, directory: Path) -> Path:
    exe = Path(sys.executable).with_name("auctionlab")
    args = [
        str(exe),
        "train",
        "mechanism=regretnet_sparsemax",
        f"env={env}",
        "mechanism.hidden=[32,32]",
        "mechanism.relu_stability=1.0",
        f"train.iterations={iterations}",
        "threads=1",
        f"hydra.run.dir={directory}",
    ]
    subprocess.run(args, check=True)
    return directory


def significant(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}"


def empirical_stage(run: Path, profiles: int, scale: str, profile_seed: int) -> dict:
    """Both stress tests of certify's empirical stage on the same profiles, timed in one process.

    Returns:
        Per variant: seconds, deviation-steps, the regret on the held-out profiles
        (``regret_mean``/``regret_max``, certify's ``regret_mean``) and on the certified ones
        (``regret_same``); then the speed-up and whether the regrets agree to 3 digits.

    """
    env, mechanism, picked = load_trained(str(run), CPU)
    mechanism = mechanism.double().eval()
    held_out_count = int(compose("certify", [f"scale={scale}"]).scale.evaluation.profiles)

    def sample(count: int, seed: int):
        types = env.sample(count, make_generator(seed, CPU))
        types.values = types.values.double()
        return types

    certified, held_out = sample(profiles, profile_seed), sample(held_out_count, profile_seed + 1)

    def float64_attack(attacker, types, seed: int):
        return attacker.attack(mechanism, env, types, make_generator(seed, CPU))

    def float32_attack(attacker, types, seed: int):
        return attack_in_float32(attacker, mechanism, env, types, seed)

    variants = {
        "previous": ("pgd", float64_attack, "attacker=pgd on the float64 network"),
        "current": (
            "adaptive",
            float32_attack,
            "attacker=adaptive on a float32 copy, float64 re-scored",
        ),
    }
    report: dict = {"held_out_profiles": held_out_count, "certified_profiles": profiles}
    for key, (name, attack, how) in variants.items():
        cfg = compose("certify", [f"attacker={name}", f"scale={scale}", "progress=false"])
        attacker = build_attacker(cfg)
        started = time.perf_counter()
        same, other = attack(attacker, certified, 0), attack(attacker, held_out, 1)
        seconds = time.perf_counter() - started
        report[key] = {
            "attacker": name,
            "how": how,
            "describe": attacker.describe(),
            "seconds": seconds,
            "deviation_steps": float(same.budget.get("deviation_steps", 0))
            + float(other.budget.get("deviation_steps", 0)),
            "regret_mean": float(other.gain.mean()),
            "regret_max": float(other.gain.max()),
            "regret_same": float(same.gain.mean()),
        }
        print(
            f"{key}: {attacker.describe()}: {seconds:.1f} s, regret_mean "
            f"{report[key]['regret_mean']:.6g}, regret_same {report[key]['regret_same']:.6g}",
            file=sys.stderr,
        )
    previous, current = report["previous"], report["current"]
    report["speedup"] = previous["seconds"] / current["seconds"]
    report["deviation_steps_ratio"] = current["deviation_steps"] / previous["deviation_steps"]
    for metric in ("regret_mean", "regret_same", "regret_max"):
        report[f"{metric}_ratio"] = current[metric] / previous[metric]
        report[f"{metric}_same_3_digits"] = significant(current[metric]) == significant(
            previous[metric]
        )
    report["mechanism"] = picked.get("mechanism")
    report["env"] = env.name
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a regretnet_sparsemax train run directory")
    parser.add_argument("--train", action="store_true", help="train a network first")
    parser.add_argument("--env", default="2x2")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--profiles", type=int, default=50)
    parser.add_argument("--bounds", default="lp", choices=["ibp", "lp"])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=54321)
    parser.add_argument("--out", default="outputs/bench/certify_2x2.json")
    parser.add_argument(
        "--empirical",
        action="store_true",
        help="time certify's empirical-regret stage: attacker=pgd (float64) vs adaptive (float32)",
    )
    parser.add_argument("--scale", default="cpu", help="the scale whose attacker budgets to use")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.run:
        run = Path(args.run)
    elif args.train:
        run = train(args.env, args.iterations, out.parent / f"certify_{args.env}_train")
    else:
        parser.error("pass --run <train run dir> or --train")
    if args.empirical:
        report = {"benchmark": "certify_empirical", "run": str(run), "scale": args.scale}
        report |= empirical_stage(run, args.profiles, args.scale, args.seed)
        report |= {"python": platform.python_version(), "torch": torch.__version__}
        out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return
    env, mechanism, picked = load_trained(str(run), torch.device("cpu"))
    spec = NetworkSpec.from_mechanism(mechanism.double().eval())
    rng = np.random.default_rng(args.seed)
    low, high = spec.low, spec.high
    profiles = low + (high - low) * rng.random((args.profiles, spec.n, spec.m))
    index = np.repeat(np.arange(args.profiles), spec.n)
    bidders = np.tile(np.arange(spec.n), args.profiles)
    started = time.perf_counter()
    bound_times = []
    if args.bounds == "lp":  # time the LP tightening on its own, as the workers run it
        for k in range(len(bidders)):
            t0 = time.perf_counter()
            instance_bounds(spec, profiles[index[k]][None], bidders[k : k + 1], tighten="lp")
            bound_times.append(time.perf_counter() - t0)
    settings = SolverSettings(
        backend="highs", bounds=args.bounds, time_limit=args.time_limit, threads=1
    )
    results, unstable = solve_instances(
        spec,
        profiles[index],
        bidders,
        settings,
        starts=profiles[index, bidders],  # truthful report as the first incumbent
        workers=1,
    )
    wall = time.perf_counter() - started
    solve = [r.seconds for r in results]
    statuses = {s: sum(r.status == s for r in results) for s in {r.status for r in results}}
    report = {
        "benchmark": "certify_mip",
        "run": str(run),
        "env": env.name,
        "mechanism": picked.get("mechanism"),
        "hidden": [int(w.shape[0]) for w, _ in spec.trunk],
        "payment": spec.payment,
        "payment_clip": spec.clip,
        "profiles": args.profiles,
        "instances": len(results),
        "bounds": args.bounds,
        "time_limit_s": args.time_limit,
        "backend": "highs (highspy, model built once per bidder), 1 thread",
        "statuses": statuses,
        "solve_s": stats(solve),
        "bounds_s": stats(bound_times) if bound_times else None,
        "total_s": stats([a + b for a, b in zip(solve, bound_times, strict=True)])
        if bound_times
        else stats(solve),
        "nodes": stats([r.nodes for r in results]),
        "unstable_relus": stats([float(u) for u in unstable]),
        "wall_s": wall,
        "machine": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
