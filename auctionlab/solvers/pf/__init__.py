"""Batched proportional-fairness programs and their implicit gradients ([zeng2025rpf] §4, App. C-D).

The regularised PF program (9) (``z = 0`` gives PF, program (4))::

    min_a  -sum_i w_i log(v_i^T a_i) + <z, a>
    s.t.   0 <= a <= x,   sum_i a_im <= b_m

solved for a whole batch at once in float64, and differentiated through its KKT conditions.
The package is split by concern:

- :mod:`~auctionlab.solvers.pf.ipm`: the interior-point method (:func:`solve_pf`), the
  snapping onto active sets and the per-instance KKT check (:class:`PFSolution`,
  :class:`PFSolveError`).
- :mod:`~auctionlab.solvers.pf.linalg`: the structured Newton systems of the interior point
  and the LU / minimal-norm transposed solves of the backward pass.
- :mod:`~auctionlab.solvers.pf.implicit`: the autograd function (:class:`PFFunction`,
  :func:`pf_allocate`) and its implicit gradients through the KKT matrix (:func:`kkt_matrix`).
- :mod:`~auctionlab.solvers.pf.native`: the same interior-point method compiled from
  ``native.c`` (the default on the CPU), loaded with ctypes.

Everything that was importable from ``auctionlab.solvers.pf`` before the split still is,
including the private helpers the tests exercise directly.
"""

from auctionlab.solvers.pf.implicit import (
    PFFunction,
    _full_gradients,
    _reduced_gradients,
    kkt_matrix,
    pf_allocate,
)
from auctionlab.solvers.pf.ipm import (
    DEMAND_ZERO,
    ZERO,
    PFSolution,
    PFSolveError,
    _merge,
    _prepare,
    _program,
    solve_pf,
)
from auctionlab.solvers.pf.linalg import (
    NEWTON_REFINE_TOL,
    SINGULAR_PIVOT,
    UNROLLED_SCHUR,
    _batch_last,
    _compressed_solve_transposed,
    _dense_newton_direction,
    _newton_direction,
    solve_transposed,
)

__all__ = [
    "DEMAND_ZERO",
    "NEWTON_REFINE_TOL",
    "SINGULAR_PIVOT",
    "UNROLLED_SCHUR",
    "ZERO",
    "PFFunction",
    "PFSolution",
    "PFSolveError",
    "kkt_matrix",
    "pf_allocate",
    "solve_pf",
    "solve_transposed",
    # Private helpers, re-exported for the tests that reach them through this package.
    "_batch_last",
    "_compressed_solve_transposed",
    "_dense_newton_direction",
    "_full_gradients",
    "_merge",
    "_newton_direction",
    "_prepare",
    "_program",
    "_reduced_gradients",
]
