"""The certifier contract: ``Certifier.certify(mechanism, env, holdout) -> Certificate``.

A certifier is built from ``conf/certifier/<name>.yaml`` (a ``_target_`` node, schema-checked
by ``auctionlab.components.build``) with the runtime pieces it needs injected (the comparison
attacker, seeds, progress). ``check`` raises a ``ConfigError`` before any work when the
mechanism cannot be certified this way; ``holdout`` draws the profiles it certifies;
``certify`` does the work and returns a ``Certificate``, which writes its own JSON, Markdown
and extra artifacts.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from auctionlab.core.component import Component
from auctionlab.runs import write_json, write_metrics

#: Writes one extra artifact into the run directory; returns the paths it wrote.
ArtifactWriter = Callable[[Path], list[Path]]


@dataclass
class Source:
    """Where the certified mechanism came from (for hashes, labels and the holdout checks).

    Attributes:
        label: the mechanism's config name (``regretnet_sparsemax``, ``first_price``...).
        run: the train run directory, or ``None`` for a classical rule built from config.
        train_cfg: the train run's config (``None`` for a classical rule).
        config_text: the resolved ``mechanism`` + ``env`` YAML of a classical rule (hashed).

    """

    label: str
    run: str | None = None
    train_cfg: Any = None
    config_text: str = ""


@dataclass
class Certificate:
    """What a certifier proves, as data that writes itself.

    Attributes:
        name: file stem of the JSON / Markdown pair (``certify``, ``certificate``).
        title: the Markdown heading.
        markdown: the Markdown body (under the heading).
        report: the JSON body.
        metrics: flat numbers for ``metrics.json`` and the tracker.
        artifacts: extra writers (per-instance CSV, figures...), run in order after the
            JSON / Markdown pair.
        finite: the metrics that are the certificate's results (revenue, empirical regret):
            NaN or inf there means the mechanism or the values were not finite, and the
            certify task fails instead of writing it. Other metrics may be NaN or inf by
            definition (no instance certified, no time limit, an unbounded range); the JSON
            files write those as ``null`` with a reason.

    """

    name: str
    title: str
    markdown: str
    report: dict[str, Any]
    metrics: dict[str, float]
    artifacts: list[ArtifactWriter] = field(default_factory=list)
    finite: tuple[str, ...] = ()

    def non_finite(self) -> list[str]:
        """The result metrics (``finite``) that are NaN, inf or missing."""
        return sorted(
            k for k in self.finite if not math.isfinite(float(self.metrics.get(k, math.nan)))
        )

    def to_markdown(self) -> str:
        """The whole Markdown document (heading + body)."""
        return f"# {self.title}\n\n{self.markdown}"

    def write_json(self, path: Path) -> Path:
        """Write the JSON report to ``path``."""
        return write_json(path, self.report)

    def write_markdown(self, path: Path) -> Path:
        """Write the Markdown document to ``path``."""
        path.write_text(self.to_markdown())
        return path

    def write(self, out: Path, provenance: Mapping[str, str] | None = None) -> list[Path]:
        """Write ``<name>.json``, ``<name>.md``, the extra artifacts and ``metrics.json``.

        Args:
            out: the run directory.
            provenance: where the run ran (``Tracker.provenance``), kept in ``metrics.json``.

        Returns:
            Every path written, for the tracker.

        """
        files = [
            self.write_json(out / f"{self.name}.json"),
            self.write_markdown(out / f"{self.name}.md"),
        ]
        for writer in self.artifacts:
            files.extend(writer(out))
        if provenance is None:
            files.append(write_json(out / "metrics.json", self.metrics))
        else:
            files.append(write_metrics(out, self.metrics, provenance))
        return files


class Certifier(Component, ABC):
    """Base class of every certifier (``conf/certifier/*.yaml`` names a subclass).

    Subclasses set ``name`` (the tracker tag and the ``certifier=`` choice) and implement
    ``check``, ``holdout`` and ``certify``.
    """

    name: str = "certifier"
    #: The certifier's resolved options, recorded with its certificate (``{}``: none to record).
    options: Mapping[str, Any] = MappingProxyType({})

    @abstractmethod
    def check(self, mechanism, source: Source):
        """Raise ``ConfigError`` when ``mechanism`` cannot be certified; return it ready.

        Args:
            mechanism: the loaded / built mechanism.
            source: where it came from.

        Returns:
            The mechanism converted as the certifier needs it (dtype, eval mode).

        """

    @abstractmethod
    def holdout(self, env, source: Source):
        """The profiles to certify (``auctionlab.certify.holdout.Holdout``), checked."""

    @abstractmethod
    def certify(self, mechanism, env, holdout) -> Certificate:
        """Certify ``mechanism`` on ``holdout``; the whole result as a ``Certificate``."""
