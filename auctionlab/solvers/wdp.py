"""Winner determination for combinatorial auctions: the same allocation from every backend.

The feasible set ``X`` ([lemma2026solver] eqs. 1-2): binary ``x[i, S]`` with every item in at most
one allocated bundle and every bidder holding at most one bundle of its language. A bundle
language is a membership tensor ``[n, k, m]`` (bidder ``i``'s bundle ``S`` holds item ``j``),
so bidders may have different (sampled) bundle sets.

Deterministic selection (part of the mechanism's specification, logged by the audit trail):
among the allocations whose score total is within ``tie_tol`` of the maximum, the one with the
largest *priority* ``<pi, x>`` is chosen, where ``pi [n, k]`` are fixed U[0, 1) numbers drawn
from ``priority_seed`` (float64). Backends:

* ``ExactWDP``: all feasible allocations precomputed once (``[A, n]``); per batch one matmul
  of scores against their indicator matrix, then the tie rule. Batched, small markets.
* ``HighsWDP``: the MIP built once in highspy; per instance only the objective changes. Stage 1
  maximises the scores (warm-started from the greedy allocation) and returns the solver's
  certificate (objective, dual bound, gap, time, nodes); stage 2 applies the tie rule by
  maximising the priority subject to ``<s, x> >= z1 - tie_tol``. ``mip_rel_gap > 0`` makes it an
  ``eta``-optimal solver ([lemma2026solver] §6.3); the realised gap is in the certificate.
* ``pyomo_model`` / ``export_lp``: the same program in Pyomo, written as a canonical LP file
  (symbolic names ``x(bidder<i>_items<j_l..>)``, fixed component order) for audits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from auctionlab.errors import ConfigError

#: Largest number of feasible allocations ``ExactWDP`` precomputes.
MAX_ALLOCATIONS = 2_000_000
#: Profiles per matmul block of ``ExactWDP`` (bounds the ``[B, A]`` score totals in memory).
BLOCK = 16384
GREEDY_RANKS = ("bid", "bid_per_item", "bid_per_sqrt_item")


def tie_priority(n: int, k: int, seed: int = 0) -> Tensor:
    """``[n, k]`` float64 tie-break priorities: U[0, 1) from a fixed seed (mechanism spec)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(n, k, generator=generator, dtype=torch.float64)


def bundle_masks(membership: Tensor) -> list[list[int]]:
    """Item bitmask of every bundle: ``[n][k]`` ints from a ``[n, k, m]`` membership."""
    weights = 1 << torch.arange(membership.shape[-1], dtype=torch.int64)
    return (membership.to(torch.int64) * weights).sum(-1).tolist()


def enumerate_allocations(membership: Tensor, limit: int = MAX_ALLOCATIONS) -> Tensor:
    """All feasible allocations in canonical order (depth first, "no bundle" first).

    Args:
        membership: ``[n, k, m]`` bool bundle language.
        limit: refuse (``ConfigError``) beyond this many allocations.

    Returns:
        ``[A, n]`` long: bidder ``i``'s bundle index, ``-1`` for none.

    """
    n = membership.shape[0]
    masks = bundle_masks(membership)
    nonempty = [[(s, mask) for s, mask in enumerate(row) if mask] for row in masks]
    out: list[tuple[int, ...]] = []
    choice = [-1] * n

    def visit(i: int, used: int) -> None:
        if len(out) > limit:
            return
        if i == n:
            out.append(tuple(choice))
            return
        choice[i] = -1
        visit(i + 1, used)
        for s, mask in nonempty[i]:
            if not mask & used:
                choice[i] = s
                visit(i + 1, used | mask)
        choice[i] = -1

    visit(0, 0)
    if len(out) > limit:
        raise ConfigError(
            f"mechanism.backend=enumeration: more than {limit} feasible allocations for "
            f"{n} bidders x {membership.shape[1]} bundles; use mechanism.backend=highs"
        )
    return torch.tensor(out, dtype=torch.long)


