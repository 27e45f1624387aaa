"""Per-user online Hedge: the loss, the weights, the regret bound and concentration."""

from __future__ import annotations

import math

import numpy as np
import pytest

from micro_rm.errors import MicroRMError
from micro_rm.online import UserState, hedge_log_weights, pair_losses, tuned_eta, validate_eta


def test_pair_losses_are_scaled_clipped_log_losses():
    p_min = math.exp(-4.0)
    probs = np.array([[1.0, math.exp(-1.0), math.exp(-2.0)], [p_min, 1e-9, 0.0]])
    np.testing.assert_allclose(pair_losses(probs, p_min), [[0.0, 0.25, 0.5], [1.0, 1.0, 1.0]])
    np.testing.assert_allclose(pair_losses([[math.exp(-1.0)]], p_min=math.exp(-2.0)), [[0.5]])


def test_pair_losses_rejects_bad_p_min():
    with pytest.raises(MicroRMError, match="p_min must lie in"):
        pair_losses([[0.5]], p_min=0.0)


def test_hedge_log_weights_equal_brute_force():
    rng = np.random.default_rng(0)
    prior = rng.dirichlet(np.ones(4), size=3)  # [B=3, K=4]
    s = rng.uniform(0, 5, size=4)
    brute = prior * np.exp(-0.7 * s)
    brute /= brute.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.exp(hedge_log_weights(np.log(prior), s, 0.7)), brute, rtol=1e-12)


def test_hedge_log_weights_stable_for_huge_losses():
    log_w = hedge_log_weights(np.log([[0.25, 0.25, 0.5]]), [1e6, 1e6 + 1.0, 1e9], eta=1.0)
    assert np.isfinite(log_w).all()
    np.testing.assert_allclose(np.exp(log_w), [[1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0.0]])


def test_batched_update_equals_one_by_one():
    probs = np.random.default_rng(1).uniform(size=(6, 3))
    one_by_one = UserState.fresh("u", "m", 3)
    for row in probs:
        one_by_one = one_by_one.update(row[None])
    batched = UserState.fresh("u", "m", 3).update(probs)
    assert batched.num_feedback == one_by_one.num_feedback == 6
    np.testing.assert_allclose(batched.cumulative_loss, one_by_one.cumulative_loss, rtol=1e-12)


def test_update_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    probs = torch.tensor([[0.9, 0.2]], requires_grad=True)
    state = UserState.fresh("u", "m", 2).update(probs)
    np.testing.assert_allclose(state.cumulative_loss, pair_losses([[0.9, 0.2]])[0], rtol=1e-6)


def test_update_rejects_wrong_number_of_heads():
    with pytest.raises(MicroRMError, match=r"must be a finite \[N, 3\] array"):
        UserState.fresh("u", "m", 3).update([[0.5, 0.5]])
    with pytest.raises(MicroRMError, match="state for 3 heads"):
        UserState.fresh("u", "m", 3).weights(np.zeros((1, 2)), eta=1.0)


@pytest.mark.parametrize("eta", [0.0, -1.0, float("nan"), float("inf")])
def test_eta_must_be_positive_and_finite(eta):
    with pytest.raises(MicroRMError, match="--eta"):
        validate_eta(eta)
    with pytest.raises(MicroRMError, match="--eta"):
        UserState.fresh("u", "m", 2).weights(np.zeros((1, 2)), eta=eta)


def _simulated_user(seed: int, num_heads: int, horizon: int, true_head: int) -> np.ndarray:
    """Per pair, each head's probability of the label a user drawn from ``true_head`` gave. [T, K]"""
    rng = np.random.default_rng(seed)
    heads = rng.normal(scale=1.5, size=(8, num_heads))  # K linear heads on 8-d features
    diff = rng.normal(size=(horizon, 8))  # feature(a) - feature(b) per pair
    p_a = 1.0 / (1.0 + np.exp(-diff @ heads))  # [T, K]: P_k(a ≻ b)
    a_wins = rng.uniform(size=horizon) < p_a[:, true_head]  # the user's labels
    return np.where(a_wins[:, None], p_a, 1.0 - p_a)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eta_rule", ["tuned", "one"])
def test_hedge_regret_bound_and_concentration_on_true_head(seed, eta_rule):
    num_heads, horizon, true_head = 5, 400, seed % 5
    eta = tuned_eta(num_heads, horizon) if eta_rule == "tuned" else 1.0
    probs = _simulated_user(seed, num_heads, horizon, true_head)
    losses = pair_losses(probs)
    assert losses.min() >= 0.0 and losses.max() <= 1.0
    log_prior = np.full((1, num_heads), -math.log(num_heads))

    state, mixture_loss = UserState.fresh("sim", "m", num_heads), 0.0
    for t in range(horizon):
        w = state.weights(log_prior, eta)[0]  # predict before seeing pair t's label
        mixture_loss += float(w @ losses[t])
        state = state.update(probs[t : t + 1])

    np.testing.assert_allclose(state.cumulative_loss, losses.sum(axis=0), rtol=1e-12)
    best = state.cumulative_loss.min()
    assert mixture_loss <= best + math.log(num_heads) / eta + eta * horizon / 8
    assert state.cumulative_loss.argmin() == true_head
    assert state.weights(log_prior, eta)[0, true_head] >= 0.9
