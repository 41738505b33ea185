"""auctionlab's config groups, shipped as package data and found on Hydra's search path.

Users add their own options (an experiment, a mechanism, an env...) in a directory of their
own laid out like this one (``<dir>/mechanism/my_net.yaml``...) and pass it with
``--config-dir <dir>`` or ``hydra.searchpath=[file://<dir>]``; their options are then chosen by
name like the packaged ones (``mechanism=my_net``), and may extend a packaged option
(``defaults: [regretnet, _self_]``).

Problem families are config too: every env option declares its family
(``/family@_global_.family``), a mechanism of another family overrides it, and an env name
that exists in several families (``2x2``) resolves to that family's version
(``conf/env_variants/<name>/<family>.yaml``). ``train`` takes the family's default trainer
(``trainer: family/${family}``). So the console script, the compose API and ``reproduce``
compose the same config from the same overrides.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

#: Hydra's name for this package on the config search path.
CONFIG_MODULE = "auctionlab.conf"
#: The package's own config directory (files in the installed package).
CONF_DIR = Path(__file__).resolve().parent
#: Config groups a command line selects options of (checked against the files before Hydra runs).
GROUPS = (
    "env",
    "mechanism",
    "attacker",
    "trainer",
    "scale",
    "tracking",
    "experiment",
    "certifier",
)
#: Hydra flags that take a value in the next argument (or after ``=``).
VALUE_FLAGS = (
    "--config-dir",
    "-cd",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--experimental-rerun",
)


def user_config_dirs(args: Sequence[str], include_searchpath: bool = True) -> list[Path]:
    """User config directories named on a command line.

    Args:
        args: command-line arguments (``--config-dir D`` / ``-cd D`` / ``--config-dir=D`` and
            ``hydra.searchpath=[file://D,...]`` overrides; ``pkg://`` entries are skipped).
        include_searchpath: also read ``hydra.searchpath`` overrides (off when the overrides
            themselves go on to the compose API, which reads them).

    Returns:
        The directories, in search order.

    """
    dirs: list[Path] = []
    items = list(args)
    for i, arg in enumerate(items):
        flag, eq, value = arg.partition("=")
        if flag in ("--config-dir", "-cd"):
            value = value if eq else (items[i + 1] if i + 1 < len(items) else "")
            if value:
                dirs.append(Path(value).expanduser().resolve())
        elif include_searchpath and flag.lstrip("+~") == "hydra.searchpath" and eq:
            for entry in value.strip("[]").split(","):
                entry = entry.strip().strip("'\"")
                if entry.startswith("file://"):
                    dirs.append(Path(entry.removeprefix("file://")).expanduser().resolve())
    return dirs


def overrides_only(args: Sequence[str]) -> list[str]:
    """The Hydra overrides of a command line (``key=value``, ``~key``); flags and values dropped."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in VALUE_FLAGS:
            skip = True
            continue
        if arg.startswith("-") or not ("=" in arg or arg.startswith("~")):
            continue  # a flag, or the value of an optional-value flag (--info defaults)
        out.append(arg)
    return out


def job_config_dirs() -> list[Path]:
    """User config directories of the running Hydra job (``[]`` outside one).

    ``reproduce`` composes its points with the same search path as the job it runs in, so an
    experiment may sweep over a user's own mechanisms and envs.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    sources = HydraConfig.get().runtime.config_sources
    return [Path(s.path) for s in sources if s.schema == "file"]


def chosen_on_command_line(group: str) -> bool:
    """Whether the running job's own overrides pick ``group`` (``env=3x10``; outside Hydra: no)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    keys = (str(o).split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return group in keys


def group_options(group: str, search_dirs: Sequence[Path] = ()) -> list[str]:
    """Options of a config group, packaged and the user's (``family/name`` for nested ones).

    Args:
        group: a config group (``env``, ``mechanism``...).
        search_dirs: user config directories (see :func:`user_config_dirs`).

    """
    found: set[str] = set()
    for base in (CONF_DIR, *search_dirs):
        root = Path(base) / group
        if root.is_dir():
            found.update(
                p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml")
            )
    return sorted(found)


def searchpath_override(search_dirs: Sequence[Path]) -> list[str]:
    """``hydra.searchpath=[...]`` for the compose API (``[]`` when there is no user dir)."""
    if not search_dirs:
        return []
    return ["hydra.searchpath=[" + ",".join(f"file://{d}" for d in search_dirs) + "]"]


@contextlib.contextmanager
def hydra_initialized(job_name: str) -> Iterator[Any]:
    """Hydra's compose API on the packaged configs, also inside a running Hydra job.

    A running app's ``GlobalHydra`` is set aside meanwhile and put back afterwards. User
    directories are added per call with :func:`searchpath_override`.

    Yields:
        The config loader (for ``HydraContext``).

    """
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    holder = GlobalHydra.instance()
    outer = holder.hydra if holder.is_initialized() else None
    holder.clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3", job_name=job_name):
            yield GlobalHydra.instance().config_loader()
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)


def compose(
    task: str,
    overrides: Sequence[str] = (),
    search_dirs: Sequence[Path] = (),
    return_hydra_config: bool = False,
) -> Any:
    """A task's primary config composed exactly as the console script composes it.

    Args:
        task: the primary config (``train``, ``evaluate``...).
        overrides: Hydra overrides.
        search_dirs: user config directories.
        return_hydra_config: keep the ``hydra`` node (for running a job from it).

    Returns:
        The composed ``DictConfig`` (unresolved).

    """
    from hydra import compose as hydra_compose

    with hydra_initialized(task):
        return hydra_compose(
            config_name=task,
            overrides=[*overrides, *searchpath_override(search_dirs)],
            return_hydra_config=return_hydra_config,
        )


# -- multirun job directory names (hydra.sweep.subdir) -------------------------------------------
#: The resolver ``hydra.sweep.subdir`` names job directories with.
RESOLVER = "auctionlab_job_dir"
#: The Hydra option that lists the keys left out of job directory names.
EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"
#: Longest job directory name (file systems take 255 bytes).
MAX_DIRNAME = 120
#: Characters a job directory name keeps; Hydra reads them unquoted in ``run=<dir>``.
_UNSAFE = re.compile(r"[^A-Za-z0-9.+@-]+")


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_")


def override_label(override: str) -> str | None:
    """``key-value`` of one override as a directory name part (``None``: a deletion).

    A value that is a path is named by its last part (``run=outputs/x/3_env-2x2`` ->
    ``run-3_env-2x2``); lists and other characters become ``_`` (``[64,64]`` -> ``64_64``).
    """
    key, sep, value = override.partition("=")
    if not sep:
        return None
    key = key.lstrip("+~")
    value = value.strip().strip("'\"").rstrip("/")
    if "/" in value:
        value = value.rsplit("/", 1)[-1]
    return f"{_safe(key)}-{_safe(value)}"


def job_dirname(*, _root_: Any) -> str:
    """``<job number>_<key>-<value>_...`` of the running job's swept overrides.

    The resolver behind ``hydra.sweep.subdir``. Overrides whose key is in
    ``hydra.job.config.override_dirname.exclude_keys`` (the console script puts the command
    line's fixed keys there) are left out; with none left the name is the job number alone.
    """
    excluded = set(OmegaConf.select(_root_, EXCLUDE_KEYS, default=None) or [])
    parts = []
    for override in OmegaConf.select(_root_, "hydra.overrides.task", default=None) or []:
        text = str(override)
        if text.split("=", 1)[0].lstrip("+~") in excluded:
            continue
        label = override_label(text)
        if label:
            parts.append(label)
    # No job number while a config is composed outside a job (reproduce checks its plans so).
    number = OmegaConf.select(_root_, "hydra.job.num", default=None)
    name = "_".join([*([] if number is None else [str(number)]), *parts]) or "job"
    return name[:MAX_DIRNAME].rstrip("_-")


def register_resolver() -> None:
    """Register :func:`job_dirname` as ``${auctionlab_job_dir:}`` (idempotent)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, job_dirname)


# Hydra resolves ``hydra.sweep.subdir`` in whichever process composes or runs a job: the console
# script, compose() and every worker import this package before (callbacks travel to joblib and
# submitit workers and import it).
register_resolver()
