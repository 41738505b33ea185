"""``auctionlab replay log=<audit.jsonl>``: re-derive every logged allocation and payment.

The mechanism is rebuilt from the log's header alone (its env and mechanism configs, and the
trained run's checkpoint, refused when its SHA-256 differs from the logged one). Every
instance is recomputed in one batch of the logged size and compared bit for bit; an
independent HiGHS solve of the logged scores checks the allocation. Any mismatch fails the
task (exit status 1) after ``replay.json`` is written.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from auctionlab.audit import FORMAT, read_log, replay
from auctionlab.components import build
from auctionlab.errors import ConfigError, RunError
from auctionlab.runs import load_checkpoint, save_config, sha256_file, write_json
from auctionlab.tasks.common import log, run_dir, setup_runtime
from auctionlab.tracking import Tracker


def prepare(cfg: DictConfig):
    """Read the log's header and rebuild its mechanism; ``ConfigError`` on bad input."""
    device = setup_runtime(cfg)
    if not cfg.get("log"):
        raise ConfigError("replay: log=<audit.jsonl> is required (written by `auctionlab audit`)")
    path = Path(str(cfg.log)).expanduser()
    if not path.exists():
        raise ConfigError(f"log={cfg.log}: no such file")
    try:
        head, rows = read_log(path)
    except (ValueError, IndexError) as err:
        raise ConfigError(f"log={cfg.log}: not an audit log ({err})") from None
    if head.get("format") != FORMAT:
        raise ConfigError(f"log={cfg.log}: format {head.get('format')!r} is not {FORMAT}")
    env = build(OmegaConf.create(head["configs"]["env"]), "env")
    mechanism = build(OmegaConf.create(head["configs"]["mechanism"]), "mechanism", env=env)
    checkpoint = head.get("checkpoint")
    if checkpoint:
        file = Path(checkpoint["run"]) / "checkpoint.pt"
        if not file.exists() or sha256_file(file) != checkpoint["sha256"]:
            raise ConfigError(
                f"log={cfg.log}: the logged checkpoint {file} is missing or its SHA-256 differs"
            )
        mechanism.load_state_dict(load_checkpoint(file, device)["mechanism"])
    return path, head, rows, env, mechanism.to(device).eval()


def run(cfg: DictConfig) -> dict[str, float]:
    """Replay the log; write ``replay.json``; fail when anything differs."""
    path, head, rows, env, mechanism = prepare(cfg)
    out = run_dir()
    tags = {"task": "replay", "run_dir": str(out.resolve()), "log": str(path.resolve())}
    with Tracker(cfg, cfg.tracking, f"replay {path.parent.name}", tags) as tracker:
        save_config(cfg, out)
        report = replay(mechanism, env, head, rows)
        write_json(out / "replay.json", report)
        metrics = {k: v for k, v in report.items() if isinstance(v, float | int)}
        tracker.log_metrics({k: float(v) for k, v in metrics.items()})
        tracker.log_artifacts([out / "config.yaml", out / "replay.json"])
    bad = {k: v for k, v in report.items() if k.startswith("mismatch_") and v}
    summary = ", ".join(f"{k}={int(v)}" for k, v in report.items() if k.startswith("mismatch_"))
    print(f"replayed {report['instances']} instances of {path}: {summary}")
    if bad:
        raise RunError(
            f"replay of {path} differs: {bad}; first instances: {report['first_mismatches']}"
        )
    log.info("replay: all %d instances reproduced bit for bit -> %s", report["instances"], out)
    return report
