"""Training on cached features: stage 1 (the mixture and its baselines).

Names load on first use, so importing the package (e.g. for the CLI's ``--help``) costs no torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "Stage1Config": "micro_rm.train.config",
    "fit_stage1": "micro_rm.train.stage1",
    "stage1_loss": "micro_rm.train.stage1",
    "lr_at": "micro_rm.train.schedule",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'micro_rm.train' has no attribute {name!r}")