def choice_to_allocation(choice: Tensor, k: int) -> Tensor:
    """``[..., n]`` bundle indices (-1 none) -> ``[..., n, k]`` float one-hot allocation."""
    onehot = torch.nn.functional.one_hot(choice.clamp_min(0), k).to(torch.get_default_dtype())
    return onehot * (choice >= 0).unsqueeze(-1)


def feasibility_violation(allocation: Tensor, membership: Tensor) -> Tensor:
    """``[B]`` total excess over the constraints (0 exactly when feasible and integral).

    Args:
        allocation: ``[B, n, k]`` allocation (any values).
        membership: ``[n, k, m]`` bundle language.

    """
    x = allocation.double()
    per_item = torch.einsum("bnk,nkm->bm", x, membership.double())
    item_excess = (per_item - 1).clamp_min(0).sum(-1)
    bidder_excess = (x.sum(-1) - 1).clamp_min(0).sum(-1)
    integrality = (x - x.round()).abs().sum((-1, -2)) + (-x).clamp_min(0).sum((-1, -2))
    return item_excess + bidder_excess + integrality


def greedy_choice(
    key: Tensor, membership: Tensor, accept: Tensor | None = None, rank: str = "bid"
) -> Tensor:
    """Greedy winner determination, batched: best-ranked compatible bids first.

    Bids ``(i, S)`` are sorted by ``rank`` (ties: lower ``i * k + S`` first) and accepted when
    ``accept`` holds, bidder ``i`` holds nothing yet and ``S`` overlaps no accepted bundle.

    Args:
        key: ``[B, n, k]`` bids (or scores).
        membership: ``[n, k, m]`` bundle language.
        accept: ``[B, n, k]`` bool, which bids may win at all (default ``key > 0``).
        rank: ``bid``, ``bid_per_item`` or ``bid_per_sqrt_item`` (Lehmann et al.).

    Returns:
        ``[B, n]`` chosen bundle per bidder (``-1`` none).

    """
    if rank not in GREEDY_RANKS:
        raise ConfigError(f"rank={rank} is not valid; choose one of {', '.join(GREEDY_RANKS)}")
    B, n, k = key.shape
    membership = membership.to(key.device)
    size = membership.sum(-1).to(key.dtype).clamp_min(1)  # [n, k]
    ranked = {"bid": key, "bid_per_item": key / size, "bid_per_sqrt_item": key / size.sqrt()}
    order = torch.sort(ranked[rank].reshape(B, n * k), dim=1, descending=True, stable=True)[1]
    accept = key > 0 if accept is None else accept
    accept = accept.reshape(B, n * k)
    flat_members = membership.reshape(n * k, -1)
    used = torch.zeros(B, membership.shape[-1], dtype=torch.bool, device=key.device)
    choice = torch.full((B, n), -1, dtype=torch.long, device=key.device)
    rows = torch.arange(B, device=key.device)
    for t in range(n * k):  # over bid positions, batched over profiles
        pick = order[:, t]
        bidder, bundle = pick // k, pick % k
        items = flat_members[pick]  # [B, m]
        free = choice[rows, bidder] < 0
        ok = accept[rows, pick] & free & ~(items & used).any(-1)
        choice[rows, bidder] = torch.where(ok, bundle, choice[rows, bidder])
        used |= items & ok.unsqueeze(-1)
    return choice


@dataclass
class WDPResult:
    """Winner determination for a batch.

    Attributes:
        choice: ``[B, n]`` bundle index per bidder (``-1`` none).
        objective: ``[B]`` float64 score total of the chosen allocation.
        certificate: per-instance solver statistics (``bound``, ``gap``, ``seconds``,
            ``nodes``, ``ties``...), each a ``[B]`` float64 tensor.
        scores: ``[B, n, k]`` the scores that were solved (set by the solvers; ``None`` for
            rules that solve nothing, e.g. greedy on the bids).

    """

    choice: Tensor
    objective: Tensor
    certificate: dict[str, Tensor] = field(default_factory=dict)
    scores: Tensor | None = None

    def allocation(self, k: int) -> Tensor:
        """``[B, n, k]`` one-hot allocation."""
        return choice_to_allocation(self.choice, k)


