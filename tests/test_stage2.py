"""Stage 2 (Algorithm 1) on tiny literal features: the Hedge targets, the budget draw, the config
checks, and what ``adapt_router`` may and may not change."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.model import MixtureConfig, MixtureRewardModel
from micro_rm.train.stage2 import AdaptConfig, adapt_router, draw_budget, hedge_targets, parse_tau

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


@pytest.mark.parametrize("tau", [0.0, -1e-3, float("nan"), float("inf"), True])
def test_tau_must_be_positive(tau):
    with pytest.raises(MicroRMError, match="`tau` must be a finite number ≥ 1e-08"):
        AdaptConfig(tau=tau)
    with pytest.raises(MicroRMError, match="`tau` must be a finite number ≥ 1e-08"):
        hedge_targets(torch.zeros(1, 2), torch.zeros(1, 2), tau)


# ----- the config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"budget": 0}, "`budget` must be an integer ≥ 1"),
    ({"epochs": 0}, "`epochs` must be an integer ≥ 1"),
    ({"batch_size": 1.5}, "`batch_size` must be an integer ≥ 1"),
    ({"lr": 0.0}, "`lr` must be a finite number"),
    ({"folds": 1}, "`folds` must be an integer ≥ 2"),
    ({"tau": "sometimes"}, "`tau` must be a finite number ≥ 1e-08 .* or 'auto'"),
    ({"tau_grid": ()}, "`tau_grid` must be a non-empty list"),
    ({"tau_grid": (1e-3, -1.0)}, "`tau_grid` must be a finite number ≥ 1e-08"),
])
def test_bad_settings_name_the_field(kwargs, message):
    with pytest.raises(MicroRMError, match=message):
        AdaptConfig(**kwargs)


def test_parse_tau():
    assert parse_tau("1e-3") == 1e-3 and parse_tau(" AUTO ") == "auto"
    with pytest.raises(MicroRMError, match="--tau must be a number ≥ 1e-08 or 'auto'"):
        parse_tau("small")
    with pytest.raises(MicroRMError, match="`tau` must be a finite number ≥ 1e-08"):
        parse_tau("-1")


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


# ----- adapt_router -------------------------------------------------------------------------------
def _model(variant: str = "micro", seed: int = 0) -> MixtureRewardModel:
    torch.manual_seed(seed)
    return MixtureRewardModel(MixtureConfig(num_heads=1 if variant == "single" else K, reward_dim=D,
                                            route_dim=D_ROUTE, variant=variant)).eval()


def _features(n: int = 64, seed: int = 0) -> PairFeatures:
    rng = np.random.default_rng(seed)
    return PairFeatures(chosen=rng.standard_normal((n, D), dtype=np.float32),
                        rejected=rng.standard_normal((n, D), dtype=np.float32),
                        route=rng.standard_normal((n, D_ROUTE), dtype=np.float32),
                        prompts=[f"p{i % 16}" for i in range(n)], attributes=["x"] * n)


@pytest.mark.parametrize("variant", ["single", "static", "shared-base"])
def test_a_model_without_a_router_cannot_be_adapted(variant):
    with pytest.raises(MicroRMError, match=f"a '{variant}' model has none"):
        adapt_router(_model(variant), _features(), AdaptConfig(), progress=False)


def test_adapting_trains_the_router_only_and_leaves_the_input_model_alone():
    model, features = _model(), _features()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted, info = adapt_router(model, features, AdaptConfig(tau=0.1, algorithm="paper"), progress=False)
    for name, value in model.state_dict().items():                      # the input is untouched
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    torch.testing.assert_close(adapted.heads.weight, model.heads.weight, rtol=0, atol=0)   # frozen heads
    for name, value in adapted.router.state_dict().items():             # every router tensor moved
        assert not torch.equal(value, model.router.state_dict()[name]), name
    assert info["nll"] < info["stage1_nll"]                              # the budget pairs fit better
    assert info["pairs"] == 64 and len(info["epochs"]) == 10 and info["cv_nll"] is None
    assert adapted.config.feature["router_input"] == "context"
    assert adapted.config.training["stage2"]["tau_chosen"] == 0.1
    assert adapted.config.training["stage2"]["budget"] == 50


def test_adapting_is_deterministic_for_a_seed():
    model, features = _model(), _features()
    first, _ = adapt_router(model, features, AdaptConfig(seed=3, algorithm="paper"), progress=False)
    second, _ = adapt_router(model, features, AdaptConfig(seed=3, algorithm="paper"), progress=False)
    other, _ = adapt_router(model, features, AdaptConfig(seed=4, algorithm="paper"), progress=False)
    for name, value in first.state_dict().items():
        torch.testing.assert_close(value, second.state_dict()[name], rtol=0, atol=0)
    assert not torch.equal(first.router[0].weight, other.router[0].weight)


def test_tau_auto_reports_the_cross_validated_nll_of_every_tau_and_picks_the_lowest():
    config = AdaptConfig(tau="auto", tau_grid=(1e-3, 1.0, 100.0), folds=3, epochs=3, algorithm="paper")
    _, info = adapt_router(_model(), _features(), config, progress=False)
    assert set(info["cv_nll"]) == {"0.001", "1", "100"}
    assert f"{info['tau']:g}" == min(info["cv_nll"], key=info["cv_nll"].get)
    assert all(math.isfinite(v) and v > 0 for v in info["cv_nll"].values())


def test_tau_auto_needs_two_prompts():
    features = _features()
    features.prompts = ["same prompt"] * len(features)
    with pytest.raises(MicroRMError, match="at least 2 distinct prompts"):
        adapt_router(_model(), features, AdaptConfig(tau="auto"), progress=False)


def test_a_fixed_tau_without_cross_validation_takes_a_single_prompt():
    features = _features()
    features.prompts = ["same prompt"] * len(features)
    _, info = adapt_router(_model(), features, AdaptConfig(tau=1e-3, algorithm="paper"), progress=False)
    assert info["tau"] == 1e-3 and info["cv_nll"] is None


def test_adapted_model_round_trips_through_save_pretrained(tmp_path):
    adapted, _ = adapt_router(_model(), _features(), AdaptConfig(epochs=2), progress=False)
    adapted.save_pretrained(tmp_path / "m")
    loaded = MixtureRewardModel.from_pretrained(tmp_path / "m")
    f = _features(seed=1)
    np.testing.assert_array_equal(loaded.predict_proba(f.chosen, f.rejected, f.route),
                                  adapted.predict_proba(f.chosen, f.rejected, f.route))
    assert loaded.config.training["stage2"]["epochs"] == 2


def test_features_of_the_wrong_width_are_refused():
    features = _features()
    features.route = features.route[:, :3]
    with pytest.raises(MicroRMError, match=r"`features.route` has shape \(64, 3\)"):
        adapt_router(_model(), features, AdaptConfig(), progress=False)


def test_no_warning_when_the_budget_fits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        draw_budget(["a"] * 5, budget=5, seed=0)
