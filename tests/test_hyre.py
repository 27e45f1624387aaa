"""HyRe / MiCRo-HyRe test-time reweighting: the posterior over heads, and its evaluation protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.model import MixtureConfig, MixtureRewardModel
from micro_rm.eval.hyre import evaluate_hyre
from micro_rm.train.hyre import draw_labelled, hyre_losses, hyre_weights


def test_weights_equal_the_brute_force_posterior():
    p = np.array([[0.9, 0.5, 0.2], [0.7, 0.6, 0.4]])
    losses = -np.log(p)
    brute = np.array([math.exp(-losses[:, k].sum()) for k in range(3)])
    np.testing.assert_allclose(hyre_weights(np.log(p / (1 - p))), brute / brute.sum(), rtol=1e-12)


def test_loss_at_extreme_margins_is_not_clipped():
    # The bug: log(clip(σ(Δ), 1e-12)) made every head with Δ < −27.6 cost the same 27.6 nats.
    np.testing.assert_allclose(hyre_losses(np.array([[-50.0, -30.0, 40.0]])), [[50.0, 30.0, 0.0]], atol=1e-12)
    w = hyre_weights(np.array([[-50.0, -30.0]]))
    assert w[1] / w[0] == pytest.approx(math.exp(20.0), rel=1e-9)


def test_weights_are_stable_for_many_confident_pairs():
    d = np.tile([[4.6, 3.9, -69.0]], (5_000, 1))                          # Σ L reaches 3e5 nats
    w = hyre_weights(d)
    assert np.isfinite(w).all() and w.argmax() == 0 and w.sum() == pytest.approx(1.0)


def test_bad_margins_are_refused():
    with pytest.raises(MicroRMError, match=r"must be an \[m, K\] array of finite reward margins"):
        hyre_weights(np.array([0.5, 0.5]))
    with pytest.raises(MicroRMError, match=r"must be an \[m, K\] array of finite reward margins"):
        hyre_weights(np.array([[np.inf, 0.5]]))


def _two_attribute_data(n_per: int = 40) -> tuple[MixtureRewardModel, PairFeatures]:
    """Head 0 reads feature 0, head 1 reads feature 1; attribute "a" prefers larger feature 0, "b"
    larger feature 1. The two features are independent, so the heads disagree on half the pairs."""
    model = MixtureRewardModel(MixtureConfig(num_heads=2, reward_dim=2, route_dim=1, variant="shared-base",
                                             prior_scale=0.0))
    with torch.no_grad():
        model.heads.weight.copy_(torch.tensor([[5.0, 0.0], [0.0, 5.0]]))
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 2 * n_per, 2)).astype(np.float32)
    key = np.r_[np.zeros(n_per, int), np.ones(n_per, int)]               # feature each attribute wants
    a_wins = a[np.arange(2 * n_per), key] > b[np.arange(2 * n_per), key]
    features = PairFeatures(chosen=np.where(a_wins[:, None], a, b), rejected=np.where(a_wins[:, None], b, a),
                            route=np.zeros((2 * n_per, 1), np.float32),
                            prompts=[str(i) for i in range(2 * n_per)],
                            attributes=["a"] * n_per + ["b"] * n_per)
    return model, features


def test_evaluate_hyre_finds_each_attributes_head_and_scores_the_rest():
    model, features = _two_attribute_data()
    result = evaluate_hyre(model, features, m=16, seed=0)
    assert result["labelled"] == 32 and result["pairs"] == 48
    assert np.argmax(result["weights"]["a"]) == 0 and np.argmax(result["weights"]["b"]) == 1
    assert result["per_attribute"] == {"a": 1.0, "b": 1.0} and result["mean_accuracy"] == 1.0
    # the uniform ensemble (what the model predicts without reweighting) is worse
    uniform = model.predict_proba(features.chosen, features.rejected, features.route)
    assert ((uniform > 0.5).mean()) < 0.9


def test_evaluate_hyre_is_deterministic_for_a_seed():
    model, features = _two_attribute_data()
    first, again = evaluate_hyre(model, features, m=4, seed=1), evaluate_hyre(model, features, m=4, seed=1)
    assert first["weights"] == again["weights"] and first["per_attribute"] == again["per_attribute"]
    np.testing.assert_array_equal(first["scored"], again["scored"])


def test_labelled_pairs_are_drawn_by_prompt():
    # 10 prompts × 3 pairs per attribute: no scored pair may share a prompt with a labelled one.
    groups = ["a"] * 30 + ["b"] * 30
    prompts = [f"p{i // 3}" for i in range(30)] * 2
    for seed in range(5):
        labelled, scored = draw_labelled(groups, prompts, m=4, seed=seed)
        assert len(labelled) == 8
        for group in ("a", "b"):
            mine = [i for i in labelled if groups[i] == group]
            assert len(mine) == 4
            taken = {prompts[i] for i in mine}
            rest = [i for i in range(60) if groups[i] == group and prompts[i] not in taken]
            assert [i for i in scored if groups[i] == group] == rest


def test_all_prompts_labelled_leaves_nothing_to_score():
    with pytest.raises(MicroRMError, match="take all of its 2 prompts; lower m"):
        draw_labelled(["a"] * 6, ["x", "x", "x", "y", "y", "y"], m=4, seed=0)


def test_evaluate_hyre_needs_more_pairs_than_m():
    model, features = _two_attribute_data(n_per=10)
    with pytest.raises(MicroRMError, match="more than m=16 pairs per attribute, but a, b has only 10, 10"):
        evaluate_hyre(model, features, m=16)
    with pytest.raises(MicroRMError, match="`m` must be an integer ≥ 1"):
        evaluate_hyre(model, features, m=0)
