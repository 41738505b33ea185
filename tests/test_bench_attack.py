"""scripts/bench_attack.py (sliced references) and bench_certify.py --empirical on smoke runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smoke_runs) -> dict[str, Path]:
    """A smoke-trained 2x2 RegretNet and a certifiable (sparsemax) 2x2 net."""
    return smoke_runs(
        tmp_path_factory.mktemp("bench"),
        {
            "regretnet": ["mechanism=regretnet", "mechanism.hidden=[8]"],
            "sparsemax": ["mechanism=regretnet_sparsemax", "mechanism.hidden=[8,8]"],
        },
    )


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=600
    )


def test_reference_slices_join_into_one_baseline(trained, tmp_path):
    common = ["--run", str(trained["regretnet"]), "--profiles", "6", "--scale", "smoke"]
    common += ["--threads", "1"]
    slices = []
    for part in ("0:4", "4:6"):
        out = tmp_path / f"pgd_{part.replace(':', '_')}.json"
        done = bench(
            "bench_attack.py", *common, "--slice", part, "--attackers", "pgd", "--save-gains",
            "--no-oracle", "--out", str(out),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        slices.append(json.loads(out.read_text())["runs"][0])
    assert [s["slice"] for s in slices] == [[0, 4], [4, 6]]
    assert [len(s["attackers"]["pgd"]["gains"]) for s in slices] == [4, 2]

    out = tmp_path / "cmp.json"
    baselines = [a for s in ("4_6", "0_4") for a in ("--baseline", str(tmp_path / f"pgd_{s}.json"))]
    done = bench(
        "bench_attack.py", *common, "--attackers", "adaptive", *baselines, "--out", str(out)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads(out.read_text())["runs"][0]
    joined = run["baseline"]
    assert joined["slices"] == [[0, 4], [4, 6]]
    pieces = [s["attackers"]["pgd"] for s in slices]
    assert joined["deviation_steps"] == sum(p["deviation_steps"] for p in pieces)
    gains = torch.tensor([g for p in pieces for g in p["gains"]])
    assert joined["regret_max"] == pytest.approx(float(gains.max()))
    assert joined["regret_mean"] == pytest.approx(float(gains.double().mean()))
    assert set(run["attackers"]["adaptive"]["vs_reference"]) >= {
        "regret_mean_ratio",
        "deviation_steps_ratio",
    }
    assert "oracle_gap_mean_frac" in joined  # the grid oracle also scores the joined reference

    done = bench("bench_attack.py", *common, "--attackers", "adaptive", *baselines[:2])
    assert done.returncode != 0
    assert "do not cover profiles 0:6" in done.stderr


def test_slice_beyond_the_profiles_is_refused(trained):
    args = ["--run", str(trained["regretnet"]), "--profiles", "6", "--slice", "4:9"]
    done = bench("bench_attack.py", *args)
    assert done.returncode == 2 and "beyond --profiles 6" in done.stderr


def test_certify_empirical_stage_times_both_stress_tests(trained, tmp_path, compose):
    out = tmp_path / "empirical.json"
    done = bench(
        "bench_certify.py", "--run", str(trained["sparsemax"]), "--empirical", "--profiles", "3",
        "--scale", "smoke", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    smoke = compose("certify", ["scale=smoke"]).scale
    assert report["held_out_profiles"] == smoke.evaluation.profiles
    assert report["certified_profiles"] == 3
    assert report["previous"]["attacker"] == "pgd" and report["current"]["attacker"] == "adaptive"
    for key in ("previous", "current"):
        entry = report[key]
        assert entry["seconds"] > 0 and entry["deviation_steps"] > 0
        assert 0 <= entry["regret_mean"] <= entry["regret_max"]
    assert report["speedup"] == pytest.approx(
        report["previous"]["seconds"] / report["current"]["seconds"]
    )
    assert isinstance(report["regret_mean_same_3_digits"], bool)
