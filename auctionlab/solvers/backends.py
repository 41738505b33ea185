"""Solver backends for the best-misreport program of ``mip_encoding``.

* ``highs`` (fast path): highspy, one model per (network, bidder) passed once with
  ``passModel``; each instance only changes column / row bounds, the big-M coefficients and the
  objective. Mixed-integer *linear* programs only.
* ``pyomo`` (readable reference): the same program written constraint by constraint in Pyomo
  (``pyomo_model``) and solved by ``SolverFactory('highs')`` of ``pyomo.contrib.solver``.
* ``scip`` (optional): the Pyomo model with its bilinear payment constraints, solved to global
  optimality by SCIP through pyscipopt (``pip install 'auctionlab[scip]'``). Needed for the
  fractional IR payment and the ``ir`` payment clip.

Every backend returns a ``SolveResult`` whose ``status`` is one of ``STATUSES``: only
``optimal`` is a certificate; ``unknown`` (a limit was hit) carries the interval
``[objective, bound]``; ``infeasible``, ``unbounded`` and ``error`` carry no number.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass

import numpy as np

from auctionlab.errors import ConfigError
from auctionlab.solvers.mip_encoding import BidderEncoding, InstanceBounds, NetworkSpec

BACKENDS = ("auto", "highs", "pyomo", "scip")
STATUSES = ("optimal", "unknown", "infeasible", "unbounded", "error", "numerical", "unsupported")
NAN = float("nan")


@dataclass
class SolveResult:
    """One solve of one (profile, bidder) instance.

    Attributes:
        status: ``optimal`` | ``unknown`` | ``infeasible`` | ``unbounded`` | ``error``.
        solver_status: the solver's own words.
        objective: best utility found (incumbent), ``nan`` without one.
        bound: the solver's dual (upper) bound on the utility, ``nan`` without one.
        gap: relative gap reported by the solver.
        seconds: wall time of the solve.
        nodes: branch-and-bound nodes.
        report: ``[m]`` the incumbent's report for the bidder (``None`` without one).
        allocation: ``[m]`` the bidder's allocation in the program at that report.
        payment: the bidder's payment in the program at that report.

    """

    status: str
    solver_status: str
    objective: float = NAN
    bound: float = NAN
    gap: float = NAN
    seconds: float = NAN
    nodes: float = NAN
    report: np.ndarray | None = None
    allocation: np.ndarray | None = None
    payment: float = NAN


def scip_available() -> bool:
    """Whether pyscipopt (the SCIP backend) is importable."""
    return importlib.util.find_spec("pyscipopt") is not None


def resolve_backend(backend: str, spec: NetworkSpec) -> str:
    """``auto`` -> ``highs`` for a linear program, ``scip`` for a bilinear one."""
    if backend != "auto":
        return backend
    return "scip" if spec.bilinear else "highs"


def check_backend(backend: str, spec: NetworkSpec | None = None) -> None:
    """Raise ``ConfigError`` when ``backend`` cannot solve ``spec``'s program here."""
    if backend == "auto" and spec is not None:
        backend = resolve_backend(backend, spec)
    if backend not in BACKENDS:
        raise ConfigError(
            f"certifier.backend={backend} is not valid; choose one of {', '.join(BACKENDS)}"
        )
    if backend == "scip" and not scip_available():
        raise ConfigError(
            "certifier.backend=scip needs pyscipopt, which is not installed "
            "(pip install 'auctionlab[scip]' or pip install pyscipopt)"
        )
    if spec is not None and spec.bilinear and backend != "scip":
        what = "payment=fractional" if spec.payment == "fractional" else "payment_clip=ir"
        hint = "" if scip_available() else " (pyscipopt is not installed: pip install pyscipopt)"
        raise ConfigError(
            f"certifier.backend={backend} solves mixed-integer linear programs only; this "
            f"network's {what} makes the program bilinear: use certifier.backend=scip{hint}"
        )


