"""Evaluation: pairwise accuracy per attribute, head × attribute matrices, the Theorem 3.2 diagnostic."""

from micro_rm.eval.metrics import (expected_calibration_error, head_attribute_matrix, nll,
                                   pairwise_accuracy, router_statistics)
from micro_rm.eval.theory import theory_diagnostic

__all__ = ["expected_calibration_error", "head_attribute_matrix", "nll", "pairwise_accuracy",
           "router_statistics", "theory_diagnostic"]
