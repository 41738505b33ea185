"""``auctionlab <task> [hydra overrides]``: pick the task's primary config, then run Hydra.

Before Hydra starts, the overrides are composed once and the env/mechanism pair is built, so
bad input fails in one line that names the option and the valid choices, and no run directory
or MLflow run is left behind for it.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import itertools
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
#: Every point of a sweep is composed and validated before Hydra starts; up to this many are
#: also built (``prepare``): all of a small sweep, else a sample with every swept value.
MAX_CHECKED_POINTS = 16
#: Free space below which a run is refused before it starts (checkpoints, figures, logs).
MIN_FREE_BYTES = 1 << 20


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
        "  auctionlab tune scale=smoke tune.trials=4   (again: continues the study)",
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


def sweep_points(parsed: list) -> list[list[str]]:
    """Override lists of every point a sweep will run, in Hydra's job order.

    Returns no point when a sweep cannot be expanded here (``glob``): Hydra then checks it.

    Args:
        parsed: Hydra's parsed overrides.
    """
    # As Hydra's basic sweeper: one axis per key (a repeated key keeps its first place and
    # its last value), the first axis outermost.
    axes: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [override.input_line]
            continue
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - e.g. glob(), which only Hydra's launcher can expand
            return []
        axes[key] = [f"{key}={value}" for value in values]
    return [list(point) for point in itertools.product(*axes.values())]


def _built_sample(points: list[list[str]], swept: list[int], limit: int) -> list[int]:
    """Which points to build (``prepare``): all of a small sweep, else a sample.

    The sample is the first point, then each point that brings a swept value not built yet,
    at most ``limit`` in all: every value of every axis is built once in a typical sweep.
    """
    if len(points) <= limit:
        return list(range(len(points)))
    chosen, seen = [0], {points[0][i] for i in swept}
    for number, point in enumerate(points):
        if len(chosen) >= limit:
            break
        new = {point[i] for i in swept} - seen
        if new:
            chosen.append(number)
            seen |= new
    return chosen


def _output_dir(hydra_node, multirun: bool) -> Path | None:
    """Where Hydra will write (``hydra.sweep.dir`` / ``hydra.run.dir``), or ``None``."""
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(hydra_node, "sweep.dir" if multirun else "run.dir")
    except Exception:  # noqa: BLE001 - e.g. a resolver only a running job has: Hydra decides
        return None
    return Path(str(value)).expanduser() if value else None


def _check_writable(directory: Path) -> None:
    """Refuse in one line when Hydra could not create or fill ``directory``.

    Hydra makes the run directory and writes ``.hydra/`` before any task code runs, so a
    read-only file system, a directory without write permission or a full disk would
    otherwise end in its traceback.
    """
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        fail(f"cannot write {directory}: {os.strerror(errno.EROFS if read_only else errno.EACCES)}")
    stats = os.statvfs(existing)
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        fail(f"cannot write {directory}: {os.strerror(errno.ENOSPC)} ({free // 1024} KiB free)")


def precheck(task: str, args: list[str]) -> None:
    """Compose the config as Hydra will and build env + mechanism; exit in one line on error.

    Every point of a sweep (``-m``) is composed, resolved and validated before any job runs
    (one Hydra initialization for all); a sample of them is also built (``prepare``). The first
    failing point is named by its swept overrides, and nothing is run.
    """
    from hydra import compose as hydra_compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from auctionlab.conf import hydra_initialized, searchpath_override
    from auctionlab.schema import validate
    from auctionlab.tracking import check_tracking
    from auctionlab.utils import check_seeds

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
    points = sweep_points(parsed)
    # positions of the swept keys in a point (the order of sweep_points' axes)
    axes = list(dict.fromkeys(o.get_key_element() for o in parsed))
    sweeps = {o.get_key_element(): o.is_sweep_override() for o in parsed}
    swept = [i for i, key in enumerate(axes) if sweeps[key]]

    def where(number: int) -> str:
        """How a message names a sweep's point (nothing for a single run)."""
        if len(points) < 2:
            return ""
        chosen = " ".join(points[number][i] for i in swept)
        return f"sweep job {number} of {len(points)} ({chosen}): "

    # Compose every point under one Hydra initialization (the expensive part is per point).
    configs, hydra_nodes, failed = [], [], None
    with hydra_initialized(task):
        for number, point in enumerate(points):
            try:
                cfg = hydra_compose(
                    config_name=task,
                    overrides=[*point, *searchpath_override(flag_dirs)],
                    return_hydra_config=True,  # where the jobs write, and the group choices
                )
            except (HydraException, OmegaConfBaseException, ValueError) as err:
                failed = (number, err)
                break
            with open_dict(cfg):
                hydra_nodes.append(cfg.pop("hydra"))
            configs.append(cfg)
    if failed is not None:
        number, err = failed
        fail(where(number) + _explain(task, points[number], err, flag_dirs))
    if configs:
        multirun = any(a in ("-m", "--multirun") for a in args)
        directory = _output_dir(hydra_nodes[0], multirun)
        if directory is not None:
            _check_writable(directory)
    built = _built_sample(points, swept, MAX_CHECKED_POINTS)
    # Cheap checks of every point first (resolution, seeds, schema), then the sample is built,
    # then each distinct tracking store is probed.
    for number, cfg in enumerate(configs):
        try:
            OmegaConf.resolve(cfg)
        except (OmegaConfBaseException, ValueError) as err:
            fail(where(number) + _explain(task, points[number], err, flag_dirs))
        with _naming(where(number)):
            check_seeds(OmegaConf.to_container(cfg))
            if len(points) > 1:  # all points before any is built (prepare validates its own)
                validate(cfg)
    for number in built:
        with _naming(where(number)), _as_job(configs[number], hydra_nodes[number]):
            module.prepare(configs[number])
    probed: set[str] = set()
    for number, cfg in enumerate(configs):
        tracking = cfg.get("tracking")
        key = json.dumps(OmegaConf.to_container(tracking) if tracking else None, default=str)
        if key not in probed:
            probed.add(key)
            with _naming(where(number)):
                check_tracking(tracking)


