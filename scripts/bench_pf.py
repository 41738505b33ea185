"""[zeng2025rpf] Table 2 on this machine: PF solver throughput, training and inference times, JSON.

Example:
    python scripts/bench_pf.py --env 10x3 --batch 128 --misreport-steps 5 --threads 2

Reports, for the allocation env ``--env``:

* ``pf_solves_per_second``: PF programs (4) solved per second at ``--solve-batch`` (1024 by
  default) by the solver backend everything else here runs with (``pf_backend``:
  ``--pf-backend``, ``auto`` by default: the compiled one where it builds), with the
  iteration count and the worst KKT residual of the timed batch; ``pf_solves_per_second_by_
  backend``: the same for each backend (``native``: the C solver, ``torch``: batched torch);
* ``train_seconds_per_iteration``: one training iteration (the one loop: PGD misreports with
  ``--misreport-steps`` steps, truthful + deviation forward, backward, primal-dual update) for
  ExS-Net, the plain softmax net and RPF-Net, and RPF-Net's ratio to ExS-Net ([zeng2025rpf]: 380.2);
* ``inference_seconds``: one forward pass on ``--batch`` profiles for every mechanism, and the
  ratios to ExS-Net ([zeng2025rpf]: PF 40.1, PA 310.0, RPF-Net 114.5);
* ``rpfnet_inference_by_batch``: RPF-Net's and ExS-Net's forward pass and their ratio at each
  ``--inference-batches`` size (the solver's cost per profile falls with the batch while its
  per-operation overhead is amortised).

Medians over ``--iterations`` timed repetitions after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from auctionlab.attackers import PGDAttacker
from auctionlab.envs.allocation import AllocationEnv, split_reports
from auctionlab.mechanisms import (
    ExSNet,
    PartialAllocation,
    PFPAMixture,
    ProportionalFairness,
    RPFNet,
    SoftmaxNet,
)
from auctionlab.solvers.pf import native as pf_native
from auctionlab.solvers.pf import solve_pf
from auctionlab.training import Trainer
from auctionlab.training.constraints import PrimalDual

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import time_iterations  # noqa: E402 - the shared timer of the benchmarks


def median_seconds(step, iterations: int, warmup: int) -> float:
    """Median wall time of ``step`` (the same timer as ``bench_train.py``)."""
    return statistics.median(time_iterations(step, iterations, warmup))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="10x3", help="NxM, e.g. 2x2 or 10x3")
    parser.add_argument("--batch", type=int, default=128, help="training / inference batch")
    parser.add_argument("--solve-batch", type=int, default=1024)
    parser.add_argument("--misreport-steps", type=int, default=5)
    parser.add_argument(
        "--inference-batches",
        type=int,
        nargs="*",
        default=[],
        help="batch sizes of the RPF-Net / ExS-Net inference sweep (none by default)",
    )
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--pf-backend",
        choices=pf_native.BACKENDS,
        default="auto",
        help="PF solver backend of every mechanism (auto: native where it builds)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    # Every solve inside the mechanisms reads the backend from the environment.
    previous = os.environ.get("AUCTIONLAB_PF_BACKEND")
    os.environ["AUCTIONLAB_PF_BACKEND"] = args.pf_backend
    try:
        return _run(args)
    finally:
        if previous is None:
            os.environ.pop("AUCTIONLAB_PF_BACKEND")
        else:
            os.environ["AUCTIONLAB_PF_BACKEND"] = previous


def _run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    n, m = (int(s) for s in args.env.split("x"))
    env = AllocationEnv(f"allocation/{args.env}", n, m)
    generator = torch.Generator().manual_seed(0)

    solve_types = env.sample(args.solve_batch, generator)
    v, x = split_reports(solve_types.values)
    b, w = solve_types.public["budgets"], solve_types.public["weights"]
    backend = "native" if pf_native.use_native(args.pf_backend, v.device) else "torch"
    # Both backends are timed; the figures at the top level are the ones everything else ran with.
    by_backend, solutions = {}, {}
    for name in ("native", "torch") if pf_native.library() is not None else ("torch",):

        def solve(name=name):
            solutions[name] = solve_pf(v, x, b, w, backend=name)

        by_backend[name] = args.solve_batch / median_seconds(solve, args.iterations, args.warmup)
    solution = solutions[backend]

    types = env.sample(args.batch, generator)
    torch.manual_seed(0)
    mechanisms = {
        "exsnet": ExSNet(env),
        "softmax_net": SoftmaxNet(env),
        "rpfnet": RPFNet(env),
        "pf": ProportionalFairness(env),
        "pa": PartialAllocation(env),
        "pf_pa_mixture": PFPAMixture(env),
    }

    def inference_seconds(mechanism, profiles) -> float:
        def forward():
            with torch.no_grad():
                mechanism(profiles.values, profiles.public)

        return median_seconds(forward, args.iterations, args.warmup)

    for mechanism in mechanisms.values():
        mechanism.eval()
    inference = {name: inference_seconds(mech, types) for name, mech in mechanisms.items()}
    by_batch = {}
    for size in args.inference_batches:
        sweep_types = env.sample(size, generator)
        seconds = {
            name: inference_seconds(mechanisms[name], sweep_types) for name in ("exsnet", "rpfnet")
        }
        by_batch[str(size)] = {**seconds, "ratio": seconds["rpfnet"] / seconds["exsnet"]}
    training = {}
    for name in ("exsnet", "softmax_net", "rpfnet"):
        attacker = PGDAttacker(restarts=1, steps=args.misreport_steps, step_size=0.1)
        trainer = Trainer(
            mechanisms[name],
            env,
            attacker,
            PrimalDual(),
            iterations=10**6,
            batch_size=args.batch,
            num_samples=args.batch * 10,
            progress=False,
        )
        training[name] = median_seconds(trainer.step, args.iterations, args.warmup)
    result = {
        "env": env.name,
        "batch": args.batch,
        "solve_batch": args.solve_batch,
        "misreport_steps": args.misreport_steps,
        "threads": args.threads,
        "pf_backend": backend,
        "pf_solves_per_second": by_backend[backend],
        "pf_solves_per_second_by_backend": by_backend,
        "pf_solve_batch_seconds": args.solve_batch / by_backend[backend],
        "pf_iterations": solution.iterations,
        "pf_max_kkt_residual": float(solution.kkt_residual.max()),
        "pf_all_converged": bool(solution.converged.all()),
        "train_seconds_per_iteration": training,
        "train_ratio_to_exsnet": {k: t / training["exsnet"] for k, t in training.items()},
        "inference_seconds": inference,
        "inference_ratio_to_exsnet": {k: t / inference["exsnet"] for k, t in inference.items()},
        "rpfnet_inference_by_batch": by_batch,
        "paper_ratios": {
            "train_rpfnet": 380.2,
            "infer_pf": 40.1,
            "infer_pa": 310.0,
            "infer_rpfnet": 114.5,
        },
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()
