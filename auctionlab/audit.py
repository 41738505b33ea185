"""Audit trail of combinatorial mechanisms (seed 001 §8): log, replay, explain.

An audit log is JSON lines. The first line is the header: what reproduces the mechanism (the
env and mechanism configs, the trained run's checkpoint and its SHA-256, the tie rule, the
bundle language, library versions, the batch the outcomes were computed in). Every other line
is one instance: bids, scores, the allocation (bundle index and name per bidder), the payment
fractions ``alpha``, the payments, the solver certificate (objective, bound, gap, nodes, ties)
and a feasibility report, plus a blocking-set explanation for each bidder that won nothing.

Floats are written with Python's shortest round-trip ``repr`` of the float32 values the
mechanism computed, so ``replay`` can compare what it re-derives bit for bit.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from auctionlab.solvers.wdp import HighsWDP, choice_to_allocation, feasibility_violation

FORMAT = "auctionlab-ca-audit/1"


def _versions() -> dict[str, str]:
    out = {}
    for package in ("torch", "highspy", "auctionlab"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def priority_digest(mechanism) -> str:
    """SHA-256 of the tie-break priorities (float64 bytes): the tie rule in one string.

    The same for both backends: ``ExactWDP`` keeps them as an ``[n, k]`` tensor, ``HighsWDP``
    as a flat ``[n * k]`` numpy array.
    """
    priority = torch.as_tensor(mechanism.wdp.priority, dtype=torch.float64).reshape(-1)
    return hashlib.sha256(priority.numpy().tobytes()).hexdigest()


def header(mechanism, env, configs: dict[str, Any], batch: int, run: str | None) -> dict:
    """The log's first line."""
    checkpoint = None
    if run is not None:
        from auctionlab.runs import sha256_file

        path = Path(run) / "checkpoint.pt"
        checkpoint = {"run": str(Path(run).resolve()), "sha256": sha256_file(path)}
    return {
        "format": FORMAT,
        "mechanism_class": type(mechanism).__name__,
        "configs": configs,
        "checkpoint": checkpoint,
        "batch": batch,
        "bundles": env.bundle_names,
        "membership": env.membership.int().tolist(),
        "tie_rule": {
            "tie_tol": mechanism.tie_tol,
            "priority_seed": mechanism.priority_seed,
            "priority_sha256": priority_digest(mechanism),
            "rule": "among allocations within tie_tol of the best score total, the largest "
            "<priority, x> wins",
        },
        "backend": mechanism.backend,
        "mip_rel_gap": mechanism.mip_rel_gap,
        "versions": _versions(),
    }


def explain(choice: list[int], scores: Tensor, env, totals: Tensor | None, choices: Tensor | None):
    """Blocking sets of the bidders that won nothing, for one instance.

    For such a bidder ``i`` and its highest-scored bundle ``S``: the allocated bundles that
    overlap ``S`` (bidder, bundle, score, shared items) and, when the allocations are
    enumerated, the best score total of an allocation giving ``S`` to ``i`` against the chosen
    total (the margin by which ``S`` lost).

    Args:
        choice: ``[n]`` bundle index per bidder (-1 none).
        scores: ``[n, k]`` scores of the instance.
        env: gives the bundle language and names.
        totals: ``[A]`` score totals of the enumerated allocations (or ``None``).
        choices: ``[A, n]`` the enumerated allocations (or ``None``).

    Returns:
        One explanation per losing bidder.

    """
    names, members = env.bundle_names, env.membership
    chosen_total = sum(float(scores[i, s]) for i, s in enumerate(choice) if s >= 0)
    out = []
    for i, s_i in enumerate(choice):
        if s_i >= 0:
            continue
        wanted = int(scores[i].argmax())
        blockers = []
        for j, s_j in enumerate(choice):
            if s_j < 0:
                continue
            shared = (members[i, wanted] & members[j, s_j]).nonzero().flatten().tolist()
            if shared:
                blockers.append(
                    {
                        "bidder": j,
                        "bundle": names[j][s_j],
                        "score": float(scores[j, s_j]),
                        "shared_items": shared,
                    }
                )
        entry = {
            "bidder": i,
            "bundle": names[i][wanted],
            "score": float(scores[i, wanted]),
            "blocked_by": blockers,
            "chosen_total": chosen_total,
        }
        if totals is not None:
            with_it = choices[:, i] == wanted
            best_with = float(totals[with_it].max())
            entry["best_total_with_bundle"] = best_with
            entry["margin"] = chosen_total - best_with
        if not blockers:
            entry["reason"] = "its best score is not positive enough to raise the total"
        out.append(entry)
    return out