class ExactWDP:
    """Batched exact winner determination by enumerating ``X`` once.

    Args:
        membership: ``[n, k, m]`` bool bundle language.
        tie_tol: allocations within this of the best total count as tied (absolute).
        priority_seed: seed of the tie-break priorities (``tie_priority``).
        limit: most allocations to enumerate.
        rel_gap: ``eta >= 0``: an ``eta``-optimal rule. Every allocation whose total is within
            ``max(tie_tol, eta * |best|)`` of the best is admissible and the tie rule (largest
            priority) picks among them, so the whole slack an ``eta``-optimal solver is allowed
            is used, deterministically (0: exact).

    """

    #: Whether the allocations are enumerated (yes: totals and tie counts are exact).
    enumerates = True

    def __init__(
        self,
        membership: Tensor,
        tie_tol: float = 1e-6,
        priority_seed: int = 0,
        limit: int = MAX_ALLOCATIONS,
        rel_gap: float = 0.0,
    ) -> None:
        if not (math.isfinite(tie_tol) and tie_tol >= 0):
            raise ConfigError(f"mechanism.tie_tol={tie_tol} must be >= 0 and finite")
        if not (math.isfinite(rel_gap) and 0 <= rel_gap < 1):
            raise ConfigError(f"mechanism.mip_rel_gap={rel_gap} must be in [0, 1)")
        self.membership = membership.bool().cpu()
        self.n, self.k, self.m = self.membership.shape
        self.tie_tol, self.rel_gap = float(tie_tol), float(rel_gap)
        self.choices = enumerate_allocations(self.membership, limit)  # [A, n]
        indicator = choice_to_allocation(self.choices, self.k).to(torch.float64)
        self.indicator = indicator.reshape(len(self.choices), self.n * self.k)  # [A, n*k]
        self.priority = tie_priority(self.n, self.k, priority_seed)
        self.allocation_priority = self.indicator @ self.priority.reshape(-1)  # [A]
        self._device_cache: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    @property
    def size(self) -> int:
        """Number of feasible allocations ``A``."""
        return len(self.choices)

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if device not in self._device_cache:
            self._device_cache[device] = (
                self.indicator.to(device),
                self.allocation_priority.to(device),
                self.choices.to(device),
            )
        return self._device_cache[device]

    def totals(self, scores: Tensor) -> Tensor:
        """``[B, A]`` float64 score total of every feasible allocation."""
        indicator, _, _ = self._on(scores.device)
        return scores.detach().to(torch.float64).reshape(-1, self.n * self.k) @ indicator.T

    def solve_index(
        self, scores: Tensor, count_ties: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Index into ``choices`` of the selected allocation, its total and the tie count.

        Args:
            scores: ``[B, n, k]`` scores (any float dtype; totals in float64).
            count_ties: also count the tied allocations (one more pass over ``[B, A]``).

        Returns:
            ``index [B]`` long, ``objective [B]`` float64, ``ties [B]`` long (number of
            allocations within ``tie_tol`` of the best, 1 when unique) or ``None``.

        """
        index, objective, _, ties = self._select(scores, count_ties)
        return index, objective, ties

    def _select(
        self, scores: Tensor, count_ties: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``solve_index`` plus the best total ``[B]`` (the bound of an ``eta``-optimal pick)."""
        _, priority, _ = self._on(scores.device)
        flat = scores.detach().reshape(-1, self.n * self.k)
        index, objective, bound, ties = [], [], [], []
        for lo in range(0, flat.shape[0], BLOCK):
            totals = self.totals(flat[lo : lo + BLOCK])
            best = totals.max(1, keepdim=True).values
            near = totals >= best - self.tie_tol
            # eta-optimal: the admissible set widens to the relative gap (tie rule unchanged)
            slack = (self.rel_gap * best.abs()).clamp_min(self.tie_tol)
            admissible = totals >= best - slack if self.rel_gap > 0 else near
            pick = torch.where(admissible, priority, -math.inf).argmax(1)
            index.append(pick)
            objective.append(totals.gather(1, pick[:, None]).squeeze(1))
            bound.append(best.squeeze(1))
            if count_ties:
                ties.append(near.sum(1))
        ties_out = torch.cat(ties) if ties else None
        return torch.cat(index), torch.cat(objective), torch.cat(bound), ties_out

    def solve(self, scores: Tensor, count_ties: bool = False) -> WDPResult:
        """Select the allocation for ``[B, n, k]`` scores (``count_ties``: for audits).

        The certificate's ``seconds`` is the batch's wall time divided by ``B`` (amortised:
        one matmul solves the whole batch).
        """
        _, _, choices = self._on(scores.device)
        began = time.perf_counter()
        index, objective, bound, ties = self._select(scores, count_ties)
        seconds = (time.perf_counter() - began) / max(len(index), 1)
        zero = torch.zeros_like(objective)
        # realised relative gap, measured against the best total (what eta bounds)
        gap = (bound - objective) / bound.abs().clamp_min(1e-12) if self.rel_gap else zero
        certificate = {
            "bound": bound,
            "gap": gap,
            "nodes": zero,
            "seconds": torch.full_like(objective, seconds),
        }
        if ties is not None:
            certificate["ties"] = ties.to(torch.float64)
        return WDPResult(choices[index], objective, certificate, scores.detach())


class HighsWDP:
    """The winner-determination MIP in HiGHS: built once, objective changed per instance.

    Args:
        membership: ``[n, k, m]`` bool bundle language.
        tie_tol: as in ``ExactWDP``.
        priority_seed: as in ``ExactWDP``.
        mip_rel_gap: HiGHS relative gap (0: prove optimality; > 0: an ``eta``-optimal solver).
        time_limit: seconds per stage per instance (``inf``: none).
        warm_start: start stage 1 from the greedy allocation on the scores.
        threads: HiGHS threads.

    """

    #: Whether the allocations are enumerated (one MIP per instance: no enumeration of allocations).
    enumerates = False

    def __init__(
        self,
        membership: Tensor,
        tie_tol: float = 1e-6,
        priority_seed: int = 0,
        mip_rel_gap: float = 0.0,
        time_limit: float = math.inf,
        warm_start: bool = True,
        threads: int = 1,
    ) -> None:
        import highspy

        if not (math.isfinite(mip_rel_gap) and mip_rel_gap >= 0):
            raise ConfigError(f"mechanism.mip_rel_gap={mip_rel_gap} must be >= 0")
        if not (math.isfinite(tie_tol) and tie_tol >= 0):
            raise ConfigError(f"mechanism.tie_tol={tie_tol} must be >= 0 and finite")
        self.membership = membership.bool().cpu()
        self.n, self.k, self.m = self.membership.shape
        self.tie_tol, self.mip_rel_gap, self.warm_start = float(tie_tol), mip_rel_gap, warm_start
        self.priority = tie_priority(self.n, self.k, priority_seed).numpy().reshape(-1)
        cols = self.n * self.k
        lp = highspy.HighsLp()
        lp.num_col_ = cols
        lp.num_row_ = self.m + self.n + 1  # items, bidders, the stage-2 objective row
        lp.col_cost_ = np.zeros(cols)
        lp.col_lower_ = np.zeros(cols)
        lp.col_upper_ = np.ones(cols)
        lp.row_lower_ = np.full(lp.num_row_, -highspy.kHighsInf)
        lp.row_upper_ = np.concatenate([np.ones(self.m + self.n), [highspy.kHighsInf]])
        starts, index, value = [0], [], []
        members = self.membership.reshape(cols, self.m).numpy()
        for c in range(cols):  # column c = bidder c // k, bundle c % k
            rows = [int(j) for j in np.flatnonzero(members[c])] + [self.m + c // self.k]
            rows.append(self.m + self.n)
            index += rows
            value += [1.0] * len(rows)
            starts.append(len(index))
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.asarray(starts, dtype=np.int32)
        lp.a_matrix_.index_ = np.asarray(index, dtype=np.int32)
        lp.a_matrix_.value_ = np.asarray(value, dtype=np.float64)
        lp.integrality_ = [highspy.HighsVarType.kInteger] * cols
        lp.sense_ = highspy.ObjSense.kMaximize
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", int(threads))
        h.setOptionValue("random_seed", 0)
        h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
        h.setOptionValue("mip_abs_gap", 0.0)
        h.setOptionValue("primal_feasibility_tolerance", 1e-9)
        h.setOptionValue("mip_feasibility_tolerance", 1e-9)
        if math.isfinite(time_limit):
            h.setOptionValue("time_limit", float(time_limit))
        h.passModel(lp)
        self.highs, self._highspy = h, highspy
        self._cols = np.arange(cols, dtype=np.int32)
        self._objective_row = self.m + self.n

    def _run(self, start: np.ndarray | None, cost: np.ndarray) -> tuple[np.ndarray, dict]:
        """Solve the current model; returns the 0/1 solution and the solver's statistics.

        HiGHS 1.16 can return the warm start as the solution vector while reporting the
        better incumbent's objective; the vector is therefore checked against the reported
        objective and, on a mismatch, the instance is solved again from scratch.
        """
        h, highspy = self.highs, self._highspy
        if start is not None:
            solution = highspy.HighsSolution()
            solution.col_value = list(start)
            solution.value_valid = True
            h.setSolution(solution)
        began = time.perf_counter()
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        x = np.asarray(h.getSolution().col_value).round()
        objective = float(info.objective_function_value)
        retried = abs(float(cost @ x) - objective) > 1e-9 * max(1.0, abs(objective))
        if retried:
            h.clearSolver()
            h.run()
            status, info = h.getModelStatus(), h.getInfo()
            x = np.asarray(h.getSolution().col_value).round()
        seconds = time.perf_counter() - began
        if status not in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kTimeLimit):
            raise RuntimeError(f"HiGHS winner determination: {h.modelStatusToString(status)}")
        stats = {
            "retried": float(retried),
            "objective": float(info.objective_function_value),
            "bound": float(info.mip_dual_bound),
            "gap": float(info.mip_gap),
            "nodes": float(info.mip_node_count),
            "seconds": seconds,
            "optimal": float(status == highspy.HighsModelStatus.kOptimal),
        }
        return x, stats

    def solve_one(self, scores: np.ndarray, start: np.ndarray | None = None) -> dict:
        """Both stages for one instance.

        Args:
            scores: ``[n * k]`` float64 scores.
            start: ``[n * k]`` 0/1 warm start for stage 1 (e.g. greedy), or ``None``.

        Returns:
            ``x`` (``[n * k]`` 0/1), stage-1 ``objective``, ``bound``, ``gap``, ``nodes``,
            ``optimal``, ``seconds`` (both stages), ``stage1_seconds`` and ``retried`` (solves
            repeated from scratch because HiGHS returned the warm start's vector).

        """
        h, cols, row = self.highs, len(self._cols), self._objective_row
        inf = self._highspy.kHighsInf
        h.changeColsCost(cols, self._cols, scores)
        h.changeRowBounds(row, -inf, inf)
        x1, stats = self._run(start if self.warm_start else None, scores)
        for c in range(cols):  # the stage-2 row carries this instance's scores
            h.changeCoeff(row, c, float(scores[c]))
        h.changeRowBounds(row, float(scores @ x1) - self.tie_tol, inf)
        h.changeColsCost(cols, self._cols, self.priority)
        x2, second = self._run(x1, self.priority)
        result = dict(stats, x=x2, stage1_seconds=stats["seconds"])
        result["retried"] = stats["retried"] + second["retried"]
        result["seconds"] = stats["seconds"] + second["seconds"]
        result["objective"] = float(scores @ x2)
        return result

    def solve(self, scores: Tensor) -> WDPResult:
        """Select the allocation for ``[B, n, k]`` scores, one MIP per instance."""
        flat = scores.detach().to(torch.float64).reshape(-1, self.n * self.k).cpu()
        starts = None
        if self.warm_start:
            greedy = greedy_choice(flat.view(-1, self.n, self.k), self.membership)
            starts = choice_to_allocation(greedy, self.k).reshape(-1, self.n * self.k).numpy()
        rows = [
            self.solve_one(flat[b].numpy(), None if starts is None else starts[b])
            for b in range(flat.shape[0])
        ]
        x = torch.as_tensor(np.stack([r["x"] for r in rows])).view(-1, self.n, self.k)
        has = x.sum(-1) > 0.5
        choice = torch.where(has, x.argmax(-1), torch.full_like(has, -1, dtype=torch.long))
        keys = ("bound", "gap", "nodes", "seconds", "stage1_seconds", "optimal", "retried")
        certificate = {
            key: torch.tensor([r[key] for r in rows], dtype=torch.float64) for key in keys
        }
        objective = torch.tensor([r["objective"] for r in rows], dtype=torch.float64)
        result = WDPResult(choice.to(scores.device), objective.to(scores.device), certificate)
        result.scores = scores.detach()
        return result


def pyomo_model(membership: Tensor, scores: Tensor, bundle_names: list[list[str]] | None = None):
    """The winner-determination program of one instance as a Pyomo ``ConcreteModel``.

    Args:
        membership: ``[n, k, m]`` bool bundle language.
        scores: ``[n, k]`` scores of the instance.
        bundle_names: ``[n][k]`` labels used in variable names (default: the bundle index).

    Returns:
        The model: binaries ``x[bidder<i>_items<S>]``, objective ``score`` (maximise), constraints
        ``item[j]`` (each item at most once) and ``bidder[i]`` (at most one bundle each).

    """
    import pyomo.environ as pyo

    members = membership.bool().cpu()
    n, k, m = members.shape
    values = scores.detach().to(torch.float64).cpu().tolist()
    names = bundle_names or [[str(s) for s in range(k)] for _ in range(n)]
    label = {(i, s): f"bidder{i}_items{names[i][s]}" for i in range(n) for s in range(k)}
    model = pyo.ConcreteModel(name="winner_determination")
    model.x = pyo.Var(list(label.values()), domain=pyo.Binary)
    model.score = pyo.Objective(
        expr=sum(values[i][s] * model.x[label[i, s]] for i, s in label), sense=pyo.maximize
    )
    model.item = pyo.Constraint(
        range(m),
        rule=lambda mdl, j: (
            sum(mdl.x[label[i, s]] for i, s in label if bool(members[i, s, j])) <= 1
        ),
    )
    model.bidder = pyo.Constraint(
        range(n), rule=lambda mdl, i: sum(mdl.x[label[i, s]] for s in range(k)) <= 1
    )
    return model


def export_lp(
    membership: Tensor, scores: Tensor, path: Path, bundle_names: list[list[str]] | None = None
) -> Path:
    """Write one instance's program as a canonical LP file (Pyomo's writer, symbolic labels).

    Components are created in a fixed order and objective coefficients are float64, so the
    same instance always gives the same file (byte for byte).
    """
    model = pyomo_model(membership, scores, bundle_names)
    path = Path(path)
    model.write(str(path), io_options={"symbolic_solver_labels": True})
    return path
