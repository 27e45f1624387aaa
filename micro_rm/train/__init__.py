"""Training on cached features: stage 1 (the mixture and its baselines), stage 2 (context-aware
router learning with Hedge targets), HyRe test-time reweighting and active query selection.

Names load on first use, so importing the package (e.g. for the CLI's ``--help``) costs no torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "Stage1Config": "micro_rm.train.config",
    "fit_stage1": "micro_rm.train.stage1",
    "stage1_loss": "micro_rm.train.stage1",
    "lr_at": "micro_rm.train.schedule",
    "AdaptConfig": "micro_rm.train.stage2",
    "adapt_router": "micro_rm.train.stage2",
    "draw_budget": "micro_rm.train.stage2",
    "hedge_targets": "micro_rm.train.stage2",
    "state_model_id": "micro_rm.train.stage2",
    "evaluate_hyre": "micro_rm.train.hyre",
    "hyre_weights": "micro_rm.train.hyre",
    "rank_queries": "micro_rm.train.active",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'micro_rm.train' has no attribute {name!r}")
