"""Audit trail of combinatorial mechanisms ([lemma2026solver] §8): log, replay, explain.

An audit log is JSON lines. The first line is the header: what reproduces the mechanism and
its instances (the env and mechanism configs, the trained run's checkpoint and its SHA-256,
the tie rule, the bundle language, the seed, count, device and dtype the bid profiles were
drawn with, library versions, the batch the outcomes were computed in). Every other line is
one instance: bids, scores, the allocation (bundle index and name per bidder), the payment
fractions ``alpha``, the payments, the solver certificate (objective, bound, gap, nodes, ties)
and a feasibility report, plus a blocking-set explanation for each bidder that won nothing.

Floats are written with Python's shortest round-trip ``repr`` of the float32 values the
mechanism computed, so ``replay`` can compare what it re-derives bit for bit.

Tamper evidence: the header carries ``digest``, the SHA-256 of its canonical JSON (sorted
keys, no spaces, without ``digest``); record ``p`` carries ``chain = sha256(previous +
canonical JSON of the record without chain)``, where ``previous`` is the chain of record
``p - 1`` (the header's digest for record 0). An edit of any field, an inserted, deleted,
duplicated or reordered record breaks a link; a deleted tail shows against the header's
count. The chain has no key: it shows edits, not a forger who recomputes it (``write_log``
seals whatever it is given). That is why :func:`replay` also regenerates the bid profiles
from the header and re-derives every field of every record: a re-sealed forgery still fails
wherever it differs from what the mechanism produces. Only the certificate's wall-clock
entries (``TIMINGS``) cannot be re-derived: a re-sealed edit of those is checked for being a
finite, non-negative number and nothing more.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from auctionlab.errors import ConfigError, NonFiniteError
from auctionlab.solvers.wdp import HighsWDP, choice_to_allocation, feasibility_violation
from auctionlab.utils import make_generator

log = logging.getLogger("auctionlab")

FORMAT = "auctionlab-ca-audit/2"
#: Earlier formats: no hash chain and no profile seed, so they cannot be verified.
OLD_FORMATS = ("auctionlab-ca-audit/1",)
#: Keys of every record (``chain`` is added by :func:`write_log`).
RECORD_KEYS = (
    "instance",
    "bids",
    "scores",
    "allocation",
    "bundles",
    "alpha",
    "payments",
    "certificate",
    "feasible",
    "explanations",
)
#: Keys of the header (``digest`` is added by :func:`write_log`).
HEADER_KEYS = (
    "format",
    "mechanism_class",
    "configs",
    "checkpoint",
    "batch",
    "profiles",
    "bundles",
    "membership",
    "tie_rule",
    "backend",
    "mip_rel_gap",
    "versions",
)
#: What regenerates the bid profiles: ``env.sample(count, make_generator(seed, device))``.
PROFILE_KEYS = ("count", "seed", "device", "dtype")
#: Seeds a torch generator accepts (``manual_seed`` takes a signed or unsigned 64-bit int).
SEED_RANGE = (-(2**63), 2**64)
#: Certificate entries that are wall-clock measurements: sealed by the chain, but no replay
#: can re-derive them, so they are only checked to be finite and non-negative.
TIMINGS = ("seconds", "stage1_seconds")
#: Every check a replay counts mismatches of (``mismatch_<check>`` in its report).
CHECKS = ("chain", "header", "records", *RECORD_KEYS, "fields", "payment_identity", "solver")
#: Findings kept as text in a replay report (the counts are always complete).
MAX_FINDINGS = 1000


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


def header(
    mechanism,
    env,
    configs: dict[str, Any],
    batch: int,
    run: str | None,
    *,
    profile_seed: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """The log's first line (:func:`write_log` adds its ``digest``).

    Args:
        mechanism: the audited combinatorial mechanism.
        env: its ``CombinatorialEnv``.
        configs: the ``env`` and ``mechanism`` config nodes that rebuild them.
        batch: the number of profiles, computed in one batch.
        run: the trained run directory (its checkpoint's SHA-256 is recorded), or ``None``.
        profile_seed: the seed the ``[batch, n, k]`` bid profiles were drawn from
            (``env.sample(batch, make_generator(profile_seed, device))``); ``None`` when they
            were not, and then replay refuses the log.
        device: where the profiles were drawn (the generator's device).
        dtype: the dtype of the drawn bids.

    """
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
        "profiles": {
            "count": batch,
            "seed": profile_seed,
            "device": torch.device(device).type,
            "dtype": str(dtype).removeprefix("torch."),
        },
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


def canonical(value: Any) -> str:
    """The JSON that is hashed: sorted keys, no spaces, floats as shortest round-trip repr."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def header_digest(head: dict) -> str:
    """SHA-256 of the header's canonical JSON, its own ``digest`` left out."""
    return _sha256(canonical({k: v for k, v in head.items() if k != "digest"}))


def chain_link(previous: str, record: dict) -> str:
    """``sha256(previous + canonical JSON of the record without its chain)``."""
    return _sha256(previous + canonical({k: v for k, v in record.items() if k != "chain"}))


def seal(head: dict, rows: list[dict]) -> tuple[dict, list[dict]]:
    """Copies of the header and records with ``digest`` and ``chain`` (re)computed."""
    head = {k: v for k, v in head.items() if k != "digest"}
    head["digest"] = previous = header_digest(head)
    sealed = []
    for row in rows:
        row = {k: v for k, v in row.items() if k != "chain"}
        row["chain"] = previous = chain_link(previous, row)
        sealed.append(row)
    return head, sealed


def write_log(path: Path, head: dict, rows: list[dict]) -> Path:
    """Write the header and the records as JSON lines, sealed by the hash chain.

    Any ``digest`` or ``chain`` already in ``head`` or ``rows`` is replaced by the one computed
    here, so a log read with :func:`read_log`, edited and written again is sealed afresh (its
    content is still checked by :func:`replay`).
    """
    from auctionlab.runs import write_bytes

    try:  # strict JSON, as every output: a NaN or inf outcome is no audit record
        head, rows = seal(head, rows)
        text = "".join(json.dumps(line, allow_nan=False) + "\n" for line in (head, *rows))
    except ValueError as err:
        raise NonFiniteError(f"audit: {path.name} would hold a non-finite number ({err})") from None
    return write_bytes(path, text.encode())  # atomic; a failed write is one line, no temp file


def _parse(name: str, number: int, line: str) -> dict:
    """One line as a JSON object, or a ``ConfigError`` naming the file and the line."""

    def refuse_constant(constant: str) -> None:  # logs are strict JSON: no NaN / Infinity
        raise ValueError(f"{constant} is not a JSON number")

    try:
        value = json.loads(line, parse_constant=refuse_constant)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"log={name} line {number}: not JSON at column {err.colno} ({err.msg})"
        ) from None
    except (ValueError, RecursionError) as err:  # NaN / Infinity, absurdly deep nesting
        reason = str(err) or type(err).__name__
        raise ConfigError(f"log={name} line {number}: not JSON ({reason})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"log={name} line {number}: not a JSON object")
    return value


def read_log(path: Path) -> tuple[dict, list[dict]]:
    """Header and records of an audit log, checked for shape.

    Refused with a one-line ``ConfigError`` naming the file and line: an unreadable or empty
    file, a line that is not a JSON object, a format other than ``FORMAT`` (the older ones with
    a pointer to re-run the audit), a header without env and mechanism configs, a header
    without records, a record lacking one of ``RECORD_KEYS`` or its ``chain``. The other header
    keys are checked by :func:`check_header` (after the configs passed the component gate).

    Returns:
        The header and the records, as written (``digest`` and ``chain`` included).

    """
    name = str(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"log={name}: cannot be read ({type(err).__name__}: {err})") from None
    lines = text.splitlines()
    if not lines:
        raise ConfigError(
            f"log={name}: empty file, not an audit log (`auctionlab audit` writes one)"
        )
    head = _parse(name, 1, lines[0])
    version = head.get("format")
    if version in OLD_FORMATS:
        raise ConfigError(
            f"log={name}: format {version} has no hash chain and no profile seed, so it cannot "
            f"be verified; re-run `auctionlab audit` to write a log of format {FORMAT}"
        )
    if version != FORMAT:
        raise ConfigError(f"log={name} line 1: format {version!r} is not {FORMAT}")
    configs = head.get("configs")
    if not (
        isinstance(configs, dict)
        and all(isinstance(configs.get(k), dict) for k in ("env", "mechanism"))
    ):
        raise ConfigError(f"log={name} line 1: the header has no env and mechanism configs")
    if len(lines) == 1:
        raise ConfigError(
            f"log={name}: a header (line 1) and no records; truncated or no audit log"
        )
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        row = _parse(name, number, line)
        missing = [key for key in (*RECORD_KEYS, "chain") if key not in row]
        if missing:
            raise ConfigError(f"log={name} line {number}: the record lacks key {missing[0]!r}")
        rows.append(row)
    return head, rows


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_header(name: str, head: dict) -> dict:
    """Check the header's keys; returns its ``profiles`` block (``count``, ``seed``...).

    Raises:
        ConfigError: naming the file, line 1 and the key that is missing or unusable.

    """
    missing = [key for key in (*HEADER_KEYS, "digest") if key not in head]
    if missing:
        raise ConfigError(f"log={name} line 1: the header lacks key {missing[0]!r}")
    profiles = head["profiles"]
    if not (isinstance(profiles, dict) and all(key in profiles for key in PROFILE_KEYS)):
        raise ConfigError(
            f"log={name} line 1: header key 'profiles' must hold {', '.join(PROFILE_KEYS)}"
        )
    if not (_integer(profiles["count"]) and profiles["count"] >= 1):
        raise ConfigError(
            f"log={name} line 1: 'profiles.count'={profiles['count']!r} must be an integer >= 1"
        )
    if not (_integer(profiles["seed"]) and SEED_RANGE[0] <= profiles["seed"] < SEED_RANGE[1]):
        raise ConfigError(
            f"log={name} line 1: 'profiles.seed'={profiles['seed']!r}: the profiles were not "
            "drawn from a seed, so replay cannot regenerate them"
        )
    try:
        torch.device(str(profiles["device"]))
    except RuntimeError:
        raise ConfigError(
            f"log={name} line 1: 'profiles.device'={profiles['device']!r} is not a device"
        ) from None
    checkpoint = head["checkpoint"]
    if checkpoint is not None and not (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("run"), str)
        and isinstance(checkpoint.get("sha256"), str)
    ):
        raise ConfigError(
            f"log={name} line 1: header key 'checkpoint' must be null or hold run and sha256"
        )
    return profiles


def regenerate(env, profiles: dict, device: torch.device | str = "cpu") -> Tensor:
    """``[count, n, k]`` the bid profiles the header's ``profiles`` block draws.

    Exactly what ``auctionlab audit`` does: ``env.sample(count, make_generator(seed, device))``.
    """
    generator = make_generator(int(profiles["seed"]), torch.device(device))
    return env.sample(int(profiles["count"]), generator).values


@dataclass(frozen=True)
class Finding:
    """One mismatch of a replay.

    Attributes:
        record: the record's index in the log (0 = line 2), ``None`` for the header.
        line: its line number in the file (``None`` for a record that is missing).
        check: what failed (one of ``CHECKS``; counted as ``mismatch_<check>``).
        text: what differs, naming the field.
        weight: how many records it stands for (a missing tail is one finding).

    """

    record: int | None
    line: int | None
    check: str
    text: str
    weight: int = 1

    def __str__(self) -> str:
        if self.record is None:
            where = "header (line 1)"
        elif self.line is None:
            where = f"record {self.record}"
        else:
            where = f"record {self.record} (line {self.line})"
        return f"{where}: {self.text}"


def verify_chain(head: dict, rows: list[dict]) -> list[Finding]:
    """The links of the hash chain that do not hold (header digest, then record by record).

    Each record is checked against the chain value logged on the line before it, so one edited
    record breaks its own link only; a deletion, duplication or move breaks the link of the
    record after the gap.
    """
    out = []
    if head.get("digest") != header_digest(head):
        out.append(Finding(None, 1, "chain", "digest broken: the header was edited"))
    previous = head.get("digest")
    for index, row in enumerate(rows):
        if row.get("chain") != chain_link(str(previous), row):
            text = "chain hash broken (edited, inserted, deleted or reordered)"
            out.append(Finding(index, index + 2, "chain", text))
        previous = row.get("chain")
    return out


def _same(logged: Any, fresh: Any) -> bool:
    """Equal values of equal JSON types (``True`` is not ``1``; NaN equals NaN)."""
    if type(logged) is not type(fresh):
        return False
    if isinstance(fresh, float) and math.isnan(fresh):
        return math.isnan(logged)
    return logged == fresh


def _timing(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value >= 0


def differences(logged: Any, fresh: Any, path: str) -> list[str]:
    """Dotted paths (``certificate.objective``, ``payments[1]``) where ``logged`` differs.

    Dicts and lists are compared entry by entry, the rest by value and JSON type. Wall-clock
    certificate entries (``TIMINGS``) are only checked to be finite and non-negative.
    """
    if path in {f"certificate.{key}" for key in TIMINGS}:
        return [] if _timing(logged) else [path]
    if isinstance(fresh, dict):
        if not isinstance(logged, dict):
            return [path]
        out = []
        for key in sorted(set(logged) | set(fresh), key=str):
            child = f"{path}.{key}"
            if key not in logged or key not in fresh:
                out.append(child)
            else:
                out += differences(logged[key], fresh[key], child)
        return out
    if isinstance(fresh, list):
        if not isinstance(logged, list) or len(logged) != len(fresh):
            return [path]
        out = []
        for i, (a, b) in enumerate(zip(logged, fresh, strict=True)):
            out += differences(a, b, f"{path}[{i}]")
        return out
    return [] if _same(logged, fresh) else [path]


def _field_findings(
    record: int | None, line: int, logged: dict, fresh: dict, keys: list[str], source: str
) -> list[Finding]:
    """One finding per top-level field of ``logged`` that differs from ``fresh``."""
    out = []
    for key in keys:
        paths = differences(logged.get(key), fresh.get(key), key)
        if not paths:
            continue
        what = "the profile regenerated from the header's seed" if key == "bids" else source
        text = f"field {paths[0]!r} differs from {what}"
        if len(paths) > 1:
            more = len(paths) - 1
            text += f" (and {more} more {'entry' if more == 1 else 'entries'} of {key!r})"
        check = key if record is None or key in CHECKS else "fields"
        out.append(Finding(record, line, "header" if record is None else check, text))
    extra = [
        key
        for key in logged
        if key not in fresh and key not in keys and key not in ("chain", "digest")
    ]
    for key in extra:
        check = "header" if record is None else "fields"
        out.append(Finding(record, line, check, f"field {key!r} is not part of an audit log"))
    return out


def _moved_findings(moved: list[tuple[int, int]]) -> list[Finding]:
    """One finding per run of records shifted by the same offset.

    Args:
        moved: ``(position, instance)`` of every record that holds another position's
            instance, in file order.

    """
    runs: list[list[tuple[int, int]]] = []
    for index, q in moved:
        last = runs[-1][-1] if runs else None
        if last is not None and index == last[0] + 1 and q - index == last[1] - last[0]:
            runs[-1].append((index, q))
        else:
            runs.append([(index, q)])
    out = []
    for run in runs:
        (start, q), end = run[0], run[-1][0]
        if start == end:
            text = f"holds the instance of record {q} (moved or duplicated)"
        else:
            text = (
                f"holds the instance of record {q}, and so on through record {end} (line "
                f"{end + 2}): {len(run)} records shifted by {q - start:+d} (an instance "
                "inserted, duplicated or deleted before them)"
            )
        out.append(Finding(start, start + 2, "records", text, weight=len(run)))
    return out


def _identity_holds(row: dict, k: int) -> bool:
    """``p_i = alpha_i * b_iS*`` in float32 for the logged alpha, allocation and bids."""
    try:
        x = choice_to_allocation(torch.tensor(row["allocation"], dtype=torch.long), k)
        won = (x * torch.tensor(row["bids"], dtype=torch.float32)).sum(-1)
        identity = torch.tensor(row["alpha"], dtype=torch.float32) * won
    except (TypeError, ValueError, RuntimeError, IndexError):  # malformed: already a mismatch
        return False
    return identity.tolist() == row["payments"]


def _solver_findings(mechanism, env, rows: list[dict]) -> list[Finding]:
    """Records whose allocation an independent HiGHS solve of the logged scores does not pick.

    Only for mechanisms whose allocation is the exact tie-ruled maximiser of their scores
    (an ``eta``-optimal rule may pick another allocation within its slack).
    """
    if not mechanism.argmax_allocation or mechanism.mip_rel_gap:
        return []
    shape = (env.n_bidders, env.n_bundles)
    usable, scores = [], []
    for index, row in enumerate(rows):
        try:
            tensor = torch.tensor(row["scores"], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            continue  # malformed scores are already a mismatch of 'scores'
        if tensor.shape == shape and bool(torch.isfinite(tensor).all()):
            usable.append(index)
            scores.append(tensor)
    if not usable:
        return []
    solver = HighsWDP(env.membership, mechanism.tie_tol, mechanism.priority_seed)
    choice = solver.solve(torch.stack(scores)).choice
    text = "field 'allocation' is not what an independent HiGHS solve of the logged scores picks"
    return [
        Finding(index, index + 2, "solver", text)
        for index, picked in zip(usable, choice.tolist(), strict=True)
        if picked != rows[index]["allocation"]
    ]


def replay(
    mechanism, env, head: dict, rows: list[dict], device: torch.device | str = "cpu"
) -> dict:
    """Verify a log: its hash chain, its header and every field of every record.

    Checks: the header's digest and every record's chain link; the record count against the
    header's; the header's derived fields (bundle language, tie rule, mechanism class,
    backend, checkpoint...) against the ones the rebuilt mechanism gives; the bid profiles
    regenerated from the header's seed against the logged bids; every field of every record
    (scores, allocation, bundle names, alpha, payments, solver certificate, feasibility,
    blocking-set explanations) against the one re-derived from the regenerated profiles, in
    one batch of the logged size, bit for bit (wall-clock timings only for being finite and
    non-negative); ``p_i = alpha_i * b_iS*`` for the logged numbers; the mechanism's own
    allocation is feasible; an independent HiGHS solve of the logged scores (same tie rule)
    picks the logged allocation.

    Args:
        mechanism: the mechanism rebuilt from the header (weights loaded), in eval mode.
        env: the env rebuilt from the header.
        head: the header (checked by :func:`check_header`).
        rows: the records, in file order (record ``p`` is line ``p + 2``).
        device: where the profiles are regenerated (the header's sampling device).

    Returns:
        ``instances`` (records in the log), ``expected`` (the header's count), ``mismatches``
        (all of them), ``mismatch_<check>`` per check of ``CHECKS`` and ``findings``: one line
        per mismatch naming the record, its line and the field (the first ``MAX_FINDINGS``).

    """
    findings = verify_chain(head, rows)
    profiles = head["profiles"]
    count = int(profiles["count"])
    if len(rows) < count:
        missing = count - len(rows)
        text = (
            f"missing (the header lists {count} records, the log ends after {len(rows)}: "
            f"{missing} deleted or truncated)"
        )
        findings.append(Finding(len(rows), None, "records", text, weight=missing))
    for index in range(count, len(rows)):
        text = f"extra: the header lists {count} records (inserted or duplicated)"
        findings.append(Finding(index, index + 2, "records", text))

    # A forged count must not make the replay draw millions of profiles.
    fresh_rows: list[dict] = []
    dtype = torch.float32
    if count <= max(4 * len(rows), 1024):
        bids = regenerate(env, profiles, device)
        dtype = bids.dtype
        fresh_rows = records(mechanism, env, bids)
    else:
        text = (
            f"field 'profiles.count'={count} is implausible for {len(rows)} records; not re-derived"
        )
        findings.append(Finding(None, 1, "header", text))
    checkpoint = head["checkpoint"]
    fresh_head = header(
        mechanism,
        env,
        head["configs"],
        count,
        None if checkpoint is None else checkpoint["run"],
        profile_seed=profiles["seed"],
        device=profiles["device"],
        dtype=dtype,
    )
    if head.get("versions") != fresh_head["versions"]:
        log.warning(
            "replay: the log was written with %s, this replay runs %s; bit-for-bit "
            "reproduction may fail for that reason alone",
            head.get("versions"),
            fresh_head["versions"],
        )
    keys = [key for key in HEADER_KEYS if key != "versions"]
    findings += _field_findings(None, 1, head, fresh_head, keys, "the re-derived value")
    # Records are matched to the profile their bids are (a moved or duplicated record is
    # compared with its own instance, and named once, instead of flooding every field).
    by_bids = {canonical(fresh["bids"]): q for q, fresh in enumerate(fresh_rows)}
    moved: list[tuple[int, int]] = []
    for index, row in enumerate(rows):
        line = index + 2
        q = by_bids.get(canonical(row["bids"]), index)
        if q != index:
            moved.append((index, q))
        if q >= len(fresh_rows):
            continue  # beyond the header's count and no profile of its seed: already named
        fresh = fresh_rows[q]
        findings += _field_findings(
            index, line, row, fresh, list(RECORD_KEYS), "the re-derived value"
        )
        if not fresh["feasible"]:
            text = "field 'allocation': the mechanism's own allocation is infeasible"
            findings.append(Finding(index, line, "feasible", text))
        if row["alpha"] is not None and not _identity_holds(row, env.n_bundles):
            text = "field 'payments' breaks p_i = alpha_i * b_iS* for the logged alpha and bids"
            findings.append(Finding(index, line, "payment_identity", text))
    findings += _moved_findings(moved)
    findings += _solver_findings(mechanism, env, rows)
    findings.sort(key=lambda f: -1 if f.record is None else f.record)  # stable: checks in order
    counts = Counter()
    for finding in findings:
        counts[finding.check] += finding.weight
    return {
        "instances": len(rows),
        "expected": count,
        "mismatches": float(sum(counts.values())),
        **{f"mismatch_{check}": float(counts[check]) for check in CHECKS},
        "findings": [str(f) for f in findings[:MAX_FINDINGS]],
        "findings_left_off": max(0, len(findings) - MAX_FINDINGS),
    }
