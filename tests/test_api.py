"""The top-level API: `from micro_rm import MiCRo` fits, adapts, evaluates, scores text, compares,
saves and loads, on built-in synthetic users with the static backbone."""

from __future__ import annotations

import numpy as np
import pytest

from micro_rm import MiCRo
from micro_rm.errors import MicroRMError


@pytest.fixture(scope="module")
def data():
    from micro_rm.data.split import select_split
    from micro_rm.data.synthetic import make_synthetic_pairs

    pairs = make_synthetic_pairs(n_prompts=40, seed=0)
    return select_split(pairs, "train"), select_split(pairs, "test")


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory):
    train, _ = data
    return MiCRo(heads=4, backbone="static", cache_dir=tmp_path_factory.mktemp("cache"), epochs=10).fit(
        train, progress=False)


def test_fit_and_evaluate_are_the_library_verbs_with_default_configs(fitted, data):
    """Two routes, one answer: MiCRo.fit equals featurize + fit_stage1 by hand."""
    from micro_rm.eval.metrics import pairwise_accuracy
    from micro_rm.features.backbones import load_backbone
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize
    from micro_rm.model.text import featurize_for
    from micro_rm.train import Stage1Config, fit_stage1

    train, test = data
    features, _ = featurize(train, load_backbone("static"), FeatureCache(fitted.cache_dir), progress=False)
    by_hand, _ = fit_stage1(features, Stage1Config(heads=4, epochs=10), progress=False)
    test_f = featurize_for(fitted.model_, test, fitted.cache_dir, progress=False)
    np.testing.assert_allclose(fitted.model_.predict_proba(test_f.chosen, test_f.rejected, test_f.route),
                               by_hand.predict_proba(test_f.chosen, test_f.rejected, test_f.route), rtol=1e-5)
    expected = pairwise_accuracy(by_hand.predict_proba(test_f.chosen, test_f.rejected, test_f.route), test_f.attributes)
    assert fitted.evaluate(test, progress=False)["mean_accuracy"] == pytest.approx(expected["mean_accuracy"])
    assert fitted.model_.config.data["pairs"] == len(train)
    assert fitted.model_.config.feature == by_hand.config.feature == {"router_input": "context",
                                                                      "context_in_reward": False}


def test_adapt_is_draw_budget_featurize_and_adapt_by_hand(data, tmp_path):
    """Two routes, one answer: MiCRo.adapt equals the library's verbs by hand, bit for bit."""
    import torch

    from micro_rm.features.backbones import load_backbone
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize
    from micro_rm.train import AdaptConfig, draw_budget
    from micro_rm.train.adapt import adapt

    train, _ = data
    rm = MiCRo(heads=4, backbone="static", cache_dir=tmp_path, router_input="prompt", epochs=5).fit(
        train, progress=False)
    stage1 = rm.model_
    assert rm.adapt(train, budget=10, tau=1e-3, progress=False) is rm
    chosen = [train[i] for i in draw_budget(train, budget=10, seed=0)]
    features, _ = featurize(chosen, load_backbone("static"), FeatureCache(tmp_path), router_input="context",
                            progress=False)                     # stage 2 routes on the context
    by_hand, info = adapt(stage1, features, AdaptConfig(budget=10, tau=1e-3))
    for name, value in by_hand.state_dict().items():
        assert torch.equal(rm.model_.state_dict()[name], value), name
    assert torch.equal(rm.model_.heads.weight, stage1.heads.weight)                    # frozen heads
    assert rm.adapt_info_["cv_nll"] == info["cv_nll"] and rm.adapt_info_["tau"] == info["tau"]
    assert sum(rm.adapt_info_["pairs_per_group"].values()) == len(chosen) == info["pairs"]
    assert rm.model_.config.feature["router_input"] == "context"
    with pytest.raises(MicroRMError, match=r"3 of 3 pairs have no `context` \(the first is record 1\)"):
        rm.adapt([{k: v for k, v in r.items() if k != "context"} for r in train[:3]], budget=1, progress=False)


def test_score_and_compare_take_text_and_survive_save_and_load(fitted, data, tmp_path):
    _, test = data
    r = test[0]
    rewards = fitted.score(r["prompt"], [r["chosen"], r["rejected"]], context=r.get("context"))
    assert len(rewards) == 2 and all(np.isfinite(rewards))
    p = fitted.compare(r["prompt"], r["chosen"], r["rejected"], context=r.get("context"))
    assert 0.0 < p < 1.0
    assert fitted.compare(r["prompt"], r["rejected"], r["chosen"], context=r.get("context")) == pytest.approx(1 - p, abs=1e-6)
    fitted.save(tmp_path / "model")
    loaded = MiCRo.load(tmp_path / "model", cache_dir=fitted.cache_dir)
    assert loaded.heads == 4 and loaded.backbone == "static"
    np.testing.assert_allclose(loaded.score(r["prompt"], [r["chosen"], r["rejected"]], context=r.get("context")),
                               rewards, rtol=1e-5)


def test_unfitted_use_says_what_to_do():
    with pytest.raises(MicroRMError, match="call fit\\(data\\) first, or MiCRo.load\\(path\\)"):
        MiCRo().score("Hi", ["Hello"])
