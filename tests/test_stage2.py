"""Stage 2 on tiny literal features: Eq. 5, the budget draw, the keep-or-adapt choice and the
fits of the default path by hand, Algorithm 1's first step by hand, and what ``adapt`` may and
may not change."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.model import MixtureConfig, MixtureRewardModel
from micro_rm.train.adapt import adapt, draw_budget
from micro_rm.train.algorithm1 import algorithm1, hedge_targets
from micro_rm.train.config import AdaptConfig
from micro_rm.train.selection import (KEEP, TAU_GRID, Candidate, choose_candidate, clustered_standard_error,
                                      distil)

K, D, D_ROUTE = 3, 4, 5


# ----- Eq. 5 --------------------------------------------------------------------------------------
def test_hedge_targets_equal_brute_force_eq5():
    prior = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    losses = torch.tensor([[0.1, 0.7, 2.0], [1.5, 0.2, 0.4]])
    tau = 0.7
    brute = torch.zeros_like(prior)
    for i in range(2):
        unnormalised = [prior[i, k].item() * math.exp(-losses[i, k].item() / tau) for k in range(K)]
        brute[i] = torch.tensor(unnormalised) / sum(unnormalised)
    torch.testing.assert_close(hedge_targets(prior.log(), losses, tau), brute)


def test_small_tau_gives_one_hot_targets_on_the_lowest_loss_head():
    prior = torch.log(torch.tensor([[0.98, 0.01, 0.01], [0.1, 0.1, 0.8]]))
    losses = torch.tensor([[0.70, 0.69, 3.0], [0.50, 0.49, 0.51]])      # margins of 0.01 nats
    omega = hedge_targets(prior, losses, 1e-4)
    torch.testing.assert_close(omega, torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.isfinite(hedge_targets(prior, 1e6 * losses, 1e-6)).all()  # log space: no overflow


def test_large_tau_keeps_the_prior():
    prior = torch.tensor([[0.2, 0.3, 0.5]])
    omega = hedge_targets(prior.log(), torch.tensor([[0.1, 5.0, 2.0]]), 1e6)
    torch.testing.assert_close(omega, prior, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tau", [0.0, -1e-3, 1e-9, float("nan"), float("inf"), True])
def test_tau_must_be_a_temperature(tau):
    with pytest.raises(MicroRMError, match="`tau` must be a finite number ≥ 1e-08"):
        AdaptConfig(tau=tau)
    with pytest.raises(MicroRMError, match="`tau` must be a finite number ≥ 1e-08"):
        hedge_targets(torch.zeros(1, 2), torch.zeros(1, 2), tau)


# ----- the budget ---------------------------------------------------------------------------------
def test_budget_is_drawn_per_group_with_the_seed():
    groups = ["a"] * 10 + ["b"] * 20 + [None] * 5
    rows = draw_budget(groups, budget=4, seed=0)
    drawn = [groups[i] for i in rows]
    assert drawn.count("a") == 4 and drawn.count("b") == 4 and drawn.count(None) == 4
    assert list(rows) == sorted(set(rows))
    np.testing.assert_array_equal(rows, draw_budget(groups, budget=4, seed=0))
    assert not np.array_equal(rows, draw_budget(groups, budget=4, seed=1))
    # a group's draw does not depend on the other groups
    a_alone = draw_budget(groups[:10], budget=4, seed=0)
    np.testing.assert_array_equal(rows[[groups[i] == "a" for i in rows]], a_alone)


def test_budget_groups_records_by_attribute_else_by_context():
    by_attribute = [{"attribute": "x", "context": "c1"}, {"attribute": "x", "context": "c2"}]
    assert len(draw_budget(by_attribute, budget=1, seed=0)) == 1
    by_context = [{"context": "c1"}, {"context": "c2"}]
    assert len(draw_budget(by_context, budget=1, seed=0)) == 2


def test_budget_larger_than_a_group_warns_and_uses_all_of_it():
    groups = ["a"] * 3 + ["b"] * 10
    with pytest.warns(UserWarning, match=r"budget 5 per group is more than 1 group\(s\) hold: 'a' \(3\)"):
        rows = draw_budget(groups, budget=5, seed=0)
    assert [groups[i] for i in rows].count("a") == 3 and len(rows) == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        draw_budget(["a"] * 5, budget=5, seed=0)                         # fits: no warning


# ----- keep or adapt ------------------------------------------------------------------------------
def test_clustered_standard_error_by_hand():
    # one row per cluster: s / √n; two clusters of equal rows: the sandwich with G / (G − 1) = 2
    values = np.array([1.0, 2.0, 3.0, 4.0])
    assert clustered_standard_error(values, [0, 1, 2, 3]) == pytest.approx(values.std(ddof=1) / 2)
    sums = np.array([-3.0, 3.0])                                         # (1 − 2.5) · 2, (4 − 2.5) · 2
    assert clustered_standard_error(np.array([1.0, 1.0, 4.0, 4.0]), ["a", "a", "b", "b"]) == \
        pytest.approx(math.sqrt(2 * (sums ** 2).sum()) / 4)
    assert clustered_standard_error(values, ["a"] * 4) == math.inf


def test_an_adapted_router_must_beat_keep_by_one_standard_error_and_rank_as_many_pairs_right():
    keep = np.array([0.60, 0.60, 0.60, 0.60])
    small = Candidate("heads", 1.0)
    big = Candidate("heads", 0.1)
    # mean gain 0.05, standard error of [0.1, 0, 0.1, 0] = 0.0289: adapt
    assert choose_candidate({small: np.array([0.5, 0.6, 0.5, 0.6]), KEEP: keep}, [0, 1, 2, 3]) == small
    # same mean gain, standard error 0.05 (gains 0.2, −0.1, 0.2, −0.1): keep
    assert choose_candidate({small: np.array([0.4, 0.7, 0.4, 0.7]), KEEP: keep}, [0, 1, 2, 3]) == KEEP
    # the same gains clustered in one wording: one cluster, an infinite standard error: keep
    assert choose_candidate({small: np.array([0.5, 0.6, 0.5, 0.6]), KEEP: keep}, ["w"] * 4) == KEEP
    # lower NLL but one pair fewer ranked right (p > 0.5 ⇔ NLL < log 2): keep
    one_worse = np.array([0.1, 0.1, 0.1, 0.70])
    assert choose_candidate({big: one_worse, KEEP: keep}, [0, 1, 2, 3]) == KEEP
    # the lowest mean NLL among the candidates is the one compared with keep
    assert choose_candidate({small: np.array([0.5, 0.6, 0.5, 0.6]), big: np.array([0.45, 0.55, 0.45, 0.55]),
                             KEEP: keep}, [0, 1, 2, 3]) == big


# ----- the default path's fits, by hand ------------------------------------------------------------
def test_a_joint_layout_step_distils_the_targets_exactly():
    """On one-hot route features a linear router can match any routing per group; the exact
    step (L-BFGS, full batch, 20 iterations) reaches the minimiser of CE(ω, f), the group-mean of
    the targets (to 1.5e-4 from each of 20 initialisations tried; 1e-3 asserted)."""
    torch.manual_seed(1)
    model = MixtureRewardModel(MixtureConfig(num_heads=3, reward_dim=2, route_dim=2, router="linear"))
    route = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2)
    targets = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.3, 0.1, 0.6]])
    distil(model, route, targets)
    weights = model.router_log_weights(route).exp().detach()
    torch.testing.assert_close(weights[0], torch.tensor([0.6, 0.3, 0.1]), atol=1e-3, rtol=0)
    torch.testing.assert_close(weights[3], torch.tensor([0.2, 0.1, 0.7]), atol=1e-3, rtol=0)


def _separate_model() -> MixtureRewardModel:
    """Two heads Δ_k = diff_k, a zero prompt branch, one prototype e_0 routing 0.5 / −0.5."""
    model = MixtureRewardModel(MixtureConfig(num_heads=2, reward_dim=2, route_dim=5, context_dim=3,
                                             router="linear"))
    with torch.no_grad():
        model.heads.weight.copy_(torch.eye(2))
        for p in model.router.prompt.parameters():
            p.zero_()
    model.router.add_prototypes(torch.eye(3)[:1], model.config)
    model.router.set_context_logits(torch.tensor([[0.5, -0.5]]))
    return model


def test_adapt_on_a_separate_layout_by_hand():
    """The whole default path on 20 pairs of one known context: each candidate's held-out NLL,
    the choice against keep, and the chosen step a ← a − L̄/τ on all the pairs, worked by hand."""
    model = _separate_model()
    n = 20
    diff = np.tile([[-1.0, 2.0]], (n, 1)).astype(np.float32)            # head 1 prefers chosen
    diff[::5] = [1.0, -1.0]                                               # 4 pairs: head 0 does
    features = PairFeatures(chosen=diff, rejected=np.zeros_like(diff),
                            route=np.tile([1.0, 1.0, 1.0, 0.0, 0.0], (n, 1)).astype(np.float32),
                            prompts=[f"p{i}" for i in range(n)], attributes=["x"] * n, context_dim=3,
                            context_encoding="separate")
    adapted, info = adapt(model, features, AdaptConfig(folds=4))

    def softplus(x):
        return np.log1p(np.exp(x))

    def nll(logits, d):                                                  # −log Σ_k π_k σ(Δ_k), [N]
        pi = np.exp(logits - np.logaddexp.reduce(logits))
        return -np.log(pi @ (1 / (1 + np.exp(-d.T))))

    folded = np.empty(n, dtype=int)                                      # prompt folds (one prompt a row)
    folded[np.random.default_rng(0).permutation(n)] = np.arange(n) % 4
    expected = {KEEP: nll(np.array([0.5, -0.5]), diff).mean()}
    for tau in TAU_GRID:
        per_pair = np.empty(n)
        for f in range(4):
            train = folded != f
            mean_loss = softplus(-diff[train]).mean(0)                  # L̄ = mean −log σ(Δ)
            per_pair[~train] = nll(np.array([0.5, -0.5]) - mean_loss / tau, diff[~train])
        expected[f"{tau:g}"] = per_pair.mean()
        expected[f"contexts {tau:g}"] = expected[KEEP]                  # no new wording: nothing to re-weight
    assert set(info["cv_nll"]) == set(expected)                          # no new wording: no corrections
    for name, value in expected.items():
        assert info["cv_nll"][name] == pytest.approx(value, rel=1e-5), name
    best = min((v, t) for t, v in info["cv_nll"].items() if t != KEEP)[1]
    assert f"{info['tau']:g}" == best and info["update"] == "heads" and info["wordings"] == "prototypes"
    logits = np.array([0.5, -0.5]) - softplus(-diff).mean(0) / info["tau"]
    np.testing.assert_allclose(adapted.router.prototype_logits[0].detach().numpy(), logits, rtol=1e-5)
    assert info["nll"] == pytest.approx(nll(logits, diff).mean(), rel=1e-5)
    assert info["stage1_nll"] == pytest.approx(expected[KEEP], rel=1e-6) and info["nll"] < info["stage1_nll"]


# ----- Algorithm 1 --------------------------------------------------------------------------------
def test_algorithm1_first_step_is_adamw_on_the_eq5_targets_by_hand():
    """One epoch of one full batch: ω = softmax(log f − L/τ); the gradient of CE(ω, f) of a
    linear router is (f − ω)ᵀ x / N; AdamW's first step moves each weight by −lr · g / (|g| + ε)."""
    torch.manual_seed(0)
    model = MixtureRewardModel(MixtureConfig(num_heads=2, reward_dim=2, route_dim=2, router="linear"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2)).astype(np.float32)
    diff = rng.normal(size=(4, 2)).astype(np.float32)
    features = PairFeatures(chosen=diff, rejected=np.zeros_like(diff), route=x, prompts=list("abcd"))
    w0, b0 = model.router.weight.detach().numpy().copy(), model.router.bias.detach().numpy().copy()
    adapted, epochs = algorithm1(model, features, tau=0.5, epochs=1, batch_size=4, lr=0.01)

    logits = x @ w0.T + b0
    f = np.exp(logits - np.logaddexp.reduce(logits, axis=1, keepdims=True))
    losses = np.log1p(np.exp(-(diff @ model.heads.weight.detach().numpy().T)))
    omega = f * np.exp(-losses / 0.5)
    omega /= omega.sum(1, keepdims=True)
    grad_logits = (f - omega) / 4
    for param, start, grad in ((adapted.router.weight, w0, grad_logits.T @ x), (adapted.router.bias, b0, grad_logits.sum(0))):
        np.testing.assert_allclose(param.detach().numpy(), start - 0.01 * grad / (np.abs(grad) + 1e-8), rtol=1e-5)
    assert epochs[0]["ce"] == pytest.approx(-(omega * np.log(f)).sum(1).mean(), rel=1e-5)
    torch.testing.assert_close(model.router.weight.detach(), torch.from_numpy(w0), rtol=0, atol=0)   # input untouched


