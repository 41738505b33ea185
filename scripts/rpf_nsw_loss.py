"""Where a learned allocation mechanism loses NSW against PF: on PF-exploitable profiles or not.

Draws fresh test profiles, attacks PF on each (PGD from random starts and the truth) and splits
the NSW the mechanism loses against PF between the profiles on which PF has a profitable
misreport (mean regret over agents above ``--exploitable``) and those on which it has none
(below ``--clean``). A loss carried by the exploitable profiles is the price of the regret the
mechanism removed; a loss on the clean ones is collateral.

    python scripts/rpf_nsw_loss.py --run outputs/runs/<date>/<time>_train --out loss.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.mechanisms.pf import ProportionalFairness
from auctionlab.utils import make_generator


def nsw_loss_split(
    mechanism,
    env,
    profiles: int,
    restarts: int,
    steps: int,
    seed: int = 7,
    exploitable: float = 1e-3,
    clean: float = 1e-5,
) -> dict:
    """NSW of ``mechanism`` over PF's and the share of the loss on PF-exploitable profiles.

    Args:
        mechanism: an allocation mechanism (``[B, n, 2m]`` reports -> outcome).
        env: its ``AllocationEnv``.
        profiles: test profiles drawn from eq. 17.
        restarts: PGD restarts on PF (the truthful start is added).
        steps: PGD steps per restart.
        seed: seed of the profiles (the attack uses ``seed + 1``).
        exploitable: PF regret (mean over agents) above which a profile counts as exploitable.
        clean: PF regret below which a profile counts as not exploitable.

    Returns:
        The NSW ratio, the fractions of exploitable / clean profiles, the shares of the NSW
        loss they and the rest carry (summing to 1; ``nan`` when nothing is lost), the ratio
        with the loss on clean profiles undone, and the budget of the attack on PF.

    """
    device = next(iter(mechanism.buffers())).device
    pf = ProportionalFairness(env).to(device)
    types = env.sample(profiles, make_generator(seed, device))
    with torch.no_grad():
        nsw = env.outcome_metrics(mechanism(types.values, types.public), types)["nsw"]
        pf_nsw = env.outcome_metrics(pf(types.values, types.public), types)["nsw"]
    attacker = PGDAttacker(
        restarts=restarts, steps=steps, step_size=0.05, final_step_size=0.002, include_truthful=True
    )
    result = attacker.attack(pf, env, types, make_generator(seed + 1, device), truthful=True)
    regret = result.gain.detach().mean(-1).double()  # [B] PF's regret, mean over agents
    nsw, pf_nsw = nsw.double(), pf_nsw.double()
    loss = pf_nsw - nsw  # per profile; negative where the mechanism beats PF
    total = float(loss.sum())
    hot, cold = regret > exploitable, regret < clean
    # Below the solvers' tolerance the split would be rounding noise.
    lost = total > 1e-5 * float(pf_nsw.sum())

    def share(mask: torch.Tensor) -> float:
        return float(loss[mask].sum()) / total if lost else float("nan")

    return {
        "nsw": float(nsw.mean()),
        "pf_nsw": float(pf_nsw.mean()),
        "nsw_ratio": float(nsw.mean() / pf_nsw.mean()),
        "exploitable_fraction": float(hot.double().mean()),
        "exploitable_loss_share": share(hot),
        "clean_fraction": float(cold.double().mean()),
        "clean_loss_share": share(cold),
        "other_loss_share": share(~hot & ~cold),
        "ratio_without_collateral_loss": float((nsw + loss * cold).mean() / pf_nsw.mean()),
        "profiles": float(profiles),
        "pf_attack_budget": dict(result.budget),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished allocation train run")
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    from auctionlab.runs import load_trained

    torch.set_num_threads(args.threads)
    env, mechanism, _ = load_trained(str(args.run), torch.device("cpu"))
    result = nsw_loss_split(mechanism, env, args.profiles, args.restarts, args.steps, args.seed)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
