"""The staged RPF-Net schedule (experiment rpf_stages) and the pipeline's ``resume`` stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

from auctionlab.errors import ConfigError
from auctionlab.experiments import stage_arguments
from auctionlab.experiments.stages import resume_overrides
from auctionlab.tasks import reproduce

#: The README's schedule (iterations, epsilon per stage), formerly scripts/rpf_stages.py's.
SCHEDULE = [
    (2000, 1e-3),
    (3000, 1e-3),
    (4000, 1.5e-3),
    (5000, 1.5e-3),
    (6000, 1.2e-3),
    (7000, 1.2e-3),
    (8000, 1.2e-3),
    (9000, 1.2e-3),
    (10000, 1.2e-3),
    (11000, 1.6e-3),
    (12000, 1.6e-3),
    (13000, 1.6e-3),
]


def _value(point, key: str) -> str | None:
    found = [o.split("=", 1)[1] for o in point.overrides if o.split("=", 1)[0] == key]
    return found[-1] if found else None


def test_the_cpu_plan_is_the_readme_schedule_with_pf_first():
    plan = reproduce.prepare(compose_cfg("reproduce", ["experiment=rpf_stages"]))
    assert plan.pipeline == ["resume", "evaluate"] and plan.scale == "cpu"
    pf, *stages = plan.points
    assert pf.labels["mechanism"] == "pf" and pf.skip == ("resume",)
    assert [(int(_value(p, "train.iterations")), float(_value(p, "trainer.constraint.epsilon")))
            for p in stages] == SCHEDULE  # fmt: skip
    # Each resume decays the learning rate over the iterations it adds (previous / this).
    assert _value(stages[0], "trainer.lr_decay_start") is None
    for (before, _), (now, _), point in zip(SCHEDULE[:-1], SCHEDULE[1:], stages[1:], strict=True):
        assert float(_value(point, "trainer.lr_decay_start")) == pytest.approx(before / now, 1e-6)
    assert plan.stage_overrides["resume"] == ["trainer.lr_decay_to=0.1"]
    # The first stage trains on 64 000 profiles from multipliers 0 with rpf_table1's settings.
    train = plan.stage_overrides["train"]
    assert "train.num_samples=64000" in train and "trainer.constraint.gamma_init=0" in train
    assert "profile_seed=12345" in plan.stage_overrides["evaluate"]


def test_stage_arguments_of_a_resume_pipeline():
    plan = reproduce.prepare(compose_cfg("reproduce", ["experiment=rpf_stages", "scale=smoke"]))
    pf, first, second = plan.points
    pipeline = plan.pipeline
    # PF skips training: evaluated with its own overrides; a stage gets its sweep overrides,
    # its evaluate the stage's run directory.
    assert stage_arguments("evaluate", pf, pipeline, {}) == pf.overrides
    assert stage_arguments("resume", second, pipeline, {}) == second.overrides
    done = {"resume": "/r"}
    assert stage_arguments("evaluate", second, pipeline, done) == ["run='/r'"]
    assert _value(first, "train.iterations") == "10" and _value(second, "train.iterations") == "20"


def test_resume_continues_a_copy_with_the_new_overrides_winning(tmp_path):
    previous = tmp_path / "a"
    (previous / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(["mechanism=rpfnet", "train.iterations=10", "+tracking.parent_run_id=x"]),
        previous / ".hydra" / "overrides.yaml",
    )
    for name in ("tracking.json", "metrics.json", "checkpoint.pt"):
        (previous / name).write_text("{}")
    copy = tmp_path / "b"
    out = resume_overrides(previous, copy, ["train.iterations=20", "+tracking.parent_run_id=y"])
    assert out == [
        "mechanism=rpfnet",
        "train.iterations=20",
        "+tracking.parent_run_id=y",
        f"resume='{copy}'",
    ]
    # The earlier stage stays as it was; the copy gets its own MLflow run and metrics.
    assert (previous / "tracking.json").exists() and (previous / "metrics.json").exists()
    assert (copy / "checkpoint.pt").exists()
    assert not (copy / "tracking.json").exists() and not (copy / "metrics.json").exists()


@pytest.mark.parametrize(
    "pipeline", ["[train,resume,evaluate]", "[resume,train]", "[teacher,resume]", "[certify]"]
)
def test_bad_resume_pipelines_fail_in_one_line(pipeline):
    cfg = compose_cfg(
        "reproduce", ["experiment=rpf_stages", "scale=smoke", f"experiment.pipeline={pipeline}"]
    )
    with pytest.raises(ConfigError) as info:
        reproduce.prepare(cfg)
    assert "pipeline" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow  # three short trains and three evaluations in-process: about 30 seconds
def test_smoke_run_resumes_every_stage_in_its_own_directory(compose, tmp_path, monkeypatch):
    cfg = compose(
        "reproduce", ["experiment=rpf_stages", "scale=smoke", "threads=1", "tracking=none"]
    )
    monkeypatch.chdir(tmp_path)
    summary = reproduce.run(cfg)
    assert summary["jobs"] == 5 and summary["jobs_failed"] == 0
    (points,) = tmp_path.glob("outputs/**/points")
    first, second = sorted(p / "resume" for p in points.iterdir() if "rpfnet" in p.name)
    assert json.loads((second / "metrics.json").read_text())["iterations"] == 20
    resumed = Path(OmegaConf.load(second / "config.yaml").resume).resolve()
    assert resumed == second.resolve()  # resumed in the copy
    assert json.loads((first / "metrics.json").read_text())["iterations"] == 10
