"""``auctionlab certify certifier=statistical``: end to end through the console script."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from auctionlab.certify.statistical import first_price_population_regret


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_console) -> Path:
    """A smoke-trained certified_equivariant run (constrained ERM: regret + IR constraints)."""
    root = tmp_path_factory.mktemp("trained_cert")
    directory = root / "cert"
    done = run_console(
        [
            "train",
            "mechanism=certified_equivariant",
            "mechanism.hidden=[16,16]",
            "trainer=constrained_erm",
            "trainer.constraint.heldout_profiles=128",
            "trainer.constraint.heldout_batch=32",
            "env=2x2",
            "scale=smoke",
            "threads=1",
            f"hydra.run.dir={directory}",
        ],
        root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((directory / "metrics.json").read_text())
    assert "train_ir_violation" in metrics and "mu_mean" in metrics and "heldout_regret" in metrics
    return directory


def test_first_price_certificate_end_to_end(cli, tmp_path, list_runs):
    out = tmp_path / "fp"
    done = cli(
        "certify",
        "certifier=statistical",
        "mechanism=first_price",
        "env=2x2",
        "scale=smoke",
        "threads=1",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("certificate.json", "certificate.md", "per_sample.csv", "metrics.json"):
        assert (out / name).exists(), name
    report = json.loads((out / "certificate.json").read_text())
    cert = report["certificate"]
    truth = first_price_population_regret(2, 2)
    # The estimate is near the closed form and the bound sits above it.
    assert abs(cert["regret"]["estimate_max"] - truth) < 0.1
    assert cert["regret"]["bound_max"] >= truth
    assert cert["ir"]["bound_max"] == 0.0  # first price is IR by design: range 0
    assert cert["regret"]["delta_each"] == pytest.approx(0.05 * 0.5 / 2)
    assert report["oracle"]["kind"] == "estimated" and report["oracle"]["gap"]["eta"] >= 0
    assert report["oracle"]["holdout"]["steps"] == 20  # smoke budget, logged with the regret
    assert len(report["regret_vs_budget"]) == 6
    assert report["stress_tests"]["random_misreports"]["samples"] == 200
    assert "config_sha256" in report["mechanism"] and report["data"]["holdout"]["sha256"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["regret_bound"] == pytest.approx(cert["regret"]["bound_max"])
    assert metrics["objective"] == metrics["revenue"]  # certify.yaml's default objective
    assert "objective" not in report  # the certificate's own report is left as it was
    runs = [r for r in list_runs() if r.data.tags.get("certifier") == "statistical"]
    assert runs and "regret_bound" in runs[0].data.metrics
    assert runs[0].data.tags["objective"] == "maximize revenue"
    markdown = (out / "certificate.md").read_text()
    assert "Statistical certificate: first_price on 2x2" in markdown and "eta" in markdown


def test_exact_oracle_has_no_gap(compose):
    from auctionlab.tasks import certify

    cfg = compose(
        "certify",
        [
            "certifier=statistical",
            "certifier.oracle=exact",
            "mechanism=first_price",
            "env=3x1",
            "scale=smoke",
            "tracking=none",
        ],
    )
    metrics = certify.run(cfg)  # outside Hydra: writes to outputs/adhoc in the temp cwd
    report = json.loads(Path("outputs/adhoc/certificate.json").read_text())
    assert report["oracle"]["kind"] == "exact" and report["oracle"]["gap"]["eta"] == 0.0
    assert metrics["eta"] == 0.0 and metrics["attack_steps"] == 0
    assert report["certificate"]["regret"]["bound_max"] >= first_price_population_regret(3, 1)


def test_trained_run_certificate_checks_disjoint_data_and_lipschitz(trained, cli, tmp_path):
    out = tmp_path / "cert"
    done = cli(
        "certify",
        "certifier=statistical",
        f"run={trained}",
        "scale=smoke",
        "threads=1",
        "tracking=none",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "certificate.json").read_text())
    data = report["data"]
    assert data["training"]["profiles"] == 640 and data["training"]["overlap_with_holdout"] == 0
    assert data["validation"]["overlap_with_holdout"] == 0
    assert data["dual_pool"]["overlap_with_holdout"] == 0
    lipschitz = report["mechanism"]["lipschitz"]
    assert lipschitz["agree"] and lipschitz["L_recomputed"] > 0
    assert report["mechanism"]["checkpoint_sha256"]
    cert = report["certificate"]
    assert cert["regret"]["range"] == pytest.approx(4.0)  # bundle value 2 + payment cap B = 2
    assert cert["ir"]["range"] == pytest.approx(2.0)
    assert all(
        b >= e for b, e in zip(cert["regret"]["bound"], cert["regret"]["estimate"], strict=True)
    )
    assert report["train_holdout_gap"]["train_profiles"] == 64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["certifier.delta=1.5"], "certifier.delta=1.5 must be in (0, 1)"),
        (["certifier.slack=chernoff"], "certifier.slack=chernoff is not valid"),
        (["certifier.oracle=exact", "mechanism=vcg"], "certifier.oracle=exact has no closed form"),
        (["certifier.delta_split.regret=0.9"], "certifier.delta_split="),
        (["mechanism=regretnet"], "pass run=<train run dir>"),
    ],
)
def test_bad_options_fail_before_any_work(compose, overrides, message):
    from auctionlab.errors import ConfigError
    from auctionlab.tasks import certify

    if not any(o.startswith("mechanism=") for o in overrides):
        overrides = [*overrides, "mechanism=first_price"]
    cfg = compose("certify", ["certifier=statistical", "tracking=none", *overrides])
    with pytest.raises(ConfigError) as err:
        certify.prepare(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_option_is_one_line_on_the_console(cli):
    done = cli("certify", "certifier=statistical", "mechanism=first_price", "certifier.delta=0")
    assert done.returncode == 2
    assert done.stderr.strip() == "auctionlab: error: certifier.delta=0 must be in (0, 1)"


def test_holdout_seed_used_in_training_is_refused(trained, compose):
    from auctionlab.errors import ConfigError
    from auctionlab.tasks import certify

    cfg = compose(
        "certify", ["certifier=statistical", f"run={trained}", "certifier.holdout_seed=0"]
    )
    with pytest.raises(ConfigError, match="certifier.holdout_seed=0 is a seed the training used"):
        certify.prepare(cfg)


@pytest.mark.parametrize(
    ("name", "points"), [("cert_benchmarks", 9), ("cert_fairness", 4), ("cert_procurement", 2)]
)
def test_cert_experiments_are_valid_plans(compose, name, points):
    from auctionlab.tasks import reproduce

    plan = reproduce.prepare(compose("reproduce", [f"experiment={name}", "scale=smoke"]))
    assert len(plan.points) == points


@pytest.mark.slow
def test_cert_benchmarks_smoke_end_to_end(cli, tmp_path):
    out = tmp_path / "bench"
    done = cli(
        "reproduce",
        "experiment=cert_benchmarks",
        "scale=smoke",
        "threads=1",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = (out / "cert_benchmarks.md").read_text()
    assert "regret_bound" in text and "eta" in text and "restarts" in text
    with (out / "points.csv").open() as handle:
        jobs = list(csv.DictReader(handle))
    assert {j["stage"] for j in jobs} == {"train", "certify"}
    assert all(j["status"] == "FINISHED" for j in jobs)


@pytest.fixture(scope="module")
def sparsemax_run(tmp_path_factory) -> Path:
    """A tiny regretnet_sparsemax (MIP-certifiable) trained in-process for a few steps."""
    import shutil

    from conftest import compose_cfg

    from auctionlab.tasks import train

    root = tmp_path_factory.mktemp("sparsemax")
    cwd = Path.cwd()
    import os

    os.chdir(root)
    try:
        cfg = compose_cfg(
            "train",
            [
                "mechanism=regretnet_sparsemax",
                "mechanism.hidden=[4,4]",
                "env=2x2",
                "scale=smoke",
                "train.iterations=5",
                "tracking=none",
                "threads=1",
            ],
        )
        train.run(cfg)
        shutil.copytree(root / "outputs" / "adhoc", root / "run")
    finally:
        os.chdir(cwd)
    return root / "run"


def _certify(compose, *overrides: str) -> tuple[dict, dict]:
    from auctionlab.tasks import certify

    # Only the parts under test: no stress tests or train-gap re-attacks.
    light = ["certifier.stress.profiles=0", "certifier.train_profiles=0"]
    cfg = compose(
        "certify", ["certifier=statistical", "scale=smoke", "tracking=none", *light, *overrides]
    )
    metrics = certify.run(cfg)  # outside Hydra: outputs/adhoc in the temp cwd
    return metrics, json.loads(Path("outputs/adhoc/certificate.json").read_text())


def test_exact_eta_by_mip_on_the_whole_holdout_and_on_a_subsample(sparsemax_run, compose):
    metrics, report = _certify(
        compose,
        f"run={sparsemax_run}",
        "certifier.eta=exact",
        "certifier.eta_profiles=null",
        "certifier.holdout_profiles=6",
        "certifier.mip.bounds=ibp",
        "certifier.curve_profiles=0",
    )
    gap = report["oracle"]["gap"]
    # Whole holdout: every (profile, bidder) solved, the certified regret is the MIP's, eta 0.
    assert gap["kind"] == "exact" and gap["eta"] == 0.0 and gap["solves"] == 12
    assert gap["status"] == {"optimal": 12} and gap["numerical"] == 0
    assert gap["exact_regret_on_subsample"] >= gap["holdout_regret_on_subsample"] - 1e-9
    assert metrics["eta_exact"] == 1.0 and metrics["eta_exact_solves"] == 12
    cert = report["certificate"]["regret"]
    assert cert["estimate_max"] == pytest.approx(max(cert["estimate"]))
    assert sum(cert["estimate"]) / 2 == pytest.approx(gap["exact_regret_on_subsample"], rel=1e-5)
    assert math.isfinite(cert["range"])  # payments bounded by interval propagation
    assert "eta exact" in report["statement"]
    # Subsample: eta = mean gap + its own slack at delta_r / 2; labelled as estimated from solves.
    metrics, report = _certify(
        compose,
        f"run={sparsemax_run}",
        "certifier.eta=auto",
        "certifier.eta_profiles=3",
        "certifier.holdout_profiles=12",
        "certifier.mip.bounds=ibp",
        "certifier.curve_profiles=0",
    )
    gap = report["oracle"]["gap"]
    assert gap["kind"] == "estimated from 6 exact solves" and gap["solves"] == 6
    assert gap["eta"] >= max(gap["gap_estimate"]) and gap["eta"] > 0  # slack > 0
    assert gap["gap_delta"] == pytest.approx(0.05 * 0.5 / 2)
    assert report["certificate"]["regret"]["delta"] == pytest.approx(0.05 * 0.5 / 2)
    assert metrics["eta_exact"] == 1.0 and metrics["eta_exact_solves"] == 6


def test_exact_eta_is_refused_where_no_mip_applies_and_auto_falls_back(compose):
    from auctionlab.errors import ConfigError
    from auctionlab.tasks import certify

    base = ["certifier=statistical", "mechanism=first_price", "env=2x2", "tracking=none"]
    with pytest.raises(ConfigError) as err:
        certify.prepare(compose("certify", [*base, "certifier.eta=exact"]))
    assert "certifier.eta=exact needs a MIP-certifiable network" in str(err.value)
    assert "\n" not in str(err.value)
    parts = certify.prepare(compose("certify", [*base, "certifier.eta=auto"]))
    assert parts["options"]["eta_mode"] == "estimated"
    with pytest.raises(ConfigError, match="certifier.eta=sometimes is not valid; choose one of"):
        certify.prepare(compose("certify", [*base, "certifier.eta=sometimes"]))


def test_random_misreport_certification_under_reports_first_price(compose):
    common = ["mechanism=first_price", "env=2x2", "certifier.holdout_profiles=128"]
    pgd, _ = _certify(compose, *common)
    weak, report = _certify(
        compose, *common, "certifier.oracle=random", "certifier.random_oracle_samples=8"
    )
    assert report["oracle"]["holdout"]["attacker"] == "random"
    assert weak["attack_restarts"] == 8 and weak["attack_steps"] == 0
    # The weak oracle finds less regret on the same holdout; the stronger audit oracle that
    # estimates eta (warm-started from its misreports) reports the difference as a gap.
    assert weak["regret_estimate_max"] < pgd["regret_estimate_max"] - 0.01
    assert weak["eta"] > pgd["eta"]
    assert report["regret_vs_budget"][-1]["oracle"] == "random search (certification)"


@pytest.mark.parametrize(("name", "points"), [("cert_scaling", 36), ("cert_budgets", 4)])
def test_scaling_and_budget_experiments_are_valid_plans(compose, name, points):
    from auctionlab.tasks import reproduce

    plan = reproduce.prepare(compose("reproduce", [f"experiment={name}", "scale=smoke"]))
    assert len(plan.points) == points
    if name == "cert_scaling":  # n, m in {2, 4, 8}, envs named after their shape
        shapes = {
            tuple(o.split("=")[1] for o in p.overrides if o.startswith("env.n_"))
            for p in plan.points
        }
        assert shapes == {(a, b) for a in ("2", "4", "8") for b in ("2", "4", "8")}
