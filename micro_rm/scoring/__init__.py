"""The scoring engine that the service, ``micro-rm score`` and the RLHF adapters share: ``limits``
(per-request checks), ``features`` (LRU, feature cache, backbone; the service's micro-batcher),
``engine`` (``RewardScorer``, ``RewardEngine``), ``records`` (``micro-rm score``) and ``suggest``.
"""
