"""``auctionlab replay`` verifies the whole audit log: hash chain, regenerated profiles, fields.

One audit log per module (in-process, 40 profiles); every case edits a copy of it. Most cases
call the replay task in-process; a few go through the console script for the exit status,
the one-line message and the MLflow run status.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import compose_cfg

from auctionlab.audit import chain_link, read_log, write_log
from auctionlab.errors import ConfigError, RunError

PROFILES = 40
AUDIT = ["tracking=none", "mechanism=ca_vcg", "env=combinatorial/ca_2x3", f"profiles={PROFILES}"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The module's audit log, written by the audit task (in-process, no tracking)."""
    from auctionlab.tasks import audit

    cwd = tmp_path_factory.mktemp("audit")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        audit.run(compose_cfg("audit", AUDIT))
    return cwd / "outputs" / "adhoc" / "audit.jsonl"


def _replay(log: Path, tracking: str = "none") -> dict:
    """The replay task, in-process (``RunError`` / ``ConfigError`` propagate)."""
    from auctionlab.tasks import replay

    return replay.run(compose_cfg("replay", [f"tracking={tracking}", f"log={log}"]))


def _first(rows: list[dict], test: Callable[[dict], bool]) -> int:
    """Index of the first record that ``test`` accepts (the log is large enough to hold one)."""
    return next(i for i, row in enumerate(rows) if test(row))


def _forged_instance(index: int) -> dict:
    """A genuine VCG record of a profile the log's seed never drew, numbered ``index``."""
    from auctionlab.audit import records
    from auctionlab.components import build_env_and_mechanism
    from auctionlab.utils import make_generator

    env, mechanism = build_env_and_mechanism(compose_cfg("audit", AUDIT))
    bids = env.sample(1, make_generator(7, mechanism.membership.device)).values
    return dict(records(mechanism, env, bids)[0], instance=index)


# -- the seven edits of the raw file (no re-sealing) ----------------------------------------------
def _delete_last(lines: list[str], rows: list[dict]):
    return lines[:-1], [f"record {PROFILES - 1}: missing"]


def _duplicate(lines: list[str], rows: list[dict]):
    # record 5 twice: the copy at position 6 breaks the chain and is not profile 6
    out = [*lines[:7], lines[6], *lines[7:]]
    return out, [
        "record 6 (line 8): chain hash broken",
        "record 6 (line 8): holds the instance of record 5",
    ]


def _splice(lines: list[str], rows: list[dict]):
    # a real mechanism outcome, sealed onto record 6's chain in place of record 7
    forged = _forged_instance(7)
    forged["chain"] = chain_link(rows[6]["chain"], forged)
    out = [*lines[:8], json.dumps(forged), *lines[9:]]
    return out, ["record 7 (line 9): field 'bids", "record 8 (line 10): chain hash broken"]


def _reorder(lines: list[str], rows: list[dict]):
    two, three = dict(rows[3], instance=2), dict(rows[2], instance=3)
    out = [*lines[:3], json.dumps(two), json.dumps(three), *lines[5:]]
    return out, [
        "record 2 (line 4): chain hash broken",
        "record 2 (line 4): holds the instance of record 3",
        "record 2 (line 4): field 'instance' differs",
    ]


def _swap_bundle_names(lines: list[str], rows: list[dict]):
    i = _first(rows, lambda r: len({b for b in r["bundles"] if b}) == 2)
    rows = [dict(r) for r in rows]
    rows[i]["bundles"] = rows[i]["bundles"][::-1]
    out = [*lines[: i + 1], json.dumps(rows[i]), *lines[i + 2 :]]
    return out, [f"record {i} (line {i + 2}): field 'bundles[0]' differs"]


def _edit_certificate(lines: list[str], rows: list[dict]):
    row = dict(rows[3], certificate=dict(rows[3]["certificate"]))
    row["certificate"]["objective"] = math.nextafter(row["certificate"]["objective"], 9.0)
    out = [*lines[:4], json.dumps(row), *lines[5:]]
    return out, ["record 3 (line 5): field 'certificate.objective' differs"]


def _edit_blocking_sets(lines: list[str], rows: list[dict]):
    i = _first(rows, lambda r: any(e["blocked_by"] for e in r["explanations"]))
    row = json.loads(lines[i + 1])
    explanation = next(e for e in row["explanations"] if e["blocked_by"])
    explanation["blocked_by"] = explanation["blocked_by"][1:]  # hide a blocker
    out = [*lines[: i + 1], json.dumps(row), *lines[i + 2 :]]
    return out, [f"record {i} (line {i + 2}): field 'explanations["]


EDITS = {
    "delete_last": _delete_last,
    "duplicate": _duplicate,
    "splice_forged_instance": _splice,
    "reorder_renumber": _reorder,
    "swap_bundle_names": _swap_bundle_names,
    "edit_certificate": _edit_certificate,
    "edit_blocking_sets": _edit_blocking_sets,
}


@pytest.mark.parametrize("edit", EDITS)
def test_every_edit_is_named(pristine, tmp_path, edit):
    lines = pristine.read_text().splitlines()
    _, rows = read_log(pristine)
    edited, expected = EDITS[edit](lines, rows)
    log = tmp_path / f"{edit}.jsonl"
    log.write_text("\n".join(edited) + "\n")
    with pytest.raises(RunError) as failed:
        _replay(log)
    message = str(failed.value)
    assert "\n" not in message
    for phrase in expected:
        assert phrase in message, (phrase, message)
    report = json.loads(Path("outputs/adhoc/replay.json").read_text())
    assert report["mismatches"] > 0 and report["findings"]


