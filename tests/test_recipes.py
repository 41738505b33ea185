"""Recipes: a scale's measured schedule for one env and mechanism, applied by composition."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import compose_cfg

from auctionlab.conf import CONF_DIR
from auctionlab.schema import validate
from auctionlab.tracking import flatten

RECIPES = sorted((CONF_DIR / "recipe").rglob("*.yaml"))


def _select(cfg, path: str):
    node = cfg
    for part in path.split("."):
        node = node[part]
    return node


def _setting(path: Path) -> list[str]:
    scale, env, mechanism = path.relative_to(CONF_DIR / "recipe").with_suffix("").parts
    return [f"scale={scale}", f"env={env}", f"mechanism={mechanism}"]


def test_there_are_recipes():
    assert RECIPES, "conf/recipe/<scale>/<env>/<mechanism>.yaml: none found"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: "/".join(p.parts[-3:]))
def test_a_recipe_applies_to_its_setting_and_validates(path):
    spec = yaml.safe_load(path.read_text())
    cfg = compose_cfg("train", _setting(path))
    validate(cfg)
    for key, value in flatten(spec).items():
        assert _select(cfg, key) == value, key
    # the command line still wins over the recipe
    assert compose_cfg("train", [*_setting(path), "train.iterations=7"]).train.iterations == 7


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: "/".join(p.parts[-3:]))
def test_removing_the_recipe_leaves_the_scale_alone(path):
    plain = compose_cfg("train", [*_setting(path), "~recipe"])
    scale = _setting(path)[0].split("=")[1]
    assert plain.train.iterations == compose_cfg("train", [f"scale={scale}"]).scale.train.iterations


def test_a_setting_without_recipe_keeps_the_scale():
    cfg = compose_cfg("train", ["env=1x2", "mechanism=regretnet", "scale=cpu"])
    assert cfg.train.iterations == cfg.scale.train.iterations
    assert cfg.trainer.lr_decay_start is None


def test_the_console_script_names_the_recipe_it_trains_with(cli, tmp_path):
    # The main job's recipe at a tiny budget: the log names it, choices.json records it.
    out = tmp_path / "run"
    done = cli(
        "train",
        "train.iterations=3",
        "train.num_samples=256",
        "validation.profiles=8",
        "train.mlflow_model=false",
        "tracking=none",
        f"hydra.run.dir={out}",
    )
    assert done.returncode == 0, done.stderr
    assert "recipe cpu/2x2/regretnet" in (out / "train.log").read_text()
    assert '"recipe": "cpu/2x2/regretnet"' in (out / "choices.json").read_text()


def test_a_recipe_key_another_trainer_lacks_names_the_way_out(cli, tmp_path):
    out = tmp_path / "run"
    done = cli("train", "env=3x10", "trainer=lagrangian", f"hydra.run.dir={out}")
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("auctionlab: error: trainer.constraint.budget_end:")
    assert line.endswith("(set by recipe cpu/3x10/regretnet; add ~recipe to train without it)")
    assert not out.exists()
