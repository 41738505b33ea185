"""The PF solver compiled from ``native.c`` (CPU), loaded with ctypes.

The torch path of :func:`auctionlab.solvers.pf.solve_pf` spends most of its time dispatching
a few dozen batched ops per Newton step, which is what a 2x2 or 10x3 program costs: the
per-instance C loop runs the same method (iterations, snapping onto the active sets, KKT
residual) in a small fraction of that. The implicit gradients stay in torch.

The library is built on first use with the system C compiler (``$CC``, default ``cc``) into
``$AUCTIONLAB_CACHE`` (default ``~/.cache/auctionlab``), named by a hash of the source and
flags, written atomically (concurrent runs of a sweep may build it at once). Without a
compiler the torch path is used (one warning). ``AUCTIONLAB_PF_BACKEND=torch`` turns the
native path off, ``native`` makes its absence an error.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from auctionlab.errors import ConfigError, RunError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.c")
#: Backends of the PF solver (``AUCTIONLAB_PF_BACKEND`` / ``solve_pf(backend=...)``).
BACKENDS = ("auto", "native", "torch")
_FLAGS = (
    ["-O3", "-std=c99", "-fPIC", "-shared", "-fopenmp"],
    ["-O3", "-std=c99", "-fPIC", "-shared"],
)
_library: ctypes.CDLL | None = None
_failure: str | None = None

_double_p = ctypes.POINTER(ctypes.c_double)
_int_p = ctypes.POINTER(ctypes.c_int)


def cache_dir() -> Path:
    """Where compiled libraries are kept."""
    return Path(os.environ.get("AUCTIONLAB_CACHE", Path.home() / ".cache" / "auctionlab"))


def _build(flags: list[str]) -> Path:
    source = SOURCE.read_bytes()
    compiler = os.environ.get("CC", "cc")
    digest = hashlib.sha256(source + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    target = cache_dir() / f"pf_native_{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *flags, str(SOURCE), "-o", tmp, "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr else "cc failed")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def library() -> ctypes.CDLL | None:
    """The compiled library, built on first call; ``None`` (and one warning) if it cannot be."""
    global _library, _failure
    if _library is not None or _failure is not None:
        return _library
    errors = []
    for flags in _FLAGS:
        try:
            lib = ctypes.CDLL(str(_build(flags)))
        except (OSError, subprocess.SubprocessError) as err:
            errors.append(f"{' '.join(flags)}: {err}")
            continue
        # pf_solve(B, n, m, v, x, z, free, b, budget, w, pairs, tol, max_iter, threads,
        #          a, mu, nu, lam, residual, iterations)
        lib.pf_solve.restype = ctypes.c_int
        lib.pf_solve.argtypes = [
            *[ctypes.c_int] * 3,
            *[_double_p] * 8,
            ctypes.c_double,
            ctypes.c_int,
            ctypes.c_int,
            *[_double_p] * 5,
            _int_p,
        ]
        _library = lib
        return lib
    _failure = "; ".join(errors)
    log.warning("native PF solver unavailable, using the torch path (%s)", _failure)
    return None


def backend_choice(backend: str | None) -> str:
    """The backend asked for (argument, else ``AUCTIONLAB_PF_BACKEND``, else ``auto``)."""
    choice = backend or os.environ.get("AUCTIONLAB_PF_BACKEND", "auto")
    if choice not in BACKENDS:
        raise ConfigError(
            f"PF solver backend={choice!r} (AUCTIONLAB_PF_BACKEND) is not one of {list(BACKENDS)}"
        )
    return choice


def use_native(backend: str | None, device: torch.device) -> bool:
    """Whether a solve on ``device`` runs on the native solver.

    Raises:
        ConfigError: bad backend name, or ``native`` asked for where it cannot run.

    """
    choice = backend_choice(backend)
    if choice == "torch":
        return False
    if device.type != "cpu":
        if choice == "native":
            raise ConfigError(f"PF solver backend=native runs on the CPU only, not {device}")
        return False
    available = library() is not None
    if choice == "native" and not available:
        raise ConfigError(f"PF solver backend=native: the C library did not build ({_failure})")
    return available


def _pointer(t: Tensor, kind: type = _double_p) -> ctypes._Pointer:
    """``t``'s data as a ctypes pointer of type ``kind`` (``t`` must stay alive meanwhile)."""
    return ctypes.cast(t.data_ptr(), kind)


def solve(
    v: Tensor,
    x: Tensor,
    z: Tensor,
    free: Tensor,
    b: Tensor,
    budget: Tensor,
    w: Tensor,
    pairs: Tensor,
    tol: float,
    max_iter: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Solve every instance (float64, CPU, batch-first).

    Args:
        v: ``[B, n, m]`` values, zero on fixed variables.
        x: ``[B, n, m]`` demands, zero on fixed variables.
        z: ``[B, n, m]`` regulariser, zero on fixed variables.
        free: ``[B, n, m]`` 1 on free variables, 0 on fixed ones.
        b: ``[B, m]`` budgets.
        budget: ``[B, m]`` 1 where a budget is part of the program.
        w: ``[B, n]`` weights.
        pairs: ``[B]`` complementarity pairs per instance.
        tol: KKT tolerance.
        max_iter: iteration cap.

    Returns:
        ``a, mu, nu`` ``[B, n, m]`` and ``lam`` ``[B, m]`` (the snapped pair where it meets
        ``tol`` or beats the interior iterate, else the iterate), the ``[B]`` KKT residual of
        that pair and the ``[B]`` iterations per instance.

    """
    lib = library()
    if lib is None:
        raise RunError("native PF solver unavailable")
    B, n, m = v.shape
    inputs = [
        t.detach().to(torch.float64).contiguous() for t in (v, x, z, free, b, budget, w, pairs)
    ]
    a, mu, nu = (torch.empty(B, n, m, dtype=torch.float64) for _ in range(3))
    lam = torch.empty(B, m, dtype=torch.float64)
    residual = torch.empty(B, dtype=torch.float64)
    iterations = torch.zeros(B, dtype=torch.int32)
    status = lib.pf_solve(
        B,
        n,
        m,
        *(_pointer(t) for t in inputs),
        float(tol),
        int(max_iter),
        torch.get_num_threads(),
        *(_pointer(t) for t in (a, mu, nu, lam, residual)),
        _pointer(iterations, _int_p),
    )
    if status != 0:
        raise RunError("native PF solver: out of memory for its workspace")
    return a, mu, nu, lam, residual, iterations
