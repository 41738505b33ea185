"""Training throughput alone and beside busy processes (the default 2x2 step), JSON out.

Example:
    python scripts/bench_contention.py --out outputs/bench/contention_2x2.json

Times the default training step (``scripts/bench_train.py --env 2x2 --batch 128
--misreport-steps 25``: one PGD restart x 25 steps per iteration, as ``auctionlab train`` runs it)
in fresh processes, for two thread settings: ``train.yaml``'s ``threads`` (the default) and all
cores (``threads=null``, torch's own choice and the default before it). Each is timed alone and
beside ``--busy`` processes that spin (``while True: pass``), interleaved over ``--repeats``
rounds so that machine noise hits every variant alike. Throughput is iterations per second (the
median of each process's per-iteration times, then the median over rounds).

Reports, per setting, the throughput beside the busy processes as a fraction of its throughput
alone, and the default's throughput alone as a fraction of all cores' alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from auctionlab.conf import compose

BENCH_TRAIN = Path(__file__).with_name("bench_train.py")


def seconds_per_iteration(threads: int, args: argparse.Namespace) -> float:
    command = [
        sys.executable,
        str(BENCH_TRAIN),
        "--env",
        args.env,
        "--batch",
        str(args.batch),
        "--misreport-steps",
        str(args.misreport_steps),
        "--no-reference",
        "--threads",
        str(threads),
        "--iterations",
        str(args.iterations),
        "--warmup",
        "3",
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return float(json.loads(done.stdout)["seconds_per_iteration_median"])


def spin() -> subprocess.Popen:
    """A CPU-bound process: one core taken, as by another job on the machine."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="2x2")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--misreport-steps", type=int, default=25)
    parser.add_argument("--iterations", type=int, default=25, help="timed per process")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--busy", type=int, default=1, help="spinning processes beside it")
    parser.add_argument("--out", default="-", help="JSON file (default: stdout)")
    args = parser.parse_args()

    default_threads = compose("train", []).threads
    all_cores = torch.get_num_threads()  # what threads=null leaves torch with
    settings = {
        "default": int(default_threads) if default_threads is not None else all_cores,
        "all_cores": all_cores,
    }
    samples: dict[str, dict[str, list[float]]] = {s: {"alone": [], "busy": []} for s in settings}
    for round_ in range(args.repeats):
        for condition in ("alone", "busy"):
            spinners = []
            if condition == "busy":
                spinners = [spin() for _ in range(args.busy)]
                time.sleep(1.0)
            try:
                for name, threads in settings.items():
                    per_it = seconds_per_iteration(threads, args)
                    samples[name][condition].append(1.0 / per_it)
                    print(
                        f"round {round_ + 1}: {name} ({threads} threads) {condition}: "
                        f"{1.0 / per_it:.2f} it/s",
                        file=sys.stderr,
                    )
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()

    throughput = {
        name: {c: statistics.median(v) for c, v in by.items()} for name, by in samples.items()
    }
    result = {
        "benchmark": "train_contention",
        "env": args.env,
        "batch": args.batch,
        "misreport_steps": args.misreport_steps,
        "busy_processes": args.busy,
        "cores": os.cpu_count(),
        "threads": settings,
        "iterations_per_second": throughput,
        "samples": samples,
        "busy_over_alone": {n: t["busy"] / t["alone"] for n, t in throughput.items()},
        "default_alone_over_all_cores_alone": throughput["default"]["alone"]
        / throughput["all_cores"]["alone"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }
    text = json.dumps(result, indent=2)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
