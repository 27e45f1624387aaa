"""Evaluation: pairwise accuracy per attribute, head × attribute matrices, bootstrap intervals by
prompt, the Theorem 3.2 diagnostic.

Names load on first use, so reading or rendering a report (``micro_rm.eval.report``) costs no torch.
"""

from micro_rm._lazy import lazy_exports

_EXPORTS = {
    "PromptBootstrap": "micro_rm.eval.bootstrap",
    "percentile_interval": "micro_rm.eval.bootstrap",
    "evaluate_hyre": "micro_rm.eval.hyre",
    "expected_calibration_error": "micro_rm.eval.metrics",
    "head_attribute_matrix": "micro_rm.eval.metrics",
    "nll": "micro_rm.eval.metrics",
    "pairwise_accuracy": "micro_rm.eval.metrics",
    "router_statistics": "micro_rm.eval.metrics",
    "theorem_bound": "micro_rm.eval.theory",
    "theory_diagnostic": "micro_rm.eval.theory",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports("micro_rm.eval", _EXPORTS)
