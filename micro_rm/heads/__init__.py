"""Understand and control a model's heads: profiles and labels, a safety audit, masking, merging.

Names load on first use, so the CLI's ``--help`` imports no torch.

>>> from micro_rm.heads import audit_heads, mask_heads   # doctest: +SKIP
>>> masked = mask_heads(model, audit_heads(model, harmless)["flagged"])   # doctest: +SKIP
"""

from micro_rm._lazy import lazy_exports

_EXPORTS = {
    "audit_heads": "micro_rm.heads.audit",
    "generate_labels": "micro_rm.heads.labels",
    "mask_heads": "micro_rm.heads.mask",
    "merge_heads": "micro_rm.heads.merge",
    "profile_heads": "micro_rm.heads.profile",
    "save_labels": "micro_rm.heads.labels",
    "write_heads_report": "micro_rm.heads.report",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports("micro_rm.heads", _EXPORTS)
