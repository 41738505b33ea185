"""Certificates of a mechanism's incentive properties (the library behind ``auctionlab certify``).

* ``base``: the contract, ``Certifier.certify(mechanism, env, holdout) -> Certificate``;
* ``mip_certifier`` (``certifier=mip``): exact per-instance regret by MIP, on the solver pool of
  ``mip`` and the Table-1 summaries of ``report``;
* ``statistical_certifier`` (``certifier=statistical``): holdout certificates from the bounds
  and oracles of ``statistical``, the diagnostics of ``diagnostics`` and the output of
  ``statistical_report``;
* ``holdout``: the certified profiles, kept disjoint from everything training saw.
"""
