"""The Theorem 3.2 diagnostic, checked on a hand-built two-head mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from micro_rm.errors import MicroRMError
from micro_rm.eval.theory import theory_diagnostic
from micro_rm.features.base import PairFeatures
from micro_rm.model import MixtureConfig, MixtureRewardModel


def _opposed_heads(static_logits=(0.0, 0.0)) -> MixtureRewardModel:
    """Head 0 prefers a larger feature, head 1 a smaller one; fixed (static) weights."""
    model = MixtureRewardModel(MixtureConfig(num_heads=2, reward_dim=1, route_dim=1, variant="static"))
    with torch.no_grad():
        model.heads.weight.copy_(torch.tensor([[math.log(3.0)], [-math.log(3.0)]]))
        model.logits.copy_(torch.tensor(static_logits))
    return model.eval()


def _features(n_prompts=2, pairs_per_prompt=2):
    n = n_prompts * pairs_per_prompt
    return PairFeatures(chosen=np.ones((n, 1), np.float32), rejected=np.zeros((n, 1), np.float32),
                        route=np.zeros((n, 1), np.float32),
                        prompts=[f"p{i // pairs_per_prompt}" for i in range(n)])


def test_bound_by_hand():
    # σ(±ln 3) = 0.75 / 0.25: Var_k = 0.0625; ρ = 0.5, K = 2 → 2ρK·Var = 0.125.
    # The mixture says 0.5 on every pair: H = ln 2. The best single head predicts 0.5 too.
    result = theory_diagnostic(_opposed_heads(), _features())
    assert result["rho"] == pytest.approx(0.5)
    assert result["expected_variance"] == pytest.approx(0.0625, abs=1e-6)
    assert result["label_entropy"] == pytest.approx(math.log(2), abs=1e-6)
    assert result["bound"] == pytest.approx(0.125 + math.log(2), abs=1e-6)
    assert result["single_bt_cross_entropy"] == pytest.approx(math.log(2), abs=1e-6)


def test_user_given_rho_is_used_and_checked():
    result = theory_diagnostic(_opposed_heads(), _features(), rho=0.1)
    assert result["bound"] == pytest.approx(2 * 0.1 * 2 * 0.0625 + math.log(2), abs=1e-6)
    with pytest.raises(MicroRMError, match=r"`rho` must lie in \[0, 1/K\]"):
        theory_diagnostic(_opposed_heads(), _features(), rho=0.7)


def test_single_cross_entropy_stays_above_the_bound_on_random_data():
    rng = np.random.default_rng(0)
    model = MixtureRewardModel(MixtureConfig(num_heads=3, reward_dim=5, route_dim=4)).eval()
    with torch.no_grad():
        model.heads.weight.mul_(8)
    features = PairFeatures(chosen=rng.standard_normal((500, 5)).astype(np.float32),
                            rejected=rng.standard_normal((500, 5)).astype(np.float32),
                            route=rng.standard_normal((500, 4)).astype(np.float32),
                            prompts=[f"p{i // 5}" for i in range(500)])
    result = theory_diagnostic(model, features)
    assert result["gap"] > 0
    assert result["single_bt_cross_entropy"] > result["label_entropy"]