@contextlib.contextmanager
def _as_job(cfg: Any, hydra_node: Any) -> Iterator[None]:
    """Hydra's job config set while a point is built, so messages name the chosen options.

    (``mechanism=ca_vcg``, not the class's own name); unset again afterwards, before Hydra
    itself starts.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    job = OmegaConf.create({})
    with open_dict(job):
        job.hydra = hydra_node
    HydraConfig.instance().set_config(job)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = None


@contextlib.contextmanager
def _naming(point: str) -> Iterator[None]:
    """A ``ConfigError`` of a sweep's point ends the check in one line that names the point."""
    try:
        yield
    except ConfigError as err:
        if not point:
            raise  # a single run: main() prints it as it is
        fail(point + str(err))


def in_multirun() -> bool:
    """Whether the running Hydra job is a job of a multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().get("mode") == RunMode.MULTIRUN


def job_failed(message: str) -> Any:
    """A multirun job's failure: printed in one line, returned to Hydra so the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig

    from auctionlab.experiments.multirun import JobFailure

    number = HydraConfig.get().job.num
    print(f"auctionlab: sweep job {number}: {message}", file=sys.stderr)
    return JobFailure(message)


def job_dir_override(overrides: list[str]) -> list[str]:
    """The multirun's fixed keys left out of job directory names (``hydra.sweep.subdir``).

    Only what the command line sweeps names a job's directory (``3_env-2x2_seed-1``); nothing
    when the user chose ``hydra.job.config.override_dirname.exclude_keys`` or the overrides
    cannot be parsed here (Hydra then reports them).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from auctionlab.experiments.multirun import EXCLUDE_KEYS, fixed_keys

    if any(o.split("=", 1)[0].lstrip("+~") == EXCLUDE_KEYS for o in overrides):
        return []
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - Hydra gives the error
        return []
    fixed = fixed_keys(parsed)
    if not fixed:
        return []
    listed = ",".join("'" + k.replace("\\", "\\\\").replace("'", "\\'") + "'" for k in fixed)
    return [f"{EXCLUDE_KEYS}=[{listed}]"]


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

    def quoted(path: Path) -> str:
        # Hydra's quoted string: escape quotes, and backslashes before a quote or the end.
        body = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, str(path))
        return "'" + body.replace("'", "\\'") + "'"

    key = lambda o: o.split("=", 1)[0].lstrip("+~")  # noqa: E731
    now = {key(a) for a in plain}
    before = [str(o) for o in _recorded_overrides(recorded) if key(str(o)) not in now | {"resume"}]
    given_now = [a for a in args if a not in given] + [f"resume={quoted(directory)}"]
    extra = [] if "hydra.run.dir" in now else [f"hydra.run.dir={quoted(directory)}"]
    return [*before, *given_now, *extra]


def _recorded_overrides(path: Path) -> list[str]:
    """A run's recorded overrides (checked: see ``runs.read_recorded_overrides``)."""
    from auctionlab.runs import read_recorded_overrides

    try:
        return read_recorded_overrides(path, f"resume={path.parent.parent}")
    except ConfigError as err:
        fail(str(err))
        raise AssertionError("unreachable") from err  # fail() exits


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
        rewrite = getattr(importlib.import_module(TASKS[task][0]), "rewrite_args", None)
        if rewrite is not None:  # e.g. tune: a search space typed unquoted is its text
            rest = rewrite(rest)
        try:
            if not any(a.split("=")[0] in INFO_FLAGS for a in rest):
                precheck(task, rest)
        except ConfigError as err:
            fail(str(err))

        import hydra
        from omegaconf import DictConfig

        module = importlib.import_module(TASKS[task][0])

        from auctionlab.tasks.common import sweep_result

        def task_function(cfg: DictConfig):
            logging.getLogger("auctionlab").setLevel(logging.INFO)
            try:
                # a float for a task with an objective: what a Hydra sweeper tunes
                return sweep_result(cfg, module.run(cfg))
            except ConfigError as err:
                if in_multirun():  # the sweep goes on; its summary names this job
                    return job_failed(f"error: {err}")
                fail(str(err))
            except InterruptedRunError as err:  # stopped cleanly (a checkpoint was saved)
                print(f"auctionlab: run failed: {err}", file=sys.stderr)
                raise SystemExit(128 + err.signum) from None
            except RunError as err:  # started, then failed: status 1
                if in_multirun():
                    return job_failed(f"run failed: {err}")
                print(f"auctionlab: run failed: {err}", file=sys.stderr)
                raise SystemExit(1) from None

        # Hydra's own flags first: argparse stops collecting overrides at the first flag.
        overrides = overrides_only(rest)
        flags = [a for a in rest if a not in overrides]
        if any(a in ("-m", "--multirun") for a in flags):
            overrides += job_dir_override(overrides)
        sys.argv = [f"auctionlab {task}", *flags, *overrides]
        try:
            hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=task, version_base="1.3")(
                task_function
            )()
        except BaseException as err:  # a multirun stopped early still gets its summary
            sweeps = sys.modules.get("auctionlab.experiments.multirun")  # imported by Hydra
            if sweeps is not None and not (isinstance(err, SystemExit) and err.code in (0, None)):
                sweeps.close_open_sweep(err)
            raise
    except KeyboardInterrupt as err:  # the task's MLflow run, if it had one, is KILLED by now
        signum = int(getattr(err, "signum", signal.SIGINT))
        print(f"auctionlab: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        raise SystemExit(128 + signum) from None


if __name__ == "__main__":
    main()