def make_backend(
    name: str, spec: NetworkSpec, time_limit: float, mip_gap: float, threads: int = 1
) -> HighsBackend | PyomoBackend:
    """The backend ``name`` for ``spec`` (checked with ``check_backend``)."""
    name = resolve_backend(name, spec)
    check_backend(name, spec)
    if name == "highs":
        return HighsBackend(spec, time_limit, mip_gap, threads)
    return PyomoBackend(
        spec, time_limit, mip_gap, threads, solver="scip" if name == "scip" else "highs"
    )


class HighsBackend:
    """highspy, model built once per bidder; per instance only bounds, big-M and costs change.

    Args:
        spec: the network.
        time_limit: seconds per solve (``inf`` for none).
        mip_gap: relative optimality gap at which a solve counts as optimal.
        threads: HiGHS threads (1: parallelism comes from worker processes).

    """

    name = "highs"

    def __init__(
        self, spec: NetworkSpec, time_limit: float, mip_gap: float, threads: int = 1
    ) -> None:
        check_backend("highs", spec)
        self.spec, self.time_limit, self.mip_gap, self.threads = spec, time_limit, mip_gap, threads
        self.encodings: dict[int, BidderEncoding] = {}
        self.models: dict[int, object] = {}

    def _model(self, bidder: int):
        import highspy

        if bidder in self.models:
            return self.models[bidder], self.encodings[bidder]
        enc = BidderEncoding.build(self.spec, bidder)
        n_col, n_row = len(enc.names), len(enc.rows)
        starts, index, value = [0], [], []
        by_col: list[list[tuple[int, float]]] = [[] for _ in range(n_col)]
        for r, (_, _, coefs) in enumerate(enc.rows):
            for c, v in coefs.items():
                by_col[c].append((r, 1.0 if v == 0.0 else v))  # placeholders set per instance
        for entries in by_col:
            for r, v in entries:
                index.append(r)
                value.append(v)
            starts.append(len(index))
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = n_col, n_row
        lp.col_cost_ = np.zeros(n_col)
        lp.col_lower_ = np.array(enc.col_lb, dtype=np.float64)
        lp.col_upper_ = np.array(enc.col_ub, dtype=np.float64)
        lp.row_lower_ = np.array([r[0] for r in enc.rows], dtype=np.float64)
        lp.row_upper_ = np.array([r[1] for r in enc.rows], dtype=np.float64)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
        lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
        lp.a_matrix_.value_ = np.array(value, dtype=np.float64)
        lp.integrality_ = [
            highspy.HighsVarType.kInteger if flag else highspy.HighsVarType.kContinuous
            for flag in enc.integer
        ]
        lp.sense_ = highspy.ObjSense.kMaximize
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", int(self.threads))
        h.setOptionValue("mip_rel_gap", float(self.mip_gap))
        h.setOptionValue("mip_abs_gap", 1e-9)
        h.setOptionValue("mip_feasibility_tolerance", 1e-7)
        h.setOptionValue("primal_feasibility_tolerance", 1e-8)
        h.setOptionValue("random_seed", 0)
        if math.isfinite(self.time_limit):
            h.setOptionValue("time_limit", float(self.time_limit))
        status = h.passModel(lp)
        if status == highspy.HighsStatus.kError:
            raise RuntimeError(f"HiGHS rejected the model of bidder {bidder}")
        self.models[bidder], self.encodings[bidder] = h, enc
        return h, enc

    def solve(
        self,
        profile: np.ndarray,
        bidder: int,
        bounds: InstanceBounds,
        start_report: np.ndarray | None = None,
    ) -> SolveResult:
        """Best misreport of ``bidder`` at ``profile`` (``start_report``: a MIP start)."""
        import highspy

        h, enc = self._model(bidder)
        data = enc.instance(profile, bounds)
        n_col, n_row = len(data.col_lb), len(data.row_lb)
        h.changeColsBounds(n_col, np.arange(n_col, dtype=np.int32), data.col_lb, data.col_ub)
        h.changeRowsBounds(n_row, np.arange(n_row, dtype=np.int32), data.row_lb, data.row_ub)
        for r, c, v in zip(data.coef_rows, data.coef_cols, data.coef_vals, strict=True):
            h.changeCoeff(int(r), int(c), float(v))
        h.changeColsCost(n_col, np.arange(n_col, dtype=np.int32), data.cost)
        if start_report is not None:
            solution = highspy.HighsSolution()
            solution.col_value = list(enc.assignment(profile, np.asarray(start_report)))
            solution.value_valid = True
            h.setSolution(solution)
        started = time.perf_counter()
        h.run()
        seconds = time.perf_counter() - started
        model_status = h.getModelStatus()
        info = h.getInfo()
        words = h.modelStatusToString(model_status)
        S = highspy.HighsModelStatus
        if model_status == S.kOptimal:
            status = "optimal"
        elif model_status in (
            S.kTimeLimit,
            S.kIterationLimit,
            S.kSolutionLimit,
            S.kInterrupt,
            S.kObjectiveBound,
            S.kObjectiveTarget,
        ):
            status = "unknown"
        elif model_status == S.kInfeasible:
            status = "infeasible"
        elif model_status in (S.kUnbounded, S.kUnboundedOrInfeasible):
            status = "unbounded"
        else:
            status = "error"
        has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
        result = SolveResult(
            status=status,
            solver_status=words,
            objective=float(info.objective_function_value) if has_solution else NAN,
            bound=float(info.mip_dual_bound) if status in ("optimal", "unknown") else NAN,
            gap=float(info.mip_gap) if status in ("optimal", "unknown") else NAN,
            seconds=seconds,
            nodes=float(info.mip_node_count),
        )
        if has_solution and status in ("optimal", "unknown"):
            decoded = enc.decode(np.asarray(h.getSolution().col_value))
            result.report = decoded["report"]
            result.allocation = decoded["allocation"]
            result.payment = float(decoded["payment"])
        return result