# ----- adapt --------------------------------------------------------------------------------------
def _model(variant: str = "micro", seed: int = 0) -> MixtureRewardModel:
    torch.manual_seed(seed)
    return MixtureRewardModel(MixtureConfig(num_heads=1 if variant == "single" else K, reward_dim=D,
                                            route_dim=D_ROUTE, variant=variant)).eval()


def _features(n: int = 64, seed: int = 0) -> PairFeatures:
    rng = np.random.default_rng(seed)
    group = np.arange(n) % 2                                             # the route tells the groups apart
    diff = rng.standard_normal((n, D), dtype=np.float32)
    route = rng.standard_normal((n, D_ROUTE), dtype=np.float32)
    route[:, 0] = 3.0 * (2 * group - 1)
    return PairFeatures(chosen=diff, rejected=np.zeros_like(diff), route=route,
                        prompts=[f"p{i % 16}" for i in range(n)], attributes=["x"] * n)


@pytest.mark.parametrize("variant", ["single", "static", "shared-base"])
def test_a_model_without_a_router_cannot_be_adapted(variant):
    with pytest.raises(MicroRMError, match=f"a '{variant}' model has none"):
        adapt(_model(variant), _features(), AdaptConfig())


def test_adapting_changes_the_router_only_and_leaves_the_input_model_alone():
    model, features = _model(), _features()
    with torch.no_grad():                                                # heads that disagree by group
        model.heads.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1.0]]))
    features.chosen = np.where(((np.arange(64) % 2 == 0) == (features.chosen[:, 0] > 0))[:, None],
                               features.chosen, -features.chosen)       # group 0 follows head 0, group 1 head 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted, info = adapt(model, features, AdaptConfig(tau=1.0))
    for name, value in model.state_dict().items():                      # the input is untouched
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    torch.testing.assert_close(adapted.heads.weight, model.heads.weight, rtol=0, atol=0)   # frozen heads
    assert info["tau"] == 1.0 and info["nll"] < info["stage1_nll"]       # adapted, and the budget fits better
    assert any(not torch.equal(v, model.router.state_dict()[k]) for k, v in adapted.router.state_dict().items())
    assert set(info) == {"tau", "update", "wordings", "cv_nll", "stage1_nll", "nll", "epochs", "pairs", "seconds"}
    assert set(info["cv_nll"]) == {"1", KEEP} and info["pairs"] == 64 and len(info["epochs"]) == 10
    assert adapted.config.feature["router_input"] == "context"
    assert adapted.config.training["stage2"] == {"budget": 50, "tau": 1.0, "seed": 0, "folds": 5, "tau_chosen": 1.0,
                                                 "update_chosen": "heads", "wordings_chosen": "prototypes",
                                                 "cv_nll": info["cv_nll"]}


