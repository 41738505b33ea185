"""Plain fully connected trunks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from auctionlab.errors import ConfigError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(
    in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "tanh"
) -> nn.Sequential:
    """``in_dim -> hidden... -> out_dim`` with ``activation`` between layers, Glorot init.

    Raises:
        ConfigError: unknown activation, or a width below 1.

    """
    if any(int(width) < 1 for width in hidden):
        raise ConfigError(f"mechanism.hidden={list(hidden)}: every layer width must be >= 1")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"mechanism.activation={activation} is not valid; "
            f"choose one of {', '.join(ACTIVATIONS)}"
        )
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers += [nn.Linear(last, int(width)), ACTIVATIONS[activation]()]
        last = int(width)
    layers.append(nn.Linear(last, out_dim))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)
