"""Evaluation: pairwise accuracy per attribute, head × attribute matrices, the Theorem 3.2 diagnostic."""

from micro_rm.eval.metrics import head_attribute_matrix, nll, pairwise_accuracy
from micro_rm.eval.theory import theory_diagnostic

__all__ = ["head_attribute_matrix", "nll", "pairwise_accuracy", "theory_diagnostic"]