def test_keep_returns_the_stage1_router_exactly():
    model, features = _model(), _features()                              # random labels: nothing to learn
    adapted, info = adapt(model, features, AdaptConfig())
    assert info["tau"] == KEEP and info["epochs"] == [] and info["nll"] == info["stage1_nll"]
    for name, value in adapted.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    assert set(info["cv_nll"]) == {KEEP, *(f"{t:g}" for t in TAU_GRID)}


def test_adapting_is_deterministic_for_a_seed():
    model, features = _model(), _features()
    first, a = adapt(model, features, AdaptConfig(seed=3))
    second, b = adapt(model, features, AdaptConfig(seed=3))
    _, c = adapt(model, features, AdaptConfig(seed=4))
    for name, value in first.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[name], rtol=0, atol=0)
    assert a["cv_nll"] == b["cv_nll"] != c["cv_nll"]                     # the seed draws the folds


def test_cross_validation_needs_two_prompts():
    features = _features()
    features.prompts = ["same prompt"] * len(features)
    with pytest.raises(MicroRMError, match="at least 2 distinct prompts"):
        adapt(_model(), features, AdaptConfig(tau=1e-3))


def test_adapted_model_round_trips_through_save_pretrained(tmp_path):
    adapted, _ = adapt(_model(), _features(), AdaptConfig(tau=1.0))
    adapted.save_pretrained(tmp_path / "m")
    loaded = MixtureRewardModel.from_pretrained(tmp_path / "m")
    f = _features(seed=1)
    np.testing.assert_array_equal(loaded.predict_proba(f.chosen, f.rejected, f.route),
                                  adapted.predict_proba(f.chosen, f.rejected, f.route))
    assert loaded.config.training["stage2"]["tau"] == 1.0


def test_features_of_the_wrong_width_are_refused():
    features = _features()
    features.route = features.route[:, :3]
    with pytest.raises(MicroRMError, match=r"`features.route` has shape \(64, 3\)"):
        adapt(_model(), features, AdaptConfig())


def test_a_wording_added_by_stage2_is_recorded_in_the_config():
    model = _separate_model()
    adapted = copy.deepcopy(model)
    assert adapted.router.add_prototypes(torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]), adapted.config,
                                         corrections=True) == 1
    assert (adapted.config.context_prototypes, adapted.config.context_corrections) == (2, [1])
    assert model.config.context_prototypes == 1                          # the copy's config, not the original's
