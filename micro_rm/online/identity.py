"""Which model a per-user state belongs to: users' cumulative losses depend on the heads only."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from micro_rm.model.mixture import MixtureRewardModel


def state_model_id(model: "MixtureRewardModel") -> str:
    """The id a per-user state store is keyed on: a hash of the head weights and the backbone
    fingerprint, and K. A stage-2 model (same heads, new router) shares its stage-1 users' state.

    >>> state_model_id(model)                                                # doctest: +SKIP
    'heads-3f1c9a0b2d4e5f60-k4'
    """
    import torch

    from micro_rm.features.backbones import fingerprint_id

    with torch.no_grad():
        weights = model.head_weight().detach().cpu().to(torch.float32).contiguous().numpy()
    digest = hashlib.sha256(weights.tobytes())
    digest.update(fingerprint_id(model.config.backbone).encode())
    return f"heads-{digest.hexdigest()[:16]}-k{model.config.num_heads}"
