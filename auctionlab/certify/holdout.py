"""The profiles a certifier certifies, and the discipline that keeps them held out.

A statistical holdout is drawn from its own seed, checked against every seed the training
used and, row by row (SHA-256 of each float64 profile), against the regenerated training,
validation and dual-step sets: a holdout that shares any profile with them is refused. The
MIP certifier's profiles (and its revenue profiles) come from ``profile_seed``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from auctionlab.certify.base import Source
from auctionlab.errors import ConfigError
from auctionlab.runs import sha256_file
from auctionlab.types import Types
from auctionlab.utils import make_generator

CPU = torch.device("cpu")


@dataclass
class Holdout:
    """Profiles to certify and what is known about them.

    Attributes:
        types: ``N`` profiles, values ``[N, n, m]``.
        seed: the seed they were drawn from.
        source: where the certified mechanism came from.
        data: per dataset: profile count, SHA-256 and row overlap with the holdout.
        training: the regenerated training profiles (train-holdout gap), if any.
        extra: further held-out profiles (the MIP certifier's revenue profiles).

    """

    types: Types
    seed: int
    source: Source
    data: dict[str, Any] = field(default_factory=dict)
    training: Types | None = None
    extra: Types | None = None


def training_seeds(train_cfg: DictConfig | None) -> dict[int, str]:
    """Every seed a train run drew profiles or restarts from, with what it drew."""
    if train_cfg is None:
        return {}
    seeds = {int(train_cfg.seed): "training data and restarts (seed)"}
    seeds[int(train_cfg.validation.seed)] = "validation profiles (validation.seed)"
    seeds[int(train_cfg.validation.seed) + 1] = "validation restarts (validation.seed + 1)"
    heldout = OmegaConf.select(train_cfg, "trainer.constraint.heldout_seed")
    if heldout is not None:
        seeds[int(heldout)] = "dual-step pool (trainer.constraint.heldout_seed)"
        seeds[int(heldout) + 1] = "dual-step restarts (trainer.constraint.heldout_seed + 1)"
    return seeds


def check_seed(seed: int, train_cfg: DictConfig | None) -> None:
    """Refuse a holdout seed the training drew from (``ConfigError``)."""
    used = training_seeds(train_cfg)
    if seed in used:
        raise ConfigError(
            f"certifier.holdout_seed={seed} is a seed the training used ({used[seed]}); "
            "pick another"
        )


def row_hashes(values: Tensor) -> set[bytes]:
    """SHA-256 of every profile (row) of ``values`` ``[N, ...]`` as float64."""
    flat = values.detach().to(torch.float64).reshape(values.shape[0], -1).cpu().numpy()
    return {hashlib.sha256(row.tobytes()).digest() for row in flat}


def dataset_hash(values: Tensor) -> str:
    """Hex SHA-256 of the whole float64 array ``values``."""
    array = values.detach().to(torch.float64).contiguous().cpu().numpy()
    return hashlib.sha256(array.tobytes()).hexdigest()


def training_sets(env, train_cfg: DictConfig | None) -> dict[str, Types | str]:
    """The profiles a train run saw, regenerated from its recorded seeds (CPU generators)."""
    if train_cfg is None:
        return {}
    sets: dict[str, Types | str] = {}
    num = train_cfg.train.num_samples
    if num is not None:
        # Optional env hook: envs whose training draws differ from ``sample`` (allocation).
        sampler = env.sample_training
        sets["training"] = sampler(int(num), make_generator(int(train_cfg.seed), CPU))
    else:
        sets["training"] = f"fresh draws from seed {int(train_cfg.seed)} (not regenerable)"
    sets["validation"] = env.sample(
        int(train_cfg.validation.profiles), make_generator(int(train_cfg.validation.seed), CPU)
    )
    heldout = OmegaConf.select(train_cfg, "trainer.constraint.heldout_seed")
    if heldout is not None:
        sets["dual_pool"] = env.sample(
            int(train_cfg.trainer.constraint.heldout_profiles),
            make_generator(int(heldout), CPU),
        )
    return sets


def disjoint_holdout(env, source: Source, seed: int, profiles: int, dtype: torch.dtype) -> Holdout:
    """Draw ``profiles`` holdout profiles from ``seed``, disjoint from all training data.

    Raises:
        ConfigError: the holdout shares a profile with a set the training saw.

    """
    types = env.sample(profiles, make_generator(seed, CPU))
    types.values = types.values.to(dtype)
    data: dict[str, Any] = {"holdout": {"profiles": types.batch_size, "seed": seed}}
    data["holdout"]["sha256"] = dataset_hash(types.values)
    rows = row_hashes(types.values)
    seen = training_sets(env, source.train_cfg)
    for name, dataset in seen.items():
        if isinstance(dataset, str):  # not regenerable: recorded as a note
            data[name] = {"note": dataset}
            continue
        overlap = len(rows & row_hashes(dataset.values))
        data[name] = {
            "profiles": dataset.batch_size,
            "sha256": dataset_hash(dataset.values),
            "overlap_with_holdout": overlap,
        }
        if overlap:
            raise ConfigError(
                f"certifier.holdout_seed={seed}: the holdout shares {overlap} "
                f"profiles with the {name} set; pick another seed"
            )
    data["seeds_used_by_training"] = {
        str(k): v for k, v in training_seeds(source.train_cfg).items()
    }
    training = seen.get("training")
    return Holdout(types, seed, source, data, training if isinstance(training, Types) else None)


def mechanism_hash(mechanism, source: Source) -> dict[str, str]:
    """SHA-256 of the weights (and of the checkpoint file), or of a classical rule's config."""
    digest = hashlib.sha256(type(mechanism).__qualname__.encode())
    for name, tensor in sorted(mechanism.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float64).cpu().numpy().tobytes())
    out = {"state_sha256": digest.hexdigest(), "class": type(mechanism).__qualname__}
    if source.run:
        out["checkpoint_sha256"] = sha256_file(Path(source.run) / "checkpoint.pt")
        out["run"] = str(Path(source.run).resolve())
    else:
        out["config_sha256"] = hashlib.sha256(source.config_text.encode()).hexdigest()
    return out
