"""Winner-determination benchmark ([lemma2026solver] §7.7): batched exact WDP and HiGHS latency.

* exact: ``ExactWDP`` on ``--exact-env`` (default 2x5, 31 bundles per bidder), instances per
  second over ``--exact-batch`` score profiles drawn from the env (best of ``--repeats``);
* highs: ``HighsWDP`` on ``--highs-env`` (default 3x10 with sampled bundles), per-instance
  latency p50/p95/p99 of both stages (stage 1 alone too), with and without the greedy warm
  start, node counts and gaps; and how often it agrees with enumeration where that is possible;
* highs_scaling: the same latency for larger sampled markets (``--scaling n x m x bundles``).

    python scripts/bench_wdp.py --threads 2 --out outputs/bench/wdp.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from auctionlab.components import build
from auctionlab.conf import compose
from auctionlab.envs.combinatorial import CombinatorialEnv
from auctionlab.solvers.wdp import ExactWDP, HighsWDP


def load_env(name: str):
    return build(compose("train", [f"env=combinatorial/{name}"]).env, "env")


def quantiles(x: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(x.double(), torch.tensor([0.5, 0.95, 0.99], dtype=torch.float64))
    return {"p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2]), "mean": float(x.mean())}


def bench_exact(env_name: str, batch: int, repeats: int) -> dict:
    env = load_env(env_name)
    wdp = ExactWDP(env.membership)
    scores = env.sample(batch, torch.Generator().manual_seed(0)).values
    wdp.solve(scores[:1024])  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        wdp.solve(scores)
        times.append(time.perf_counter() - began)
    best = min(times)
    return {
        "env": env_name,
        "bidders": env.n_bidders,
        "items": env.n_goods,
        "bundles_per_bidder": env.n_bundles,
        "feasible_allocations": wdp.size,
        "instances": batch,
        "seconds": times,
        "instances_per_second": batch / best,
        "mean_ties": float(wdp.solve(scores, count_ties=True).certificate["ties"].mean()),
    }


def bench_highs(env_name: str, instances: int, compare: int) -> dict:
    env = load_env(env_name)
    scores = env.sample(instances, torch.Generator().manual_seed(1)).values
    out = {
        "env": env_name,
        "bidders": env.n_bidders,
        "items": env.n_goods,
        "bundles_per_bidder": env.n_bundles,
        "instances": instances,
    }
    for warm in (True, False):
        wdp = HighsWDP(env.membership, warm_start=warm)
        wdp.solve(scores[:5])  # warm-up
        result = wdp.solve(scores)
        cert = result.certificate
        out["warm_start" if warm else "cold_start"] = {
            "latency_seconds": quantiles(cert["seconds"]),
            "stage1_latency_seconds": quantiles(cert["stage1_seconds"]),
            "nodes": quantiles(cert["nodes"]),
            "max_gap": float(cert["gap"].max()),
            "optimal_fraction": float(cert["optimal"].mean()),
        }
    if compare:
        try:
            exact = ExactWDP(env.membership)
        except Exception as err:  # noqa: BLE001 - too many allocations to enumerate
            out["agreement_with_enumeration"] = f"not enumerable: {err}"
        else:
            sub = scores[:compare]
            same = (exact.solve(sub).choice == HighsWDP(env.membership).solve(sub).choice).all(1)
            out["agreement_with_enumeration"] = {
                "instances": compare,
                "agree": int(same.sum()),
                "feasible_allocations": exact.size,
            }
    return out


def bench_scaling(sizes: list[str], instances: int) -> list[dict]:
    """HiGHS latency (both stages) vs market size: ``n x m x bundles`` sampled languages."""
    rows = []
    for size in sizes:
        n, m, extra = (int(v) for v in size.split("x"))
        env = CombinatorialEnv(
            f"{n}x{m}",
            n,
            m,
            language="sampled",
            bundles_per_bidder=extra,
            max_bundle_size=4,
            synergy=0.25,
            v_max=float(m),
            single_minded_prob=0.2,
        )
        scores = env.sample(instances, torch.Generator().manual_seed(2)).values
        wdp = HighsWDP(env.membership)
        wdp.solve(scores[:3])
        cert = wdp.solve(scores).certificate
        rows.append(
            {
                "bidders": n,
                "items": m,
                "bundles_per_bidder": env.n_bundles,
                "instances": instances,
                "latency_seconds": quantiles(cert["seconds"]),
                "stage1_latency_seconds": quantiles(cert["stage1_seconds"]),
                "nodes_mean": float(cert["nodes"].mean()),
                "optimal_fraction": float(cert["optimal"].mean()),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exact-env", default="ca_2x5")
    parser.add_argument("--exact-batch", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--highs-env", default="ca_3x10")
    parser.add_argument("--highs-instances", type=int, default=300)
    parser.add_argument("--compare", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--scaling",
        nargs="*",
        default=["3x10x10", "3x10x40", "5x20x20", "5x20x60", "10x30x30"],
        help="n x m x sampled-bundles-per-bidder sizes for the HiGHS scaling table",
    )
    parser.add_argument("--scaling-instances", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/wdp.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "exact": bench_exact(args.exact_env, args.exact_batch, args.repeats),
        "highs": bench_highs(args.highs_env, args.highs_instances, args.compare),
        "highs_scaling": bench_scaling(args.scaling, args.scaling_instances),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
