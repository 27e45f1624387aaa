"""Training on cached features: stage 1, stage 2 (``adapt``; ``algorithm1``, the paper's as
written), HyRe test-time reweighting and active query selection.

Stage 2's verbs live in their modules (``micro_rm.train.adapt.adapt``): a package attribute of the
same name would be the module. Names load on first use, so ``--help`` imports no torch.
"""

from micro_rm._lazy import lazy_exports

_EXPORTS = {
    "Stage1Config": "micro_rm.train.config",
    "fit_stage1": "micro_rm.train.stage1",
    "stage1_loss": "micro_rm.train.stage1",
    "lr_at": "micro_rm.train.schedule",
    "AdaptConfig": "micro_rm.train.config",
    "adapt_from_records": "micro_rm.train.adapt",
    "draw_budget": "micro_rm.train.adapt",
    "hedge_targets": "micro_rm.train.algorithm1",
    "hyre_weights": "micro_rm.train.hyre",
    "rank_queries": "micro_rm.train.active",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports("micro_rm.train", _EXPORTS)
