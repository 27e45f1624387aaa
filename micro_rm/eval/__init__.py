"""Evaluation: pairwise accuracy per attribute, head × attribute matrices, bootstrap intervals by
prompt, the Theorem 3.2 diagnostic."""

from micro_rm.eval.bootstrap import PromptBootstrap, percentile_interval
from micro_rm.eval.metrics import (expected_calibration_error, head_attribute_matrix, nll,
                                   pairwise_accuracy, router_statistics)
from micro_rm.eval.theory import theorem_bound, theory_diagnostic

__all__ = ["PromptBootstrap", "expected_calibration_error", "head_attribute_matrix", "nll",
           "pairwise_accuracy", "percentile_interval", "router_statistics", "theorem_bound",
           "theory_diagnostic"]