def records(mechanism, env, reports: Tensor) -> list[dict]:
    """One audit record per profile of ``[B, n, k]`` bids (outcomes computed in one batch)."""
    mechanism.eval()
    with torch.no_grad():
        outcome = mechanism(reports)
    result = mechanism.last_wdp
    scores = mechanism.winner_scores(reports)
    alpha = mechanism.payment_fractions(outcome)
    choice = result.choice
    k = env.n_bundles
    violation = feasibility_violation(choice_to_allocation(choice, k), env.membership)
    enumerated = mechanism.wdp.enumerates
    totals = mechanism.wdp.totals(scores) if enumerated else None
    ties = mechanism.wdp.solve(scores, count_ties=True).certificate["ties"] if enumerated else None
    rows = []
    for b in range(reports.shape[0]):
        row_choice = choice[b].tolist()
        certificate = {key: float(value[b]) for key, value in result.certificate.items()}
        certificate["objective"] = float(result.objective[b])
        if ties is not None:
            certificate["ties"] = float(ties[b])
        rows.append(
            {
                "instance": b,
                "bids": reports[b].tolist(),
                "scores": scores[b].tolist(),
                "allocation": row_choice,
                "bundles": [
                    env.bundle_names[i][s] if s >= 0 else None for i, s in enumerate(row_choice)
                ],
                "alpha": None if alpha is None else alpha[b].tolist(),
                "payments": outcome.payment[b].tolist(),
                "certificate": certificate,
                "feasible": bool(violation[b] == 0),
                "explanations": explain(
                    row_choice,
                    scores[b],
                    env,
                    None if totals is None else totals[b],
                    mechanism.wdp.choices if enumerated else None,
                ),
            }
        )
    return rows


def write_log(path: Path, head: dict, rows: list[dict]) -> Path:
    """Write the header and the records as JSON lines."""
    with open(path, "w") as handle:
        handle.write(json.dumps(head) + "\n")
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def read_log(path: Path) -> tuple[dict, list[dict]]:
    """Header and records of an audit log."""
    lines = Path(path).read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def replay(mechanism, env, head: dict, rows: list[dict]) -> dict:
    """Re-derive every logged allocation and payment; count every mismatch.

    Checks per instance: the bids rebuild the same float32 tensor; recomputed scores,
    allocation, alpha and payments equal the logged ones bit for bit; the allocation is
    feasible; ``p_i = alpha_i * b_iS*`` holds for the logged numbers; and an independent HiGHS
    solve of the logged scores (same tie rule) picks the logged allocation.

    Returns:
        Counts per check (``instances``, ``mismatch_*``) and the first mismatching instances.

    """
    bids = torch.tensor([r["bids"] for r in rows], dtype=torch.float32)
    fresh = {r["instance"]: r for r in records(mechanism, env, bids)}
    checks = {"scores": 0, "allocation": 0, "alpha": 0, "payments": 0, "feasible": 0}
    checks.update({"payment_identity": 0, "solver": 0, "bids": 0})
    first: dict[str, list[int]] = {key: [] for key in checks}

    def miss(key: str, instance: int) -> None:
        checks[key] += 1
        if len(first[key]) < 5:
            first[key].append(instance)

    logged_scores = torch.tensor([r["scores"] for r in rows], dtype=torch.float64)
    if mechanism.argmax_allocation:  # an independent solver on the logged scores
        independent = HighsWDP(
            env.membership, head["tie_rule"]["tie_tol"], head["tie_rule"]["priority_seed"]
        ).solve(logged_scores)
    for b, row in enumerate(rows):
        again = fresh[row["instance"]]
        if bids[b].tolist() != row["bids"]:
            miss("bids", row["instance"])
        for key in ("scores", "allocation", "alpha", "payments"):
            if again[key] != row[key]:
                miss(key, row["instance"])
        if not row["feasible"] or not again["feasible"]:
            miss("feasible", row["instance"])
        if row["alpha"] is not None:
            x = choice_to_allocation(torch.tensor(row["allocation"]), env.n_bundles)
            won = (x * bids[b]).sum(-1)
            identity = torch.tensor(row["alpha"], dtype=torch.float32) * won
            if identity.tolist() != row["payments"]:
                miss("payment_identity", row["instance"])
        if mechanism.argmax_allocation and independent.choice[b].tolist() != row["allocation"]:
            miss("solver", row["instance"])
    return {
        "instances": len(rows),
        **{f"mismatch_{key}": float(value) for key, value in checks.items()},
        "first_mismatches": {key: value for key, value in first.items() if value},
    }