def pyomo_model(spec: NetworkSpec, profile: np.ndarray, bidder: int, bounds: InstanceBounds):
    """The best-misreport program of ``(profile, bidder)`` as a readable Pyomo model.

    Same program as ``BidderEncoding`` (see that module's docstring for the math); stable
    ReLUs are written as the linear pieces they are, without a binary.

    Returns:
        A ``ConcreteModel`` with ``b`` (bidder's report), ``a`` (allocation incl. dummy,
        ``[k, j]``) and ``p`` (the bidder's payment) among its components.

    """
    import pyomo.environ as pyo

    n, m, K, i = spec.n, spec.m, spec.n + 1, bidder
    model = pyo.ConcreteModel(name=f"best misreport of bidder {i}")
    model.b = pyo.Var(range(m), bounds=lambda _, j: (spec.low[i, j], spec.high[i, j]))
    reports = [[model.b[j] if k == i else float(profile[k, j]) for j in range(m)] for k in range(n)]
    h = [r for row in reports for r in row]  # layer input, bidder-major

    def relu_layer(name: str, pre_exprs, lower, upper):
        """Y = max(z, 0) with z in [lower, upper]: eq. (4); stable units without a binary."""
        units = range(len(pre_exprs))
        block = pyo.Block()
        model.add_component(name, block)
        block.z = pyo.Var(units, bounds=lambda _, r: (lower[r], upper[r]))
        block.y = pyo.Var(units, bounds=lambda _, r: (0.0, max(upper[r], 0.0)))
        block.affine = pyo.Constraint(units, rule=lambda _, r: block.z[r] == pre_exprs[r])
        unstable = [r for r in units if lower[r] < 0 < upper[r]]
        block.d = pyo.Var(unstable, domain=pyo.Binary)
        block.relu = pyo.ConstraintList()
        for r in units:
            if upper[r] <= 0:  # always off
                block.relu.add(block.y[r] == 0)
            elif lower[r] >= 0:  # always on
                block.relu.add(block.y[r] == block.z[r])
            else:
                block.relu.add(block.y[r] >= block.z[r])
                block.relu.add(block.y[r] <= upper[r] * block.d[r])
                block.relu.add(block.y[r] <= block.z[r] - lower[r] * (1 - block.d[r]))
        return [block.y[r] for r in units]

    for layer, (weight, bias) in enumerate(spec.trunk):
        pre = [
            sum(float(weight[r, c]) * h[c] for c in range(len(h)) if weight[r, c] != 0)
            + float(bias[r])
            for r in range(weight.shape[0])
        ]
        lb = bounds.trunk[layer]
        h = relu_layer(f"layer{layer}", pre, lb.lower, lb.upper)

    head_lo, head_hi = bounds.head.lower, bounds.head.upper
    W, c = spec.alloc
    model.x = pyo.Var(
        range(K), range(m), bounds=lambda _, k, j: (head_lo[k * m + j], head_hi[k * m + j])
    )
    model.logits = pyo.Constraint(
        range(K),
        range(m),
        rule=lambda _, k, j: (
            model.x[k, j]
            == sum(float(W[k * m + j, r]) * h[r] for r in range(len(h))) + float(c[k * m + j])
        ),
    )
    # sparsemax by KKT (eq. 6): a = x - tau + s, sum_k a = 1, a, s >= 0, a_k * s_k = 0
    tau_lo = [max(head_lo[k * m + j] for k in range(K)) - 1.0 for j in range(m)]
    tau_hi = [max(head_hi[k * m + j] for k in range(K)) - 1.0 / K for j in range(m)]
    big = {(k, j): max(tau_hi[j] - head_lo[k * m + j], 0.0) for k in range(K) for j in range(m)}
    model.tau = pyo.Var(range(m), bounds=lambda _, j: (tau_lo[j], tau_hi[j]))
    model.a = pyo.Var(range(K), range(m), bounds=(0.0, 1.0))
    model.s = pyo.Var(range(K), range(m), bounds=lambda _, k, j: (0.0, big[k, j]))
    model.sigma = pyo.Var(range(K), range(m), domain=pyo.Binary)  # 1: k in the support
    model.stationarity = pyo.Constraint(
        range(K),
        range(m),
        rule=lambda _, k, j: model.a[k, j] == model.x[k, j] - model.tau[j] + model.s[k, j],
    )
    model.simplex = pyo.Constraint(
        range(m), rule=lambda _, j: sum(model.a[k, j] for k in range(K)) == 1
    )
    model.support = pyo.Constraint(
        range(K), range(m), rule=lambda _, k, j: model.a[k, j] <= model.sigma[k, j]
    )
    model.slack = pyo.Constraint(
        range(K),
        range(m),
        rule=lambda _, k, j: model.s[k, j] <= big[k, j] * (1 - model.sigma[k, j]),
    )

    q_lo, q_hi = float(head_lo[K * m + i]), float(head_hi[K * m + i])
    Wp, cp = spec.pay
    model.q = pyo.Var(bounds=(q_lo, q_hi))
    model.q_def = pyo.Constraint(
        expr=model.q == sum(float(Wp[i, r]) * h[r] for r in range(len(h))) + float(cp[i])
    )
    bid_value = sum(model.a[i, j] * model.b[j] for j in range(m))  # bilinear
    if spec.payment == "fractional":  # p = clamp(q / 6 + 1/2, 0, 1) * sum_j a_ij b_ij
        t = [model.q / 6.0 + 0.5, model.q / 6.0 - 0.5]
        lo = [q_lo / 6.0 + 0.5, q_lo / 6.0 - 0.5]
        hi = [q_hi / 6.0 + 0.5, q_hi / 6.0 - 0.5]
        g1, g2 = relu_layer("fraction", t, lo, hi)
        model.p = pyo.Var(bounds=(0.0, float(spec.high[i].sum())))
        model.pay = pyo.Constraint(expr=model.p == (g1 - g2) * bid_value)
    elif spec.clip == "none":
        model.p = pyo.Expression(expr=model.q)
    else:
        (r,) = relu_layer("clip", [model.q], [q_lo], [q_hi])
        if spec.clip == "nonneg":
            model.p = pyo.Expression(expr=r)
        else:  # p = min(max(q, 0), sum_j a_ij b_ij)
            big_p = max(q_hi, 0.0) + float(spec.high[i].sum())
            model.p = pyo.Var(bounds=(0.0, max(q_hi, 0.0)))
            model.beta = pyo.Var(domain=pyo.Binary)
            model.min_r = pyo.Constraint(expr=model.p <= r)
            model.min_y = pyo.Constraint(expr=model.p <= bid_value)
            model.min_r_tight = pyo.Constraint(expr=model.p >= r - big_p * model.beta)
            model.min_y_tight = pyo.Constraint(expr=model.p >= bid_value - big_p * (1 - model.beta))
    model.utility = pyo.Objective(
        expr=sum(float(profile[i, j]) * model.a[i, j] for j in range(m)) - model.p,
        sense=pyo.maximize,
    )
    return model


