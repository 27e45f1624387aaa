"""Mask heads: the router can never route to them again; it renormalises over the others. The
mask is part of the model (``config.json``: ``masked_heads``), so every consumer sees it.

>>> masked = mask_heads(model, [1])                            # doctest: +SKIP
>>> masked.router_weights(route)[:, 1].max()                   # doctest: +SKIP
0.0
"""

from __future__ import annotations

from typing import Sequence

from micro_rm.errors import MicroRMError
from micro_rm.model.config import MixtureConfig
from micro_rm.model.mixture import MixtureRewardModel


def mask_heads(model: MixtureRewardModel, heads: Sequence[int]) -> MixtureRewardModel:
    """``model`` with ``heads`` added to its masked heads (in place; returned for chaining)."""
    k = model.config.num_heads
    bad = [h for h in heads if not 0 <= h < k]
    if not heads or bad:
        raise MicroRMError(f"--head: give head indices in 0..{k - 1}" + (f", got {bad}" if bad else ""))
    masked = sorted(set(model.config.masked_heads) | set(heads))
    if len(masked) >= k:
        raise MicroRMError(f"masking heads {masked} would leave none of the {k} heads to route to")
    model.config = MixtureConfig.from_dict({**model.config.to_dict(), "masked_heads": masked})
    return model
