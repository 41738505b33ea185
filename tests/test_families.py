"""Problem families live in config: the console script, ``--cfg job`` and the compose API agree.

Every env option declares its family; a mechanism of another family overrides it, so
``mechanism=rpfnet env=2x2`` composes [zeng2025rpf]'s allocation 2x2 with its primal-dual trainer
without any rewriting of the command line.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from omegaconf import OmegaConf

from auctionlab import cli
from auctionlab.components import build
from auctionlab.conf import compose, group_options

MECHANISMS = group_options("mechanism")
ENVS = group_options("env")


def cfg_job(*args: str) -> dict:
    """What ``auctionlab <args> --cfg job`` prints, as a container (the CLI's own code path)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            cli.main([*args, "--cfg", "job"])
    finally:  # leave no half-set Hydra app behind for the tests that follow in this process
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(OmegaConf.create(out.getvalue()))


@pytest.mark.parametrize("task", ["train", "evaluate"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_cfg_job_equals_the_compose_api(task, mechanism):
    printed = cfg_job(task, f"mechanism={mechanism}")
    composed = OmegaConf.to_container(compose(task, [f"mechanism={mechanism}"]))
    assert printed == composed


def test_console_script_cfg_job_equals_the_compose_api(cli):
    result = cli("train", "mechanism=rpfnet", "env=2x2", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.to_container(OmegaConf.create(result.stdout))
    assert printed == OmegaConf.to_container(compose("train", ["mechanism=rpfnet", "env=2x2"]))


@pytest.mark.parametrize(
    ("overrides", "env", "trainer"),
    [
        (["mechanism=rpfnet", "env=2x2"], "allocation/2x2", "primal_dual"),
        (["mechanism=rpfnet"], "allocation/2x2", "primal_dual"),
        (["mechanism=rpfnet", "env=10x3"], "allocation/10x3", "primal_dual"),
        (["mechanism=rpfnet", "env=2x2", "trainer=lagrangian"], "allocation/2x2", "lagrangian"),
        (["mechanism=regretnet", "env=2x2"], "2x2", "regret_budget"),
        (["mechanism=budgeted", "env=2x2"], "budgets/2x2", "regret_budget"),
        (["mechanism=solver_backed"], "ca_2x3", "regret_budget"),
        (["mechanism=ca_vcg", "env=ca_2x2"], "ca_2x2", "regret_budget"),
    ],
)
def test_family_resolves_env_and_trainer(overrides, env, trainer):
    cfg = compose("train", overrides)
    assert cfg.env.name == env
    assert cfg.trainer.name == trainer


@pytest.mark.parametrize("env", ENVS)
def test_declared_family_is_the_env_class_family(env):
    cfg = compose("train", [f"env={env}"])
    assert build(cfg.env, "env").family == cfg.family.name


def test_env_without_a_version_in_the_family_fails_in_one_line(cli):
    result = cli("train", "mechanism=solver_backed", "env=2x2", "scale=smoke")
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "\n" not in message
    assert "env=2x2 has no 'combinatorial' version" in message
    assert "combinatorial/ca_2x3" in message


def test_env_of_another_family_fails_in_one_line(cli):
    result = cli("train", "mechanism=rpfnet", "env=1x2_asym", "scale=smoke")
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "\n" not in message and "mechanism=rpfnet" in message and "allocation" in message


@pytest.fixture
def user_dir(tmp_path):
    """A user's config directory with a mechanism that extends a packaged one."""
    root = tmp_path / "myconf"
    (root / "mechanism").mkdir(parents=True)
    (root / "mechanism" / "small_regretnet.yaml").write_text(
        "defaults:\n  - regretnet\n  - _self_\nhidden: [8, 8]\n"
    )
    return root


@pytest.mark.parametrize("how", ["config-dir", "searchpath"])
def test_user_config_dir_options_are_chosen_by_name(how, user_dir, cli):
    where = (
        ["--config-dir", str(user_dir)]
        if how == "config-dir"
        else [f"hydra.searchpath=[file://{user_dir}]"]
    )
    args = ["train", "mechanism=small_regretnet", "scale=smoke", "tracking=none", "threads=1"]
    result = cli(*args, *where)
    assert result.returncode == 0, result.stderr[-2000:]
    (config,) = user_dir.parent.rglob("*_train/config.yaml")
    assert OmegaConf.load(config).mechanism.hidden == [8, 8]


def test_user_option_unknown_without_its_dir(cli):
    result = cli("train", "mechanism=small_regretnet", "scale=smoke")
    assert result.returncode == 2 and "mechanism=small_regretnet is not an option" in result.stderr
