"""Objects from config: every ``_target_`` node is schema-checked, then instantiated."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from auctionlab.errors import ConfigError


def build(node: DictConfig, what: str, *, group: str | None = None, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces our own ``ConfigError`` unwrapped.

    Args:
        node: config node with ``_target_``.
        what: the option's name for error messages (``env``, ``mechanism``...).
        group: the group the component names its options from when that is not the last
            part of ``what`` (``evaluate``'s ``oracle`` is an ``attacker``).
        **kwargs: extra constructor arguments (e.g. ``env=`` for mechanisms).

    """
    from auctionlab.schema import check_component

    # Nothing is built that was not vetted: the whole node, at every depth (schema's gate).
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    check_component(plain, what)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, ConfigError) and cause.__cause__:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise ConfigError(_at(what, str(cause), group)) from None
        # Hydra's message ends with "full_key: ..."; the cause says what went wrong.
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
        raise ConfigError(f"{what}: {' '.join(reason.split())}") from err


def _at(what: str, message: str, group: str | None = None) -> str:
    """A component's message re-rooted at where it sits (``validation.attacker.steps``...).

    Components name their options from their group (``attacker.steps``; by default the last
    part of ``what``); the same class may be configured under another key, which is the one
    the user has to change.
    """
    group = group or what.rpartition(".")[2]
    if what != group and message.startswith((f"{group}.", f"{group}=", f"{group}:")):
        return what + message.removeprefix(group)
    return message


def build_env_and_mechanism(cfg: DictConfig):
    """The environment and a mechanism checked against it (raises ``ConfigError`` early)."""
    from auctionlab.attackers.best_response import install_best_response
    from auctionlab.schema import check_component, check_target

    env = build(cfg.env, "env")
    install_best_response(env)  # e.g. adversarial training data (envs cannot build it)
    node = OmegaConf.to_container(cfg.mechanism, resolve=True)
    if isinstance(node, dict) and "_target_" in node:
        # Nested nodes a mechanism builds itself (e.g. budgeted's base) get the same check.
        for path, child in (
            check_target(node["_target_"], "mechanism").config_children(node).items()
        ):
            check_component(child, path)
    mechanism = build(cfg.mechanism, "mechanism", env=env)
    return env, mechanism
