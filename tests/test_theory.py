"""The Theorem 3.2 diagnostic: a hand-built two-head mixture, and a property test on random mixtures
that no fitted single BT model ever scores below the bound (METHOD.md, "Correction")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from micro_rm.errors import MicroRMError
from micro_rm.eval.theory import binary_entropy, single_bt_cross_entropy, theorem_bound, theory_diagnostic
from micro_rm.features.base import PairFeatures
from micro_rm.model import MixtureConfig, MixtureRewardModel

MIXTURES = 200


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


def _mixture_entropy_bound(result: dict, head_probs: np.ndarray, weights: np.ndarray) -> float:
    """The formula METHOD.md used before its correction: H = entropy of the mixture's own labels."""
    mixture_p = (weights * head_probs).sum(axis=1)
    return result["bound"] - result["within_group_entropy"] + float(binary_entropy(mixture_p).mean())


def test_bound_by_hand():
    # σ(±ln 3) = 0.75 / 0.25: Var_k = 0.0625; ρ = 0.5, K = 2 → 2ρK·Var = 0.125.
    # Each group's labels have entropy H_b(0.75) = 0.5623; the mixture says 0.5 on every pair,
    # so the best single head predicts 0.5 and scores ln 2 = 0.6931 ≥ 0.125 + 0.5623.
    result = theory_diagnostic(_opposed_heads(), _features())
    assert result["rho"] == pytest.approx(0.5)
    assert result["expected_variance"] == pytest.approx(0.0625, abs=1e-6)
    assert result["within_group_entropy"] == pytest.approx(0.75 * math.log(4 / 3) + 0.25 * math.log(4), abs=1e-6)
    assert result["bound"] == pytest.approx(0.125 + 0.5623, abs=1e-4)
    assert result["single_bt_cross_entropy"] == pytest.approx(math.log(2), abs=1e-6)
    assert result["gap"] > 0


def test_mixture_label_entropy_bound_exceeds_the_best_single_loss():
    # The bug: with H = H_b(mixture label) the two opposed heads give a "bound" of
    # 0.125 + ln 2 = 0.818, above ln 2, the loss of the best single model (which predicts 0.5).
    head_p, weights = np.array([[0.75, 0.25]]), np.array([[0.5, 0.5]])
    old = _mixture_entropy_bound(theorem_bound(head_p, weights, ["x"]), head_p, weights)
    assert old == pytest.approx(0.125 + math.log(2))
    assert old > math.log(2)


def test_user_given_rho_is_used_and_checked():
    result = theory_diagnostic(_opposed_heads(), _features(), rho=0.1)
    assert result["bound"] == pytest.approx(2 * 0.1 * 2 * 0.0625 + result["within_group_entropy"], abs=1e-6)
    with pytest.raises(MicroRMError, match=r"`rho` must lie in \[0, 1/K\]"):
        theory_diagnostic(_opposed_heads(), _features(), rho=0.7)


def test_mismatched_shapes_are_refused():
    with pytest.raises(MicroRMError, match=r"must both be \[N, K\] with one group per row"):
        theorem_bound(np.ones((3, 2)) / 2, np.ones((3, 3)) / 3, ["x"] * 3)


def _random_mixture(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str], PairFeatures]:
    """A finite mixture: K groups, router weights ≥ ρ per prompt, per-pair head margins that
    disagree by a random scale. Half of the time the pair features are one-hot (the single model
    may give every pair any margin: the best single reward there is), else random and 2-5-d."""
    k, n_prompts = int(rng.integers(2, 7)), int(rng.integers(1, 6))
    rho, disagreement = rng.uniform(0, 1 / k), rng.uniform(0, 8)
    per_prompt = rng.integers(1, 5, size=n_prompts)
    prompts = [f"p{x}" for x, n in enumerate(per_prompt) for _ in range(n)]
    n = len(prompts)
    margins = rng.normal(0, 2, size=(n, 1)) + disagreement * rng.standard_normal((n, k))       # [N, K]
    head_p = 1 / (1 + np.exp(-margins))
    weights = rho + (1 - k * rho) * rng.dirichlet(np.full(k, rng.uniform(0.2, 3)), size=n_prompts)
    weights = weights[[int(p[1:]) for p in prompts]]                                        # [N, K]
    if rng.random() < 0.5:
        chosen = np.eye(n)
    else:
        chosen = rng.standard_normal((n, int(rng.integers(2, 6))))
    features = PairFeatures(chosen=chosen, rejected=np.zeros_like(chosen), route=np.zeros((n, 1)),
                            prompts=prompts)
    return head_p, weights, prompts, features


def _single_fits(count: int) -> list[tuple[float, float, float]]:
    """(fitted single-model cross-entropy, corrected bound, old bound) on ``count`` random mixtures."""
    rng, rows = np.random.default_rng(0), []
    for _ in range(count):
        head_p, weights, prompts, features = _random_mixture(rng)
        result = theorem_bound(head_p, weights, prompts)
        fitted = single_bt_cross_entropy(features, (weights * head_p).sum(axis=1))
        rows.append((fitted, result["bound"], _mixture_entropy_bound(result, head_p, weights)))
    return rows


@pytest.fixture(scope="module")
def single_fits() -> list[tuple[float, float, float]]:
    return _single_fits(MIXTURES)


def test_no_fitted_single_model_scores_below_the_bound(single_fits):
    below = [(round(ce, 5), round(bound, 5)) for ce, bound, _ in single_fits if ce < bound - 1e-9]
    assert not below, f"{len(below)} of {MIXTURES} mixtures: single CE below the bound: {below[:5]}"


def test_the_old_formula_fails_the_same_property(single_fits):
    violated = sum(ce < old - 1e-9 for ce, _, old in single_fits)
    assert violated >= MIXTURES // 4, violated
