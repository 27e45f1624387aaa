"""The mixture reward model (heads, router, variants), its loss and its save / load format.

Names load on first use, so importing the package (e.g. for the CLI's ``--help``) costs no torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "MixtureConfig": "micro_rm.model.config",
    "MixtureRewardModel": "micro_rm.model.mixture",
    "bt_loss": "micro_rm.model.losses",
    "mixture_bt_loss": "micro_rm.model.losses",
    "negative_entropy": "micro_rm.model.losses",
    "export_scalar": "micro_rm.model.pretrained",
    "from_pretrained": "micro_rm.model.pretrained",
    "save_pretrained": "micro_rm.model.pretrained",
    "featurize_for": "micro_rm.model.text",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'micro_rm.model' has no attribute {name!r}")
