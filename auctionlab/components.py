"""Objects from config: every ``_target_`` node is schema-checked, then instantiated."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from auctionlab.errors import ConfigError


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces our own ``ConfigError`` unwrapped.

    Args:
        node: config node with ``_target_``.
        what: the option's name for error messages (``env``, ``mechanism``...).
        **kwargs: extra constructor arguments (e.g. ``env=`` for mechanisms).

    """
    from auctionlab.schema import check_component

    if isinstance(node, DictConfig):
        check_component(OmegaConf.to_container(node, resolve=True), what)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, ConfigError) and cause.__cause__:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        first = str(err).strip().splitlines()
        raise ConfigError(f"{what}: {first[-1] if first else err}") from err


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
