"""THE scoring engine: (texts, context, user state) → features → routed rewards.

- :mod:`~micro_rm.scoring.limits`: :class:`ScoringLimits` and the per-request checks every path
  runs before a request joins a shared encode batch (one bad request fails alone);
- :mod:`~micro_rm.scoring.features`: vectors through the in-memory LRU, the feature cache and
  the backbone; the service's micro-batcher;
- :mod:`~micro_rm.scoring.engine`: :class:`RewardScorer` (items and the routed mixture math) and
  :class:`RewardEngine` (checked in-process scoring for the CLI and the RLHF adapters);
- :mod:`~micro_rm.scoring.records`: ``micro-rm score``'s file scoring.

The service (:mod:`micro_rm.serve`) and the adapters (:mod:`micro_rm.integrations`) only turn
their request shapes into calls of this package. Importing it loads neither torch nor numpy.
"""

from micro_rm._lazy import lazy_exports

_EXPORTS = {
    "ScoringLimits": "micro_rm.scoring.limits",
    "RequestRefused": "micro_rm.scoring.limits",
    "TooManyTexts": "micro_rm.scoring.limits",
    "FeatureStore": "micro_rm.scoring.features",
    "MicroBatcher": "micro_rm.scoring.features",
    "Routed": "micro_rm.scoring.engine",
    "Samples": "micro_rm.scoring.engine",
    "RewardScorer": "micro_rm.scoring.engine",
    "RewardEngine": "micro_rm.scoring.engine",
    "user_losses": "micro_rm.scoring.engine",
    "score_file": "micro_rm.scoring.records",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports("micro_rm.scoring", _EXPORTS)
