"""``auctionlab <task> [hydra overrides]``: pick the task's primary config, then run Hydra.

Before Hydra starts, the overrides are composed once and the env/mechanism pair is built, so
bad input fails in one line that names the option and the valid choices, and no run directory
or MLflow run is left behind for it.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from auctionlab.conf import (
    CONFIG_MODULE,
    GROUPS,
    group_options,
    overrides_only,
    user_config_dirs,
)
from auctionlab.errors import ConfigError, RunError
from auctionlab.tasks import TASKS

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
#: Sweeps up to this many points are composed and built point by point before Hydra starts.
MAX_CHECKED_POINTS = 16


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


def options(group: str, search_dirs: Sequence[Path] = ()) -> list[str]:
    """Available options of a config group (yaml names; ``family/name`` for nested ones)."""
    return group_options(group, search_dirs)


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    print(f"auctionlab: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def sweep_points(parsed: list, limit: int = MAX_CHECKED_POINTS) -> list[list[str]]:
    """Override lists of the points a sweep will run (only the first when there are many).

    Returns no point when a sweep cannot be expanded here (``glob``): Hydra then checks it.

    Args:
        parsed: Hydra's parsed overrides.
        limit: most points to list; a larger sweep yields its first point only.
    """
    axes: list[list[str]] = []
    for override in parsed:
        if not override.is_sweep_override():
            axes.append([override.input_line])
            continue
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - e.g. glob(), which only Hydra's launcher can expand
            return []
        axes.append([f"{override.get_key_element()}={value}" for value in values])
    if math.prod(len(axis) for axis in axes) > limit:
        axes = [axis[:1] for axis in axes]
    return [list(point) for point in itertools.product(*axes)]


def precheck(task: str, args: list[str]) -> None:
    """Compose the config as Hydra will and build env + mechanism; exit in one line on error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    plain = overrides_only(args)
    listed = user_config_dirs(args)  # every user dir, for the option lists
    flag_dirs = user_config_dirs(args, include_searchpath=False)  # hydra.searchpath is an override
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except OverrideParseException as err:
        fail(f"cannot parse overrides {' '.join(plain)}: {str(err).splitlines()[0]}")
    for override in parsed:
        key = override.get_key_element().lstrip("~+")
        if key in GROUPS and override.value_type is not None:
            try:
                values = (
                    list(override.sweep_string_iterator())
                    if override.is_sweep_override()
                    else [override.value()]
                )
            except Exception:  # noqa: BLE001 - glob() sweeps: Hydra itself checks the options
                continue
            valid = options(key, listed)
            for value in values:
                if str(value) not in valid:
                    fail(f"{key}={value} is not an option; choose one of: {', '.join(valid)}")
    module = importlib.import_module(TASKS[task][0])
    # Every point of a small sweep is built here, so a bad combination fails before any job.
    for point in sweep_points(parsed):
        try:
            cfg = _compose(task, point, flag_dirs)
            OmegaConf.resolve(cfg)
        except (HydraException, OmegaConfBaseException, ValueError) as err:
            fail(_explain(task, point, err, flag_dirs))
        module.prepare(cfg)
        from auctionlab.tracking import check_tracking

        check_tracking(cfg.get("tracking"))