def _pay_less(head: dict, rows: list[dict]) -> str:
    i = _first(rows, lambda r: r["payments"][0] > 0)
    rows[i]["payments"][0] = rows[i]["payments"][0] / 2
    return f"record {i} (line {i + 2}): field 'payments[0]' differs from the re-derived value"


def _rename_bundle(head: dict, rows: list[dict]) -> str:
    i = _first(rows, lambda r: r["bundles"][1] is not None)
    rows[i]["bundles"][1] = "0_1_2" if rows[i]["bundles"][1] != "0_1_2" else "0"
    return f"record {i} (line {i + 2}): field 'bundles[1]' differs"


def _rename_header_bundle(head: dict, rows: list[dict]) -> str:
    head["bundles"][0][0], head["bundles"][0][1] = head["bundles"][0][1], head["bundles"][0][0]
    return "header (line 1): field 'bundles[0][0]' differs"


@pytest.mark.parametrize("forge", [_pay_less, _rename_bundle, _rename_header_bundle])
def test_a_resealed_forgery_still_fails(pristine, tmp_path, forge):
    head, rows = read_log(pristine)
    expected = forge(head, rows)
    log = write_log(tmp_path / "resealed.jsonl", head, rows)  # a valid chain again
    with pytest.raises(RunError) as failed:
        _replay(log)
    assert expected in str(failed.value), str(failed.value)
    assert "chain hash broken" not in str(failed.value)


def test_an_untouched_log_replays(pristine):
    report = _replay(pristine)
    assert report["instances"] == report["expected"] == PROFILES
    assert report["mismatches"] == 0 and not report["findings"]
    head, rows = read_log(pristine)
    assert head["format"] == "auctionlab-ca-audit/2"
    assert head["profiles"] == {
        "count": PROFILES,
        "seed": 424242,
        "device": "cpu",
        "dtype": "float32",
    }


def _header_only(lines: list[str]) -> str:
    return lines[0] + "\n"


def _not_json(lines: list[str]) -> str:
    return "\n".join([*lines[:4], lines[4][:-7], *lines[5:]]) + "\n"


def _missing_key(lines: list[str]) -> str:
    row = json.loads(lines[3])
    del row["certificate"]
    return "\n".join([*lines[:3], json.dumps(row), *lines[4:]]) + "\n"


def _nan_payment(lines: list[str]) -> str:
    row = json.loads(lines[2])
    row["payments"][0] = float("nan")  # json.dumps writes the non-standard literal NaN
    return "\n".join([*lines[:2], json.dumps(row), *lines[3:]]) + "\n"


def _version_1(lines: list[str]) -> str:
    return lines[0].replace("auctionlab-ca-audit/2", "auctionlab-ca-audit/1") + "\n"


def _header_without_seed(lines: list[str]) -> str:
    head = json.loads(lines[0])
    del head["profiles"]
    return "\n".join([json.dumps(head), *lines[1:]]) + "\n"


MALFORMED = {
    "empty": (lambda lines: "", "empty file"),
    "header_only": (_header_only, "a header (line 1) and no records"),
    "not_json": (_not_json, "line 5: not JSON"),
    "missing_key": (_missing_key, "line 4: the record lacks key 'certificate'"),
    "nan_literal": (_nan_payment, "line 3: not JSON (NaN is not a JSON number)"),
    "version_1": (_version_1, "re-run `auctionlab audit`"),
    "header_key": (_header_without_seed, "line 1: the header lacks key 'profiles'"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_log_is_one_config_error(pristine, tmp_path, case):
    make, phrase = MALFORMED[case]
    log = tmp_path / f"{case}.jsonl"
    log.write_text(make(pristine.read_text().splitlines()))
    with pytest.raises(ConfigError) as refused:
        _replay(log)
    message = str(refused.value)
    assert phrase in message and f"log={log}" in message and "\n" not in message, message


def test_console_replay_of_an_edited_log_fails_its_mlflow_run(pristine, cli, tmp_path, list_runs):
    lines = pristine.read_text().splitlines()
    edited, expected = _edit_certificate(lines, read_log(pristine)[1])
    log = tmp_path / "edited.jsonl"
    log.write_text("\n".join(edited) + "\n")
    done = cli("replay", f"log={log}")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"auctionlab: run failed: replay: log={log}" in done.stderr
    assert expected[0] in done.stderr and "record 3 (line 5): chain hash broken" in done.stderr
    (run,) = [r for r in list_runs() if r.data.tags.get("log") == str(log.resolve())]
    assert run.info.status == "FAILED", run.info.status
    assert "certificate.objective" in run.data.tags["failure"]
    assert run.data.metrics["mismatch_certificate"] == 1


@pytest.mark.parametrize("case", ["header_only", "not_json"])
def test_console_refuses_a_malformed_log_in_one_line(pristine, cli, tmp_path, case):
    make, phrase = MALFORMED[case]
    log = tmp_path / f"{case}.jsonl"
    log.write_text(make(pristine.read_text().splitlines()))
    done = cli("replay", f"log={log}", "tracking=none")
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("auctionlab: error: log="), done.stderr
    assert phrase in lines[0] and "Traceback" not in done.stderr


def test_a_non_finite_outcome_is_never_written_into_a_log(pristine, tmp_path):
    from auctionlab.audit import read_log, write_log
    from auctionlab.errors import NonFiniteError

    head, rows = read_log(pristine)
    rows[0]["payments"][0] = float("inf")
    log = tmp_path / "inf.jsonl"
    with pytest.raises(NonFiniteError, match="inf.jsonl would hold a non-finite number"):
        write_log(log, head, rows)
    assert not log.exists() and not list(tmp_path.glob("*.tmp"))
