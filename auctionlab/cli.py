"""``auctionlab <task> [hydra overrides]``: pick the task's primary config, then run Hydra.

Before Hydra starts, the overrides are composed once and the env/mechanism pair is built, so
bad input fails in one line that names the option and the valid choices, and no run directory
or MLflow run is left behind for it.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from pathlib import Path

from auctionlab.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
TASKS: dict[str, tuple[str, str]] = {
    "train": ("auctionlab.tasks.train", "fit a learned mechanism (RegretNet, RochetNet...)"),
    "evaluate": ("auctionlab.tasks.evaluate", "stress-test a trained run or a classical mechanism"),
    "reproduce": ("auctionlab.tasks.reproduce", "run an experiment's sweep into a table (--list)"),
    "runs": ("auctionlab.tasks.runs", "list recent MLflow runs with their key metrics"),
}
#: Hydra flags after which no composition check is wanted (they print and exit).
INFO_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--cfg",
    "-c",
    "--shell-completion",
    "-sc",
    "--resolve",
    "-p",
    "--package",
)
GROUPS = ("env", "mechanism", "attacker", "trainer", "scale", "tracking", "experiment")


def usage() -> str:
    """The top-level help text."""
    lines = ["usage: auctionlab <task> [hydra overrides] [-m]", "", "tasks:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in TASKS.items()]
    lines += [
        "",
        "config groups: " + ", ".join(f"{g} ({len(options(g))})" for g in GROUPS),
        "examples:",
        "  auctionlab train mechanism=regretnet env=2x2",
        "  auctionlab train -m env=1x2,2x2 seed=0,1 scale=smoke",
        "  auctionlab evaluate run=outputs/runs/<date>/<time>_train",
        "  auctionlab evaluate mechanism=myerson_itemwise env=2x2",
        "  auctionlab reproduce --list; auctionlab reproduce experiment=<name> scale=smoke",
        "  auctionlab runs            (recent runs and their metrics)",
        "  auctionlab <task> --help      (the task's options; --cfg job prints its config)",
    ]
    return "\n".join(lines)


def options(group: str) -> list[str]:
    """Available options of a config group (yaml names)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    print(f"auctionlab: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _first_value(override) -> str:
    """An override with any sweep replaced by its first value (for the pre-check)."""
    if not override.is_sweep_override():
        return override.input_line
    first = next(iter(override.sweep_string_iterator()))
    return f"{override.get_key_element()}={first}"


def precheck(task: str, args: list[str]) -> None:
    """Compose the config as Hydra will and build env + mechanism; exit in one line on error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    plain = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except OverrideParseException as err:
        fail(f"cannot parse overrides {' '.join(plain)}: {str(err).splitlines()[0]}")
    for override in parsed:
        key = override.get_key_element().lstrip("~+")
        if key in GROUPS and override.value_type is not None:
            values = (
                list(override.sweep_string_iterator())
                if override.is_sweep_override()
                else [override.value()]
            )
            for value in values:
                if str(value) not in options(key):
                    fail(
                        f"{key}={value} is not an option; choose one of: {', '.join(options(key))}"
                    )
    first = [_first_value(o) for o in parsed]
    try:
        cfg = _compose(task, first)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        fail(_explain(task, first, err))
    module = importlib.import_module(TASKS[task][0])
    module.prepare(cfg)


def _compose(task: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=task):
        return compose(config_name=task, overrides=overrides)


def _explain(task: str, overrides: list[str], err: Exception) -> str:
    """One line for a composition error; for an unknown key, the keys that do exist there."""
    text = " ".join(str(err).split()).split(" To append to your config")[0]
    match = re.search(r"override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text
    )
    if match:
        key = match.group(1).lstrip("+~")
        rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        parent, _, leaf = key.rpartition(".")
        try:
            node = _compose(task, rest)
            for part in filter(None, parent.split(".")):
                node = node[part]
            valid = ", ".join(str(k) for k in node.keys())
            where = f"'{parent}'" if parent else "the top level"
            return f"{key}: no key '{leaf}' in {where}; valid keys: {valid}"
        except Exception:  # noqa: BLE001 - fall back to Hydra's own words
            pass
    return f"bad override: {text}"


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    task, rest = argv[0], argv[1:]
    if task not in TASKS:
        fail(f"unknown task '{task}'; choose one of: {', '.join(TASKS)}")
    flags = getattr(importlib.import_module(TASKS[task][0]), "FLAGS", {})
    for flag, action in flags.items():  # task-specific flags such as `reproduce --list`
        if flag in rest:
            print(action())
            return
    try:
        if not any(a.split("=")[0] in INFO_FLAGS for a in rest):
            precheck(task, rest)
    except ConfigError as err:
        fail(str(err))

    import hydra
    from omegaconf import DictConfig

    module = importlib.import_module(TASKS[task][0])

    def task_function(cfg: DictConfig):
        logging.getLogger("auctionlab").setLevel(logging.INFO)
        try:
            return module.run(cfg)
        except ConfigError as err:
            fail(str(err))

    sys.argv = [f"auctionlab {task}", *rest]
    hydra.main(config_path=str(CONF_DIR), config_name=task, version_base="1.3")(task_function)()


if __name__ == "__main__":
    main()
