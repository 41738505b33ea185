"""Best-response searches that envs ask for by name (``Env.training_adversary``).

Envs sit below mechanisms and attackers, so an env whose training data are best responses to
a reference mechanism ([zeng2025rpf], eq. 19) only names the mechanism and the PGD budget; this
module builds the search and installs it on the env (``Env.set_best_response``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import Tensor

from auctionlab.attackers.pgd import PGDAttacker
from auctionlab.errors import ConfigError
from auctionlab.types import Types


def best_response_search(env) -> Callable[[Types, torch.Generator], Tensor] | None:
    """The search ``env.training_adversary()`` describes, or ``None`` when it names none.

    Args:
        env: the environment.

    Returns:
        ``search(types, generator) -> [B, n, d]``: each bidder's PGD best response to the
        reference mechanism against the others' true reports (no truthful utility).

    Raises:
        ConfigError: the named mechanism is not an ``auctionlab`` class.

    """
    spec = env.training_adversary()
    if spec is None:
        return None
    target = str(spec["mechanism"])
    module_name, _, class_name = target.rpartition(".")
    if not module_name.startswith("auctionlab."):
        raise ConfigError(f"env={env.name}: best-response mechanism {target} is not in auctionlab")
    mechanism_class = getattr(importlib.import_module(module_name), class_name)
    budget = dict(spec["attacker"])

    def search(types: Types, generator: torch.Generator) -> Tensor:
        # Built per call (both are stateless): the mechanism sees the env as it is now.
        attacker = PGDAttacker(**budget)
        mechanism = mechanism_class(env)
        return attacker.attack(mechanism, env, types, generator, truthful=False).misreports

    return search


def install_best_response(env) -> None:
    """Give ``env`` the best-response search its ``training_adversary`` names (if any)."""
    search = best_response_search(env)
    if search is not None:
        env.set_best_response(search)
