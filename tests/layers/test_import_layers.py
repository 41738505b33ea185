"""Imports only point down: core <- envs <- mechanisms <- attackers <- training / evaluation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import auctionlab

ROOT = Path(auctionlab.__file__).parent

#: What each lower layer may import from auctionlab (besides itself).
ALLOWED = {
    "core": {"auctionlab.core", "auctionlab.types", "auctionlab.errors"},
    "envs": {"auctionlab.core", "auctionlab.types", "auctionlab.errors", "auctionlab.envs"},
    "mechanisms": {
        "auctionlab.core",
        "auctionlab.types",
        "auctionlab.errors",
        "auctionlab.envs",
        "auctionlab.mechanisms",
        "auctionlab.layers",
        "auctionlab.solvers",
    },
    "attackers": {
        "auctionlab.core",
        "auctionlab.types",
        "auctionlab.errors",
        "auctionlab.envs",
        "auctionlab.mechanisms",
        "auctionlab.attackers",
    },
    "training": {
        "auctionlab.core",
        "auctionlab.types",
        "auctionlab.errors",
        "auctionlab.envs",
        "auctionlab.mechanisms",
        "auctionlab.attackers",
        "auctionlab.training",
    },
}


def imported_modules(path: Path) -> list[str]:
    """Every ``auctionlab...`` module a file imports, at any depth (lazy imports included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [n for n in names if n == "auctionlab" or n.startswith("auctionlab.")]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_point_down(layer):
    allowed = ALLOWED[layer]
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / layer).glob("*.py"))
        for name in imported_modules(path)
        if not any(name == a or name.startswith(a + ".") for a in allowed)
    ]
    assert not bad, "\n".join(bad)
