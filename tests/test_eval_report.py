"""`micro-rm eval`'s new numbers: expected calibration error and router statistics, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from micro_rm.errors import MicroRMError
from micro_rm.eval.metrics import expected_calibration_error, pairwise_accuracy, router_statistics


def test_ece_hand_computed():
    # confidences 0.9, 0.9 (right), 0.8 (wrong: p = 0.2), 0.6 (right); bins of width 0.1 over [0.5, 1]
    probs = np.array([0.9, 0.9, 0.2, 0.6])
    assert expected_calibration_error(probs, bins=5) == pytest.approx((2 * 0.1 + 0.8 + 0.4) / 4)


def test_ece_zero_when_confidence_matches_accuracy():
    # 4 pairs at confidence 0.75, 3 right and 1 wrong: accuracy 0.75 = confidence
    assert expected_calibration_error(np.array([0.75, 0.75, 0.75, 0.25])) == pytest.approx(0.0)


def test_ece_of_an_uninformed_model_is_half():
    # p = 0.5 everywhere: confidence 0.5 but never counted correct (correct means p > 0.5)
    assert expected_calibration_error(np.full(10, 0.5)) == pytest.approx(0.5)


def test_router_statistics_hand_computed():
    weights = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    stats = router_statistics(weights, ["a", "b", "c", "c"])
    assert stats["mean_entropy"] == pytest.approx(2 * math.log(2) / 4)
    assert stats["head_usage"] == pytest.approx([0.5, 0.5])
    assert stats["top_head_share"] == pytest.approx([0.75, 0.25])   # ties go to the first head
    assert stats["per_attribute"] == {"attributes": ["a", "b", "c"],
                                      "weights": [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]}


def test_router_statistics_without_attributes():
    stats = router_statistics(np.array([[0.25, 0.75]]))
    assert stats["per_attribute"]["attributes"] == ["all"]


def test_router_statistics_refuses_a_vector():
    with pytest.raises(MicroRMError, match=r"\[N, K\]"):
        router_statistics(np.array([0.5, 0.5]))


def test_per_attribute_accuracy_hand_count():
    probs = np.array([0.9, 0.4, 0.6, 0.51, 0.49, 0.2])
    attributes = ["x", "x", "x", "y", "y", "z"]
    result = pairwise_accuracy(probs, attributes)
    assert result["per_attribute"] == {"x": 2 / 3, "y": 1 / 2, "z": 0.0}
    assert result["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