class PyomoBackend:
    """The readable reference: ``pyomo_model`` solved by HiGHS (or SCIP) via pyomo.contrib.solver.

    Args:
        spec: the network.
        time_limit: seconds per solve (``inf`` for none).
        mip_gap: relative optimality gap.
        threads: solver threads.
        solver: ``highs`` or ``scip`` (pyscipopt).

    """

    def __init__(
        self,
        spec: NetworkSpec,
        time_limit: float,
        mip_gap: float,
        threads: int = 1,
        solver: str = "highs",
    ) -> None:
        check_backend("scip" if solver == "scip" else "pyomo", spec)
        self.spec, self.time_limit, self.mip_gap, self.threads = spec, time_limit, mip_gap, threads
        self.solver = solver
        self.name = "scip" if solver == "scip" else "pyomo"

    def solve(
        self,
        profile: np.ndarray,
        bidder: int,
        bounds: InstanceBounds,
        start_report: np.ndarray | None = None,
    ) -> SolveResult:
        """Best misreport of ``bidder`` at ``profile`` (no MIP start here)."""
        import pyomo.environ as pyo
        from pyomo.contrib.solver.common.factory import SolverFactory
        from pyomo.contrib.solver.common.results import SolutionStatus, TerminationCondition

        model = pyomo_model(self.spec, profile, bidder, bounds)
        solver = SolverFactory("scip_direct" if self.solver == "scip" else "highs")
        options = {
            "threads": int(self.threads),
            "rel_gap": float(self.mip_gap),
            "load_solutions": False,
            "raise_exception_on_nonoptimal_result": False,
        }
        if math.isfinite(self.time_limit):
            options["time_limit"] = float(self.time_limit)
        started = time.perf_counter()
        try:
            results = solver.solve(model, **options)
        except Exception as err:  # noqa: BLE001 - surfaced per instance, never a number
            return SolveResult(
                "error", f"{type(err).__name__}: {err}", seconds=time.perf_counter() - started
            )
        seconds = time.perf_counter() - started
        term = results.termination_condition
        T = TerminationCondition
        if term == T.convergenceCriteriaSatisfied:
            status = "optimal"
        elif term in (T.maxTimeLimit, T.iterationLimit, T.objectiveLimit, T.interrupted):
            status = "unknown"
        elif term == T.provenInfeasible:
            status = "infeasible"
        elif term in (T.unbounded, T.infeasibleOrUnbounded):
            status = "unbounded"
        else:
            status = "error"
        has_solution = results.solution_status in (SolutionStatus.feasible, SolutionStatus.optimal)
        result = SolveResult(
            status=status,
            solver_status=str(term.name),
            objective=float(results.incumbent_objective) if has_solution else NAN,
            bound=float(results.objective_bound)
            if results.objective_bound is not None and status in ("optimal", "unknown")
            else NAN,
            seconds=seconds,
        )
        if has_solution and status in ("optimal", "unknown"):
            results.solution_loader.load_vars()
            i, m = bidder, self.spec.m
            result.report = np.array([pyo.value(model.b[j]) for j in range(m)])
            result.allocation = np.array([pyo.value(model.a[i, j]) for j in range(m)])
            result.payment = float(pyo.value(model.p))
            if math.isfinite(result.objective) and math.isfinite(result.bound):
                result.gap = abs(result.bound - result.objective) / max(
                    abs(result.objective), 1e-10
                )
        return result
