"""The marker of classes a config may name as ``_target_``.

A config file can come from someone else (a run directory's ``config.yaml``, a resumed run's
``.hydra/overrides.yaml``, an audit log's header). Hydra builds whatever ``_target_`` names,
so the config gate (``auctionlab.schema.check_targets``) accepts only classes that derive from
:class:`Component` and are defined in auctionlab (or in a module the user trusts through the
``AUCTIONLAB_TRUSTED_MODULES`` environment variable). The contract base classes (``Env``,
``ValueDistribution``, ``Mechanism``, ``Attacker``, ``ConstraintHandler``, ``Certifier``)
derive from it, so every component a newcomer writes is buildable without registering it.
"""

from __future__ import annotations


class Component:
    """Marker base: instances of subclasses may be built from a config's ``_target_``."""

    __slots__ = ()
