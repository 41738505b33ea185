"""Monte Carlo revenue of the classical mechanisms next to their closed forms (TARGETS.md).

Example:
    python scripts/closed_form_table.py --samples 1000000 --out outputs/closed_form.json

Prints a markdown table (estimate, standard error, target, difference in SEs) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from auctionlab.conf import CONF_DIR

CONF = CONF_DIR

#: (mechanism, env, closed-form revenue, where the number comes from)
ROWS = [
    ("vcg", "2x2", 2 / 3, "m(n-1)/(n+1)"),
    ("vcg", "2x3", 1.0, "m(n-1)/(n+1)"),
    ("vcg", "2x5", 5 / 3, "m(n-1)/(n+1)"),
    ("vcg", "3x10", 5.0, "m(n-1)/(n+1)"),
    ("vcg", "5x10", 20 / 3, "m(n-1)/(n+1)"),
    ("myerson_itemwise", "2x2", 0.8333, "TARGETS"),
    ("myerson_itemwise", "2x3", 1.25, "TARGETS"),
    ("myerson_itemwise", "2x5", 2.0833, "TARGETS"),
    ("myerson_itemwise", "3x10", 5.3125, "TARGETS"),
    ("myerson_itemwise", "5x10", 6.7188, "TARGETS"),
    ("bundled_myerson", "2x2", 0.8392, "TARGETS"),
    ("bundled_myerson", "2x3", 1.2776, "TARGETS"),
    ("bundled_myerson", "2x5", 2.1885, "TARGETS"),
    ("bundled_myerson", "3x10", 5.0027, "TARGETS"),
    ("bundled_myerson", "5x10", 5.4560, "TARGETS"),
    ("myerson", "3x1", 0.5313, "(n-1)/(n+1)+2^-n/(n+1)"),
    ("myerson", "5x1", 0.6719, "(n-1)/(n+1)+2^-n/(n+1)"),
    ("myerson", "3x1_exp", 2.7517, "closed form (TARGETS: 2.749)"),
    ("myerson", "3x1_irregular", 2.3749, "ironed closed form (TARGETS: 2.380)"),
    ("second_price", "3x1", 0.5, "(n-1)/(n+1)"),
    ("manelli_vincent", "1x2", 0.5492, "MV menu (TARGETS: 0.549)"),
    ("pavlov", "1x2_unit", 2 / (3 * math.sqrt(3)), "1/sqrt(3) posted price"),
]


def build(mechanism: str, env_name: str):
    env = instantiate(OmegaConf.load(CONF / "env" / f"{env_name}.yaml"))
    cfg = OmegaConf.load(CONF / "mechanism" / f"{mechanism}.yaml")
    return env, instantiate(cfg, env=env).eval()


def revenue(mechanism, env, samples: int, seed: int, chunk: int = 100_000) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(seed)
    total, total_sq, count = 0.0, 0.0, 0
    with torch.no_grad():
        for lo in range(0, samples, chunk):
            values = env.sample(min(chunk, samples - lo), generator).values
            r = mechanism(values).payment.sum(-1).double()
            total, total_sq, count = (
                total + float(r.sum()),
                total_sq + float((r * r).sum()),
                count + r.numel(),
            )
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return mean, math.sqrt(var / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/closed_form.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    print(
        f"| mechanism | env | MC revenue ({args.samples} profiles) | SE | closed form | diff/SE |"
    )
    print("|---|---|---|---|---|---|")
    for mechanism_name, env_name, target, source in ROWS:
        env, mechanism = build(mechanism_name, env_name)
        mean, se = revenue(mechanism, env, args.samples, args.seed)
        z = (mean - target) / se
        results.append(
            {
                "mechanism": mechanism_name,
                "env": env_name,
                "revenue": mean,
                "se": se,
                "target": target,
                "source": source,
                "z": z,
                "samples": args.samples,
            }
        )
        print(
            f"| {mechanism_name} | {env_name} | {mean:.4f} | {se:.4f} | {target:.4f} ({source}) "
            f"| {z:+.1f} |",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
