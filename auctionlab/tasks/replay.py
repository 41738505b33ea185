"""``auctionlab replay log=<audit.jsonl>``: verify an audit log and re-derive every record.

The mechanism is rebuilt from the log's header alone (its env and mechanism configs, checked
by the component gate, and the trained run's checkpoint, refused when its SHA-256 differs from
the logged one). The replay checks the hash chain, regenerates the bid profiles from the
header's seed and re-derives every field of every record in one batch of the logged size, bit
for bit (:func:`auctionlab.audit.replay`).

A malformed log (empty, header only, a line that is not JSON, a missing key, an older format)
is refused before any work: one line naming the file and line, exit status 2. A log that reads
but differs anywhere fails the run (exit status 1, MLflow run FAILED) after ``replay.json``
(the counts and one line per mismatch, naming the record, its line and the field) is written.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from auctionlab.audit import check_header, read_log, replay
from auctionlab.components import build
from auctionlab.errors import ConfigError, RunError
from auctionlab.runs import load_checkpoint, save_config, sha256_file, write_json
from auctionlab.tasks.common import log, run_dir, setup_runtime
from auctionlab.tracking import Tracker

#: Mismatch lines in the one-line failure message (all of them are in ``replay.json``).
SHOWN = 8


def prepare(cfg: DictConfig):
    """Read the log, rebuild its mechanism; ``ConfigError`` on a malformed log or bad input."""
    device = setup_runtime(cfg)
    if not cfg.get("log"):
        raise ConfigError("replay: log=<audit.jsonl> is required (written by `auctionlab audit`)")
    path = Path(str(cfg.log)).expanduser()
    if not path.is_file():
        raise ConfigError(f"log={cfg.log}: no such file")
    head, rows = read_log(path)
    # The header's configs are untrusted input: `build` passes them through the component gate
    # before anything is instantiated.
    env = build(OmegaConf.create(head["configs"]["env"]), "env")
    mechanism = build(OmegaConf.create(head["configs"]["mechanism"]), "mechanism", env=env)
    if not getattr(mechanism, "auditable", False):
        raise ConfigError(
            f"log={cfg.log} line 1: mechanism {type(mechanism).__name__} is not a combinatorial "
            "mechanism; audit logs cover env=ca_* mechanisms"
        )
    profiles = check_header(str(cfg.log), head)
    if str(profiles["device"]) != device.type:
        raise ConfigError(
            f"log={cfg.log}: its profiles were drawn on {profiles['device']}; replay it with "
            f"device={profiles['device']}"
        )
    checkpoint = head["checkpoint"]
    if checkpoint:
        file = Path(checkpoint["run"]) / "checkpoint.pt"
        if not file.exists() or sha256_file(file) != checkpoint["sha256"]:
            raise ConfigError(
                f"log={cfg.log}: the logged checkpoint {file} is missing or its SHA-256 differs"
            )
        mechanism.load_state_dict(load_checkpoint(file, device)["mechanism"])
    return path, head, rows, env, mechanism.to(device).eval(), device


def failure(path: Path, report: dict, out: Path) -> str:
    """The one-line reason a replay failed: the count and the first mismatches."""
    findings = report["findings"]
    shown = "; ".join(findings[:SHOWN])
    more = len(findings) + report["findings_left_off"] - SHOWN
    if more > 0:
        shown += f"; and {more} more"
    count = int(report["mismatches"])
    return (
        f"replay: log={path}: {count} {'mismatch' if count == 1 else 'mismatches'} in "
        f"{report['instances']} records: {shown} (all in {out / 'replay.json'})"
    )


def run(cfg: DictConfig) -> dict[str, float]:
    """Replay the log; write ``replay.json``; fail (MLflow FAILED) when anything differs."""
    path, head, rows, env, mechanism, device = prepare(cfg)
    out = run_dir()
    tags = {"task": "replay", "run_dir": str(out.resolve()), "log": str(path.resolve())}
    with Tracker(cfg, cfg.tracking, f"replay {path.parent.name}", tags) as tracker:
        save_config(cfg, out)
        report = replay(mechanism, env, head, rows, device)
        write_json(out / "replay.json", report)
        metrics = {k: v for k, v in report.items() if isinstance(v, float | int)}
        tracker.log_metrics({k: float(v) for k, v in metrics.items()})
        tracker.log_artifacts([out / "config.yaml", out / "replay.json"])
        summary = ", ".join(
            f"{k}={int(v)}" for k, v in report.items() if k.startswith("mismatch_") and v
        )
        print(f"replayed {report['instances']} records of {path}: {summary or 'no mismatch'}")
        for line in report["findings"][:50]:
            log.error("replay: %s", line)
        if report["mismatches"]:
            # Inside the Tracker: the MLflow run ends FAILED with this reason.
            raise RunError(failure(path, report, out))
    log.info("replay: all %d records reproduced bit for bit -> %s", report["instances"], out)
    return report
