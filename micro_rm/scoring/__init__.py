"""THE scoring engine: (texts, context, user state) → features → routed rewards.

- :mod:`~micro_rm.scoring.limits`: ``ScoringLimits`` and the per-request checks every path runs
  before a request joins a shared encode batch (one bad request fails alone);
- :mod:`~micro_rm.scoring.features`: vectors through the in-memory LRU, the feature cache and
  the backbone; the service's micro-batcher;
- :mod:`~micro_rm.scoring.engine`: ``RewardScorer`` (items and the routed mixture math) and
  ``RewardEngine`` (checked in-process scoring for the CLI, the RLHF adapters and ``MiCRo``);
- :mod:`~micro_rm.scoring.records`: ``micro-rm score``'s file scoring.

The service (:mod:`micro_rm.serve`) and the adapters (:mod:`micro_rm.integrations`) only turn
their request shapes into calls of this package.
"""
