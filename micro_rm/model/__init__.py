"""The mixture reward model (heads, router, variants), its loss and its save / load format.

Names load on first use, so importing the package (e.g. for the CLI's ``--help``) costs no torch.
"""

from micro_rm._lazy import lazy_exports

_EXPORTS = {
    "MixtureConfig": "micro_rm.model.config",
    "MixtureRewardModel": "micro_rm.model.mixture",
    "bt_loss": "micro_rm.model.losses",
    "mixture_bt_loss": "micro_rm.model.losses",
    "negative_entropy": "micro_rm.model.losses",
    "export_scalar": "micro_rm.model.pretrained",
    "featurize_for": "micro_rm.model.text",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports("micro_rm.model", _EXPORTS)
