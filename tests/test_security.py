"""No code runs from a run directory, an overrides file or an audit log.

Each payload below would run code if Hydra built it (the control test proves it by building
each one and finding its marker file). Each route that reads a config from a file someone
else may have written must refuse it before any object is built: the marker stays absent.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from auctionlab import runs
from auctionlab.errors import ConfigError
from auctionlab.schema import INSTANTIATE_KEYS, check_target, check_targets


def payloads(marker: Path) -> dict[str, dict]:
    """Nodes that create ``marker`` when built, each hidden a different way."""
    opener = {"_target_": "builtins.open", "_args_": [str(marker), "w"]}
    return {
        # a target nested in the positional arguments of an allowed class
        "in _args_": {"_target_": "auctionlab.envs.distributions.Uniform", "_args_": [opener]},
        # a target inside a list value
        "in a list": {"_target_": "auctionlab.envs.distributions.Uniform", "low": [opener]},
        # an allowed-looking dotted name that Hydra's resolver follows to os.makedirs
        "re-export": {"_target_": "auctionlab.runs.os.makedirs", "_args_": [str(marker)]},
    }


PAYLOADS = ("in _args_", "in a list", "re-export")


@pytest.mark.parametrize("name", PAYLOADS)
def test_control_each_payload_runs_code_when_hydra_builds_it(tmp_path, name):
    # The payloads are live: without the gate, building them writes the marker.
    marker = tmp_path / "marker"
    try:
        instantiate(OmegaConf.create(payloads(marker)[name]))
    except Exception:  # noqa: BLE001 - Uniform([file]) fails after the file is opened
        pass
    assert marker.exists()


@pytest.mark.parametrize("name", PAYLOADS)
def test_the_gate_refuses_each_payload_without_building_it(tmp_path, name):
    marker = tmp_path / "marker"
    with pytest.raises(ConfigError, match=r"_target_=.*only component classes"):
        check_targets({"env": {"distribution": payloads(marker)[name]}})
    assert not marker.exists()


@pytest.mark.parametrize(
    "target",
    [
        "torch.load",  # allowed by name before: "anything in torch"
        "os.system",
        "pathlib.Path.unlink",
        "auctionlab.runs.Path",  # a class, re-exported by an auctionlab module
        "auctionlab.runs.torch.load",  # Hydra's resolver would follow this to torch.load
        "auctionlab.provenance.subprocess.Popen",
        "auctionlab.tracking.PrepareStore",  # ours, but not a component
        "auctionlab.schema",
        42,
    ],
)
def test_only_component_classes_defined_in_auctionlab_pass(target):
    with pytest.raises(ConfigError, match="only component classes defined in auctionlab"):
        check_target(target, "env")


def test_the_real_module_counts_not_the_name(monkeypatch, tmp_path):
    # A component class defined elsewhere and reached through an auctionlab name is refused.
    (tmp_path / "outside_pkg.py").write_text(
        "from auctionlab.envs.distributions import Uniform\nclass Evil(Uniform):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import outside_pkg

    monkeypatch.setattr(runs, "Evil", outside_pkg.Evil, raising=False)
    with pytest.raises(ConfigError, match="it is outside_pkg.Evil"):
        check_target("auctionlab.runs.Evil", "env.distribution")
    with pytest.raises(ConfigError, match="not in a trusted module"):
        check_target("outside_pkg.Evil", "env.distribution")
    # The user who runs the tool may trust their own package (a config file cannot).
    monkeypatch.setenv("AUCTIONLAB_TRUSTED_MODULES", "outside_pkg")
    assert check_target("outside_pkg.Evil", "env.distribution") is outside_pkg.Evil
    sys.modules.pop("outside_pkg", None)


def test_other_underscore_keys_are_refused():
    with pytest.raises(ConfigError, match=r"env._set_: keys starting with '_' are reserved"):
        check_targets({"env": {"_target_": "auctionlab.envs.AuctionEnv", "_set_": 1}})
    for key in set(INSTANTIATE_KEYS) - {"_target_"}:  # Hydra's own keys stay usable
        check_targets({"env": {"_target_": "auctionlab.envs.AuctionEnv", key: []}})


# -- the routes, through the console script -------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_console) -> Path:
    """One finished smoke training run (copied by each test that edits it)."""
    work = tmp_path_factory.mktemp("trained")
    done = run_console(["train", "scale=smoke", "hydra.run.dir=run"], work)
    assert done.returncode == 0, done.stderr
    return work / "run"


def _copy(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(trained, target)
    return target


def _reseal(directory: Path) -> None:
    """Recompute the run directory's manifest, as an attacker who edits files would.

    The manifest is tamper evidence, not a signature: the gate must hold on its own.
    """
    runs.write_manifest(directory)


@pytest.mark.parametrize("name", PAYLOADS)
def test_run_directory_config_cannot_run_code(trained, tmp_path, name):
    run = _copy(trained, tmp_path)
    marker = tmp_path / "marker"
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["env"]["distribution"] = payloads(marker)[name]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _reseal(run)
    with pytest.raises(ConfigError, match="only component classes defined in auctionlab"):
        runs.load_trained(str(run), "cpu")
    assert not marker.exists()


def test_evaluate_refuses_a_run_directory_carrying_a_payload(trained, tmp_path, cli):
    run = _copy(trained, tmp_path)
    marker = tmp_path / "marker"
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["env"]["distribution"] = payloads(marker)["re-export"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _reseal(run)
    done = cli("evaluate", f"run={run}", "scale=smoke")
    assert done.returncode == 2, done.stderr
    assert "auctionlab.runs.os.makedirs" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()


def test_resume_refuses_an_overrides_file_carrying_a_payload(trained, tmp_path, cli):
    run = _copy(trained, tmp_path)
    marker = tmp_path / "marker"
    recorded = run / ".hydra" / "overrides.yaml"
    opener = f"{{_target_:builtins.open,_args_:['{marker}',w]}}"
    overrides = [*yaml.safe_load(recorded.read_text()), f"mechanism.hidden=[{opener}]"]
    recorded.write_text(yaml.safe_dump(overrides))
    _reseal(run)
    done = cli("train", f"resume={run}")
    assert done.returncode == 2, done.stderr
    assert "mechanism.hidden[0]._target_='builtins.open'" in done.stderr
    assert not marker.exists()


def test_replay_refuses_an_audit_header_carrying_a_payload(tmp_path, cli):
    from auctionlab.audit import read_log, write_log

    done = cli("audit", "mechanism=ca_vcg", "env=ca_2x3", "profiles=4", "hydra.run.dir=audit")
    assert done.returncode == 0, done.stderr
    log = tmp_path / "cli" / "audit" / "audit.jsonl"
    head, rows = read_log(log)
    marker = tmp_path / "marker"
    head["configs"]["env"]["distribution"] = payloads(marker)["in _args_"]
    write_log(log, head, rows)  # a forger recomputes whatever the log's own checks need
    done = cli("replay", f"log={log}")
    assert done.returncode == 2, done.stderr
    assert "env.distribution._args_[0]._target_='builtins.open'" in done.stderr
    assert not marker.exists()
    json.loads(log.read_text().splitlines()[0])  # still a readable log, just refused


def test_resume_refuses_recorded_overrides_that_set_hydra_options(trained, tmp_path, cli):
    # Hydra builds callbacks and loads search paths from its own options: never from a file.
    run = _copy(trained, tmp_path)
    marker = tmp_path / "marker"
    recorded = run / ".hydra" / "overrides.yaml"
    callback = f"+hydra.callbacks.x={{_target_:auctionlab.runs.os.makedirs,_args_:['{marker}']}}"
    recorded.write_text(yaml.safe_dump([*yaml.safe_load(recorded.read_text()), callback]))
    _reseal(run)
    done = cli("train", f"resume={run}")
    assert done.returncode == 2, done.stderr
    assert "overrides.yaml sets " in done.stderr and "+hydra.callbacks.x=" in done.stderr
    assert "refusing to resume" in done.stderr and "Traceback" not in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (["scale=smoke", "hydra/launcher=joblib"], "sets 'hydra/launcher=joblib'"),
        (["hydra.searchpath=[file:///tmp]"], "sets 'hydra.searchpath=[file:///tmp]'"),
        ({"not": "a list"}, "is not a list of overrides"),
    ],
)
def test_recorded_overrides_are_checked(tmp_path, content, message):
    recorded = tmp_path / ".hydra" / "overrides.yaml"
    recorded.parent.mkdir()
    recorded.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=re.escape(message)):
        runs.read_recorded_overrides(recorded, "resume=x")


def test_a_saved_config_with_an_interpolation_is_refused(trained, tmp_path):
    # Saved configs are resolved; ${oc.env:...} would pull this machine's secrets into a run.
    run = _copy(trained, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["env"]["name"] = "${oc.env:HOME}"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _reseal(run)
    with pytest.raises(ConfigError, match=r"env.name='\$\{oc.env:HOME\}': an interpolation"):
        runs.load_trained(str(run), "cpu")


@pytest.mark.parametrize(
    "args, message",
    [
        # a component's own message, re-rooted where the component sits
        (["validation.attacker.steps=-1"], "validation.attacker.steps=-1 must be >= 0"),
        # the option the user typed, not the class's own name (ca_vcg is an AffineMaximizer)
        (["mechanism=ca_vcg"], "mechanism=ca_vcg is a fixed rule with nothing to train"),
        # the constructor's check, not Hydra's "full_key: mechanism"
        (["mechanism.hidden=[-3]"], "mechanism.hidden=[-3]: every layer width must be >= 1"),
    ],
)
def test_messages_name_what_the_user_typed(capsys, args, message):
    from auctionlab.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["train", "scale=smoke", *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"auctionlab: error: {message}") and err.count("\n") == 1