def resume_overrides(args: list[str]) -> list[str]:
    """``train resume=DIR [more]``: DIR's own overrides, then ``more``; outputs go to DIR.

    The resumed run composes the same config as the run it continues (its
    ``.hydra/overrides.yaml``), with any override given now taking precedence (e.g. a larger
    ``train.iterations``), and writes into the same run directory. DIR is passed on quoted
    (``resume='DIR'``, ``hydra.run.dir='DIR'``): Hydra would read a comma in it as a sweep.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain = overrides_only(args)
    given = [a for a in plain if a.split("=", 1)[0].lstrip("+~") == "resume"]
    if not given or given[-1].split("=", 1)[1] in ("", "null"):
        return args
    if any(a in ("-m", "--multirun") for a in args):
        fail("resume=... continues one run; it cannot be combined with -m")
    text = given[-1].split("=", 1)[1]
    try:  # an already quoted path is unquoted; anything else ("a,b", "[x]") is the path itself
        parsed = OverridesParser.create().parse_override(given[-1])
        value = parsed.value() if not parsed.is_sweep_override() else None
    except Exception:  # noqa: BLE001 - not valid override syntax: a literal path
        value = None
    directory = Path(value if isinstance(value, str) else text).expanduser()
    recorded = directory / ".hydra" / "overrides.yaml"
    if not recorded.exists():
        fail(f"resume={directory}: not a train run directory (no .hydra/overrides.yaml)")
    from omegaconf import OmegaConf

    def quoted(path: Path) -> str:
        # Hydra's quoted string: escape quotes, and backslashes before a quote or the end.
        body = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, str(path))
        return "'" + body.replace("'", "\\'") + "'"

    key = lambda o: o.split("=", 1)[0].lstrip("+~")  # noqa: E731
    now = {key(a) for a in plain}
    before = [str(o) for o in OmegaConf.load(recorded) if key(str(o)) not in now | {"resume"}]
    given_now = [a for a in args if a not in given] + [f"resume={quoted(directory)}"]
    extra = [] if "hydra.run.dir" in now else [f"hydra.run.dir={quoted(directory)}"]
    return [*before, *given_now, *extra]


def _compose(task: str, overrides: list[str], search_dirs: Sequence[Path] = ()):
    from auctionlab.conf import compose

    return compose(task, overrides, search_dirs)


def _explain(
    task: str, overrides: list[str], err: Exception, search_dirs: Sequence[Path] = ()
) -> str:
    """One line for a composition error; for an unknown key, the keys that do exist there."""
    variant = re.search(r"Could not find 'env_variants/([^/']+)/([^']+)'", str(err))
    if variant:
        name, family = variant.groups()
        same_family = [o for o in options("env", search_dirs) if o.startswith(f"{family}/")]
        chosen = next((o for o in overrides if o.split("=", 1)[0] == "mechanism"), "")
        return (
            f"env={name} has no '{family}' version ({chosen or 'the mechanism'} solves "
            f"'{family}' problems); choose one of: {', '.join(same_family)}"
        )
    text = " ".join(str(err).split()).split(" To append to your config")[0]
    match = re.search(r"override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text
    )
    if match:
        key = match.group(1).lstrip("+~")
        rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
        parent, _, leaf = key.rpartition(".")
        try:
            node = _compose(task, rest, search_dirs)
            for part in filter(None, parent.split(".")):
                node = node[part]
            valid = ", ".join(str(k) for k in node.keys())
            where = f"'{parent}'" if parent else "the top level"
            return f"{key}: no key '{leaf}' in {where}; valid keys: {valid}"
        except Exception:  # noqa: BLE001 - fall back to Hydra's own words
            pass
    return f"bad override: {text}"


def main(argv: list[str] | None = None) -> None:
    """Console entry point.

    SIGTERM (``timeout``, Slurm pre-emption, ``docker stop``) stops a task as Ctrl-C does:
    training saves a checkpoint after its current step and prints the resume command, every
    task's MLflow run is marked KILLED, and a second signal stops at once. An interrupted task
    exits with status 128 + the signal's number, as a shell reports it: 130 for Ctrl-C, 143
    for SIGTERM.
    """
    import signal

    from auctionlab.errors import InterruptedRunError, catch_stop_signals
    from auctionlab.tracking import bound_http_waits

    catch_stop_signals()
    bound_http_waits()  # no MLflow call of any task waits minutes on a server
    try:
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
        if task == "train":
            rest = resume_overrides(rest)
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
            except InterruptedRunError as err:  # stopped cleanly (a checkpoint was saved)
                print(f"auctionlab: run failed: {err}", file=sys.stderr)
                raise SystemExit(128 + err.signum) from None
            except RunError as err:  # started, then failed: status 1
                print(f"auctionlab: run failed: {err}", file=sys.stderr)
                raise SystemExit(1) from None

        # Hydra's own flags first: argparse stops collecting overrides at the first flag.
        overrides = overrides_only(rest)
        flags = [a for a in rest if a not in overrides]
        sys.argv = [f"auctionlab {task}", *flags, *overrides]
        hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=task, version_base="1.3")(
            task_function
        )()
    except KeyboardInterrupt as err:  # the task's MLflow run, if it had one, is KILLED by now
        signum = int(getattr(err, "signum", signal.SIGINT))
        print(f"auctionlab: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        raise SystemExit(128 + signum) from None


if __name__ == "__main__":
    main()
