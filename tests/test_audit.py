"""``auctionlab audit`` / ``replay``: logs re-derived bit for bit ([lemma2026solver] §8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auctionlab.errors import ConfigError, RunError


def _audit(compose, overrides: list[str]) -> Path:
    from auctionlab.tasks import audit

    audit.run(compose("audit", ["tracking=none", *overrides]))
    return Path("outputs/adhoc/audit.jsonl")


def _replay(compose, log: Path) -> dict:
    from auctionlab.tasks import replay

    return replay.run(compose("replay", ["tracking=none", f"log={log}"]))


def test_vcg_log_replays_and_a_tampered_one_fails(compose, tmp_path):
    log = _audit(compose, ["mechanism=ca_vcg", "env=combinatorial/ca_2x3", "profiles=300"])
    lines = log.read_text().splitlines()
    head, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    assert head["format"].startswith("auctionlab-ca-audit") and len(rows) == 300
    assert head["tie_rule"]["priority_sha256"] and head["bundles"][0][-1] == "0_1_2"
    assert all(r["feasible"] for r in rows)
    assert any(r["explanations"] for r in rows)  # losing bidders get a blocking set
    report = _replay(compose, log)
    assert report["instances"] == 300
    assert all(v == 0 for k, v in report.items() if k.startswith("mismatch_"))
    row = json.loads(lines[7])
    row["allocation"] = [-1] * len(row["allocation"])
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join([*lines[:7], json.dumps(row), *lines[8:]]) + "\n")
    with pytest.raises(RunError, match=r"record 6 \(line 8\): field 'allocation\[0\]' differs"):
        _replay(compose, tampered)


def test_trained_solver_backed_run_replays_bit_for_bit(compose, cli, tmp_path):
    args = ["mechanism=solver_backed", "env=ca_2x3", "scale=smoke", "threads=1", "tracking=none"]
    result = cli("train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "runs").glob("*/*_train")
    log = _audit(compose, [f"run={run}", "profiles=400"])
    head, first = [json.loads(line) for line in log.read_text().splitlines()[:2]]
    assert head["checkpoint"]["sha256"] and head["mechanism_class"] == "SolverBacked"
    assert len(first["alpha"]) == 2 and len(first["scores"][0]) == 7
    report = _replay(compose, log)
    assert report["instances"] == 400
    assert all(v == 0 for k, v in report.items() if k.startswith("mismatch_"))
    # a replay refuses weights that changed since the log was written
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes() + b"x")
    with pytest.raises(ConfigError, match="SHA-256"):
        _replay(compose, log)


def test_replay_needs_a_log(compose):
    from auctionlab.tasks import replay

    with pytest.raises(ConfigError, match="log="):
        replay.prepare(compose("replay", ["tracking=none"]))
    with pytest.raises(ConfigError, match="no such file"):
        replay.prepare(compose("replay", ["tracking=none", "log=nope.jsonl"]))


def test_audit_refuses_item_auctions(compose):
    from auctionlab.tasks import audit

    with pytest.raises(ConfigError, match="combinatorial"):
        audit.prepare(compose("audit", ["tracking=none", "mechanism=vcg", "env=2x2"]))


def test_highs_backend_log_replays_with_its_certificate(compose):
    from auctionlab.audit import priority_digest
    from auctionlab.components import build_env_and_mechanism

    exact = ["mechanism=ca_greedy_pab", "mechanism.allocation=exact", "mechanism.alpha=0.5"]
    highs = [*exact, "+mechanism.backend=highs"]
    log = _audit(compose, [*highs, "profiles=8"])
    head, first = [json.loads(line) for line in log.read_text().splitlines()[:2]]
    assert head["backend"] == "highs" and first["certificate"]["optimal"] == 1.0
    assert first["alpha"] is not None  # the payment identity is checked on replay
    # the tie rule's digest names the rule, not the backend's storage of its priorities
    digests = {
        priority_digest(build_env_and_mechanism(compose("audit", overrides))[1])
        for overrides in (exact, highs)
    }
    assert digests == {head["tie_rule"]["priority_sha256"]}
    report = _replay(compose, log)
    assert report["instances"] == 8
    assert all(v == 0 for k, v in report.items() if k.startswith("mismatch_")), report
