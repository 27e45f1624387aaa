"""THE scoring engine: (texts, context, user state) → features → routed rewards.

``limits`` (the per-request checks, before a shared encode batch), ``features`` (LRU, feature
cache, backbone; the service's micro-batcher), ``engine`` (``RewardScorer``, ``RewardEngine``),
``records`` (``micro-rm score``) and ``suggest``. The service and the adapters only turn their
request shapes into calls of this package.
"""
