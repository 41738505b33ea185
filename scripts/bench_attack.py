"""Stress-test cost and strength: attackers on the same held-out profiles of trained nets, JSON out.

Example:
    python scripts/bench_attack.py --run outputs/runs/<date>/<time>_train --attackers adaptive pgd
    python scripts/bench_attack.py --train --env 2x2 --iterations 2000 --profiles 200  # own net

Every attacker is built from ``evaluate``'s config (``attacker=<name> scale=<scale>``: the
budgets ``auctionlab evaluate`` uses) and attacks the profiles ``evaluate`` draws
(``profile_seed`` 12345) with the same attack seed. For each attacker the JSON holds its
budget, the deviation-steps it spent (utility evaluations of one deviating bidder), wall time,
and regret (mean, standard error, max, quantiles); against the reference attacker (``--reference``,
default ``pgd``): the ratios of mean and max regret, of deviation-steps and of wall time, and
the share of profiles whose largest regret (over bidders) reaches 0.95 of the reference's.
Where ``attacker=grid`` applies (report dimension <= 2), it runs last as the near-exact oracle,
seeded with every attacker's misreports, and each attacker's gap to it is reported.

``--save-gains`` keeps per-(profile, bidder) regrets in the JSON so that a long reference run
made once (``--attackers pgd``) can be compared later (``--baseline <that json>``). A reference
too long for one sitting runs in slices of the same profiles (``--slice 0:1000``, ``--slice
1000:2000``: separate processes, e.g. one per core, restarts drawn per slice); ``--baseline``
repeated with every slice's JSON joins them, and their wall times and deviation-steps add up.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from auctionlab.components import build
from auctionlab.conf import compose
from auctionlab.runs import load_trained, sha256_file
from auctionlab.utils import make_generator

PROFILE_SEED = 12345  # evaluate's held-out profiles
ATTACK_SEED = 0


def train(env: str, iterations: int, directory: Path) -> Path:
    """A RegretNet run with ``iterations`` iterations (the main job's recipe otherwise)."""
    exe = Path(sys.executable).with_name("auctionlab")
    args = [
        str(exe),
        "train",
        "mechanism=regretnet",
        f"env={env}",
        f"train.iterations={iterations}",
        "tracking=none",
        "progress=false",
        "threads=1",
        f"hydra.run.dir={directory}",
    ]
    subprocess.run(args, check=True)
    return directory


def build_attacker(name: str, scale: str, overrides: list[str]):
    """The attacker ``auctionlab evaluate attacker=<name> scale=<scale>`` would use."""
    cfg = compose("evaluate", [f"attacker={name}", f"scale={scale}", *overrides])
    return build(cfg.attacker, "attacker")


def summary(gain: torch.Tensor) -> dict[str, float]:
    """Regret statistics of ``[B, n]`` gains."""
    flat = gain.double().flatten()
    return {
        "regret_mean": float(flat.mean()),
        "regret_se": float(gain.double().mean(-1).std() / gain.shape[0] ** 0.5),
        "regret_max": float(flat.max()),
        "regret_q90": float(flat.quantile(0.9)),
        "regret_q99": float(flat.quantile(0.99)),
    }


def compare(gain: torch.Tensor, ref: torch.Tensor, entry: dict, ref_entry: dict) -> dict:
    """Ratios of ``gain`` ``[B, n]`` to the reference's, and per-profile coverage."""
    ratio = lambda a, b: a / b if b > 0 else float("nan")  # noqa: E731
    per_profile, ref_profile = gain.max(-1).values, ref.max(-1).values
    found = per_profile >= 0.95 * ref_profile - 1e-7
    return {
        "reference": ref_entry["attacker"],
        "regret_mean_ratio": ratio(entry["regret_mean"], ref_entry["regret_mean"]),
        "regret_max_ratio": ratio(entry["regret_max"], ref_entry["regret_max"]),
        "deviation_steps_ratio": ratio(entry["deviation_steps"], ref_entry["deviation_steps"]),
        "wall_ratio": ratio(entry["wall_s"], ref_entry["wall_s"]),
        "profiles_at_0.95_of_reference_max": float(found.double().mean()),
    }


def time_forwards(mechanism, env, types, repeats: int = 5) -> dict[str, float]:
    """Microseconds per deviation-step (forward + backward) of the variants worth keeping.

    ``float32`` is the attackers' path; ``float64`` is what a certificate's network runs in;
    ``compiled`` is ``torch.compile`` of the deviation utility (same shapes every call, after
    a warm-up call that compiles). ``chunk_<B>`` times the ``float32`` step at other chunk sizes.
    """
    import copy

    from auctionlab.attackers.base import deviation_utility
    from auctionlab.types import Types

    def step_time(fn, net, values, restarts: int) -> float:
        sub = Types(values, {k: v[: values.shape[0]] for k, v in types.public.items()})
        x = torch.rand(restarts, *values.shape, dtype=values.dtype, generator=torch.Generator())
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(net, env, sub, x).sum(), x)  # warm-up (and compile)
        start = time.perf_counter()
        for _ in range(repeats):
            (grad,) = torch.autograd.grad(fn(net, env, sub, x).sum(), x)
        per = (time.perf_counter() - start) / repeats
        return per / (restarts * values.shape[0] * values.shape[1]) * 1e6

    values = types.values[:100].float()
    out = {"float32": step_time(deviation_utility, mechanism, values, 32)}
    double = copy.deepcopy(mechanism).double()
    out["float64"] = step_time(deviation_utility, double, values.double(), 32)
    for chunk in (25, 400):
        out[f"chunk_{chunk}"] = step_time(
            deviation_utility, mechanism, types.values[:chunk].float(), 32
        )
    try:
        compiled = torch.compile(deviation_utility, dynamic=False)
        out["compiled"] = step_time(compiled, mechanism, values, 32)
    except Exception as err:  # noqa: BLE001 - a missing compiler is a result here, not a crash
        out["compiled_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return out


def bench_run(run: Path, args, device) -> dict:
    """Every attacker on one run's held-out profiles."""
    env, mechanism, choices = load_trained(str(run), device)
    mechanism.eval()
    types = env.sample(args.profiles, make_generator(PROFILE_SEED, device))
    start, stop = args.slice
    types = types[start:stop]
    out: dict = {
        "run": str(run),
        "checkpoint_sha256": sha256_file(run / "checkpoint.pt"),
        "env": env.name,
        "mechanism": choices.get("mechanism"),
        "profiles": args.profiles,
        "profile_seed": PROFILE_SEED,
        "slice": [start, stop],
        "attackers": {},
    }
    if args.forwards:
        out["deviation_step_us"] = time_forwards(mechanism, env, types)
        print(f"{run.name} deviation-step microseconds: {out['deviation_step_us']}", flush=True)
    gains: dict[str, torch.Tensor] = {}
    misreports: list[torch.Tensor] = []
    for name in args.attackers:
        attacker = build_attacker(name, args.scale, args.override)
        attacker.progress = args.progress
        start = time.perf_counter()
        result = attacker.attack(mechanism, env, types, make_generator(ATTACK_SEED, device))
        wall = time.perf_counter() - start
        gain = result.gain
        entry = {
            "attacker": name,
            "describe": attacker.describe(),
            "budget": result.budget,
            "wall_s": wall,
            "deviation_steps": float(result.budget.get("deviation_steps", float("nan"))),
            "deviation_steps_per_instance": float(result.budget.get("deviation_steps", 0.0))
            / gain.numel(),
            **summary(gain),
        }
        if args.save_gains:
            entry["gains"] = gain.tolist()
        out["attackers"][name] = entry
        gains[name] = gain
        misreports.append(result.misreports)
        print(
            f"{run.name} {name}: regret mean {entry['regret_mean']:.4e} max "
            f"{entry['regret_max']:.4e}, {entry['deviation_steps_per_instance']:.0f} "
            f"deviation-steps per instance, {wall:.1f} s",
            flush=True,
        )
    reference, ref_gain = None, None
    if args.baseline:
        reference, ref_gain = load_baseline(args, out, gains[args.attackers[0]].dtype)
        out["baseline"] = {k: v for k, v in reference.items() if k != "gains"}
    elif args.reference in gains:
        reference, ref_gain = out["attackers"][args.reference], gains[args.reference]
    if reference is not None:
        for name, gain in gains.items():
            if name != args.reference:
                out["attackers"][name]["vs_reference"] = compare(
                    gain, ref_gain, out["attackers"][name], reference
                )
    grid = build_attacker("grid", args.scale, args.override) if args.oracle and gains else None
    if grid is not None and grid.unsupported(env) is None:
        start = time.perf_counter()
        seeds = torch.stack(misreports)
        result = grid.attack(mechanism, env, types, make_generator(ATTACK_SEED, device), seeds)
        oracle = result.gain
        if ref_gain is not None:
            oracle = torch.maximum(oracle, ref_gain)  # the tightest lower bound known
        out["oracle"] = {
            "describe": grid.describe(),
            "wall_s": time.perf_counter() - start,
            "deviation_steps": float(result.budget.get("deviation_steps", float("nan"))),
            **summary(oracle),
        }
        for name, gain in [*gains.items(), *([(args.reference, ref_gain)] if reference else [])]:
            entry = out["attackers"].get(name) or out["baseline"]
            gap = (oracle - gain).clamp_min(0.0)
            entry["oracle_gap_mean_frac"] = float(gap.mean() / oracle.mean().clamp_min(1e-12))
            top = float(oracle.max())
            entry["oracle_gap_max_frac"] = (top - float(gain.max())) / top if top > 0 else 0.0
    return out


def load_baseline(args, out: dict, dtype) -> tuple[dict, torch.Tensor]:
    """The reference's saved gains ``[B, n]`` for this run's profiles, joined over slices.

    Raises:
        SystemExit: no saved reference for this checkpoint, or slices that do not cover this
            run's profiles exactly.

    """
    pieces = []
    for path in args.baseline:
        for r in json.loads(Path(path).read_text())["runs"]:
            same = r["checkpoint_sha256"] == out["checkpoint_sha256"]
            if same and r["profiles"] == args.profiles and args.reference in r["attackers"]:
                lo, hi = r.get("slice", [0, r["profiles"]])
                pieces.append((lo, hi, r["attackers"][args.reference], path))
    pieces.sort(key=lambda piece: piece[0])
    covered = [(lo, hi) for lo, hi, _, _ in pieces]
    start, stop = out["slice"]
    if (
        not pieces
        or pieces[0][0] != start
        or pieces[-1][1] != stop
        or any(a[1] != b[0] for a, b in zip(covered, covered[1:], strict=False))
    ):
        raise SystemExit(
            f"--baseline: the saved {args.reference} slices {covered} do not cover profiles "
            f"{start}:{stop} of this checkpoint exactly"
        )
    gain = torch.cat([torch.tensor(e["gains"], dtype=dtype) for _, _, e, _ in pieces])
    first = pieces[0][2]
    joined = {
        "attacker": first["attacker"],
        "describe": first["describe"],
        "budget": first["budget"],
        "slices": covered,
        "files": [path for *_, path in pieces],
        "wall_s": sum(e["wall_s"] for _, _, e, _ in pieces),
        "deviation_steps": sum(e["deviation_steps"] for _, _, e, _ in pieces),
        "deviation_steps_per_instance": sum(e["deviation_steps"] for _, _, e, _ in pieces)
        / gain.numel(),
        **summary(gain),
    }
    return joined, gain


def profile_slice(text: str) -> tuple[int, int] | None:
    """``START:STOP`` -> ``(START, STOP)``."""
    start, sep, stop = text.partition(":")
    if not sep or not start.isdigit() or not stop.isdigit() or int(start) >= int(stop):
        raise argparse.ArgumentTypeError(f"--slice {text}: expected START:STOP, e.g. 0:1000")
    return int(start), int(stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="a train run directory")
    parser.add_argument("--train", action="store_true", help="train a 2x2 RegretNet first")
    parser.add_argument("--env", default="2x2")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--profiles", type=int, default=2000)
    parser.add_argument("--attackers", nargs="*", default=["adaptive", "pgd"])
    parser.add_argument("--reference", default="pgd")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="a previous JSON with --save-gains of the reference (repeat for its slices)",
    )
    parser.add_argument(
        "--slice", type=profile_slice, help="attack profiles START:STOP of --profiles only"
    )
    parser.add_argument("--save-gains", action="store_true")
    parser.add_argument("--no-oracle", dest="oracle", action="store_false")
    parser.add_argument(
        "--forwards", action="store_true", help="also time float64 / compiled / chunk variants"
    )
    parser.add_argument("--scale", default="cpu")
    parser.add_argument(
        "--override", action="append", default=[], help="evaluate override, e.g. attacker.keep=0.5"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--progress", action="store_true", help="a progress bar over chunks")
    parser.add_argument("--out", default="outputs/bench/attack.json")
    args = parser.parse_args()
    if args.slice is None:
        args.slice = (0, args.profiles)
    elif args.slice[1] > args.profiles:
        parser.error(f"--slice {args.slice[0]}:{args.slice[1]}: beyond --profiles {args.profiles}")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = [Path(r) for r in args.run]
    if args.train:
        runs.append(train(args.env, args.iterations, out.parent / f"attack_{args.env}_train"))
    if not runs:
        parser.error("give --run <train run dir> (repeatable) or --train")
    result = {
        "benchmark": "attack",
        "threads": args.threads,
        "scale": args.scale,
        "overrides": args.override,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "runs": [bench_run(run, args, device) for run in runs],
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
