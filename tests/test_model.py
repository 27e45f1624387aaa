"""The mixture model: its loss, per-example routing, variants, save / load and scalar export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from micro_rm import __version__
from micro_rm.errors import MicroRMError
from micro_rm.model import (MixtureConfig, MixtureRewardModel, bt_loss, export_scalar, mixture_bt_loss,
                            negative_entropy)


def _model(variant="micro", k=3, d=4, d_r=5, router="mlp", seed=0):
    torch.manual_seed(seed)
    model = MixtureRewardModel(MixtureConfig(num_heads=k, reward_dim=d, route_dim=d_r, variant=variant,
                                             router=router, backbone={"name": "fake", "spec": {"name": "fake"}},
                                             feature={"router_input": "context", "context_in_reward": False}))
    if variant == "static":
        with torch.no_grad():
            model.logits.copy_(torch.randn(k))
    return model.eval()


def _arrays(n=7, d=4, d_r=5, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((n, d)).astype(np.float32),
            rng.standard_normal((n, d_r)).astype(np.float32))


# ----- the loss -----------------------------------------------------------------------------------

def test_mixture_loss_matches_hand_computation():
    # heads say σ(0) = 0.5 and σ(ln 3) = 0.75; equal weights → p = 0.625
    delta = torch.tensor([[0.0, math.log(3.0)]])
    log_w = torch.log(torch.tensor([[0.5, 0.5]]))
    assert mixture_bt_loss(delta, log_w).item() == pytest.approx(-math.log(0.625), abs=1e-6)
    # a sharp router picks its head's loss: −log σ(ln 3) = −log 0.75
    log_w = torch.log(torch.tensor([[1e-12, 1 - 1e-12]]))
    assert mixture_bt_loss(delta, log_w).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_mixture_loss_with_one_head_is_the_bt_loss():
    delta = torch.tensor([[-3.0], [0.0], [0.5], [40.0], [-40.0]])
    assert torch.allclose(mixture_bt_loss(delta, torch.zeros(5, 1)), bt_loss(delta[:, 0]))


def test_mixture_loss_is_finite_when_every_head_is_very_wrong():
    delta = torch.tensor([[-200.0, -300.0]])
    loss = mixture_bt_loss(delta, torch.log(torch.tensor([[0.5, 0.5]])))
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(200 + math.log(2), rel=1e-4)


def test_negative_entropy_example_and_marginal_by_hand():
    log_w = torch.log(torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    per_example = 0.9 * math.log(0.9) + 0.1 * math.log(0.1)
    assert negative_entropy(log_w, "example").item() == pytest.approx(per_example, abs=1e-6)
    # the batch mean is uniform: the marginal term is at its minimum −log 2
    assert negative_entropy(log_w, "marginal").item() == pytest.approx(-math.log(2), abs=1e-6)


# ----- routing and predictions ----------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["micro", "single", "static", "shared-base"])
def test_permuting_a_batch_permutes_the_outputs(variant):
    """Regression test for the released code's bug: it routed every pair with row 0's features."""
    model = _model(variant, k=1 if variant == "single" else 3)
    chosen, rejected, route = _arrays()
    perm = np.random.default_rng(0).permutation(len(chosen))
    p = model.predict_proba(chosen, rejected, route)
    np.testing.assert_allclose(model.predict_proba(chosen[perm], rejected[perm], route[perm]), p[perm], rtol=1e-6)
    np.testing.assert_allclose(model.router_weights(route[perm]), model.router_weights(route)[perm], rtol=1e-6)


def test_router_weights_differ_per_example_and_sum_to_one():
    weights = _model().router_weights(_arrays()[2])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert not np.allclose(weights[0], weights[1])


def test_predict_proba_is_the_routed_mixture_of_head_probs():
    model = _model()
    chosen, rejected, route = _arrays()
    expected = (model.router_weights(route) * model.head_probs(chosen, rejected)).sum(axis=1)
    np.testing.assert_allclose(model.predict_proba(chosen, rejected, route), expected, rtol=1e-5)
    np.testing.assert_allclose(model.predict_proba(rejected, chosen, route), 1 - expected, rtol=1e-5)


def test_score_is_the_router_weighted_sum_of_head_rewards():
    model = _model()
    chosen, _, route = _arrays()
    expected = (model.router_weights(route) * model.rewards(chosen)).sum(axis=1)
    np.testing.assert_allclose(model.score(chosen, route), expected, rtol=1e-5)


def test_features_model_dimension_mismatch_is_named():
    chosen, rejected, route = _arrays(d=6)
    with pytest.raises(MicroRMError, match=r"`chosen` has shape \(7, 6\).*\[N, 4\].*dimension mismatch"):
        _model().predict_proba(chosen, rejected, route)


def test_hub_revision_unknown_offline_is_not_a_backbone_mismatch():
    # Bug: model_backbone accepted a hub revision looked up offline (None), check_features refused it.
    from micro_rm.features.base import PairFeatures
    from micro_rm.features.backbones import fingerprint_differences

    model = _model()
    recorded = {"kind": "transformer", "model": "org/rm", "revision": "abc123", "dtype": "float32"}
    model.config.backbone = recorded
    chosen, rejected, route = _arrays()
    offline = PairFeatures(chosen, rejected, route, ["p"] * 7, fingerprint={**recorded, "revision": None})
    model.check_features(offline)
    assert fingerprint_differences(recorded, offline.fingerprint) == []
    other = PairFeatures(chosen, rejected, route, ["p"] * 7, fingerprint={**recorded, "model": "org/other"})
    with pytest.raises(MicroRMError, match="features were made by a different backbone"):
        model.check_features(other)


def test_config_refuses_bad_values():
    with pytest.raises(MicroRMError, match="`num_heads` must be an integer ≥ 1"):
        MixtureConfig(num_heads=0, reward_dim=3, route_dim=3)
    with pytest.raises(MicroRMError, match="`variant` must be one of micro, single, static, shared-base"):
        MixtureConfig(num_heads=2, reward_dim=3, route_dim=3, variant="moe")


# ----- save / load --------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["micro", "single", "static", "shared-base"])
def test_save_load_gives_identical_predictions(tmp_path, variant):
    model = _model(variant, k=1 if variant == "single" else 3)
    model.config.metrics = {"val_loss": np.float32(0.5)}
    model.save_pretrained(tmp_path / "m")
    loaded = MixtureRewardModel.from_pretrained(str(tmp_path / "m"))
    chosen, rejected, route = _arrays()
    np.testing.assert_array_equal(loaded.predict_proba(chosen, rejected, route),
                                  model.predict_proba(chosen, rejected, route))
    np.testing.assert_array_equal(loaded.score(chosen, route), model.score(chosen, route))
    assert loaded.config.to_dict() == json.loads((tmp_path / "m" / "config.json").read_text())
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "K = " in (tmp_path / "m" / "README.md").read_text()


def test_save_replaces_a_model_folder_but_not_other_folders(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")                # a model folder is replaced as a whole
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(MicroRMError, match="not a micro-rm model folder"):
        model.save_pretrained(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temp left behind


def _edit_config(folder, **changes):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("changes, message", [
    ({"num_heads": None}, r"config\.json: missing key `num_heads`"),
    ({"router": "transformer"}, r"config\.json: `router` must be one of mlp, linear"),
    ({"num_heads": "three"}, r"config\.json: `num_heads` must be an integer"),
    ({"colour": "red"}, r"config\.json: unknown key `colour`"),
    ({"num_heads": 4}, r"model\.safetensors: tensor `heads\.weight` has shape \(3, 4\).*implies \(4, 4\)"),
    ({"version": "7.0.0"}, r"written by micro-rm 7\.0\.0, which is incompatible"),
])
def test_loading_a_bad_config_names_the_field_and_file(tmp_path, changes, message):
    _model().save_pretrained(tmp_path / "m")
    _edit_config(tmp_path / "m", **changes)
    with pytest.raises(MicroRMError, match=message):
        MixtureRewardModel.from_pretrained(tmp_path / "m")


def test_loading_a_folder_without_weights_says_so(tmp_path):
    _model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(MicroRMError, match="no model.safetensors"):
        MixtureRewardModel.from_pretrained(tmp_path / "m")


def test_unknown_hub_id_offline_is_a_clear_error():
    with pytest.raises(MicroRMError, match="downloading it from the Hugging Face hub failed"):
        MixtureRewardModel.from_pretrained("no-such-owner/no-such-micro-rm-model")


def test_saved_config_records_the_library_version(tmp_path):
    _model().save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["version"] == __version__


# ----- scalar export ------------------------------------------------------------------------------

def test_export_scalar_with_weights_scores_the_weighted_heads(tmp_path):
    model = _model("shared-base")
    chosen, rejected, route = _arrays()
    scalar = export_scalar(model, tmp_path / "s", weights=[2, 0, 2])
    loaded = MixtureRewardModel.from_pretrained(tmp_path / "s")
    expected = model.rewards(chosen) @ np.array([0.5, 0.0, 0.5], dtype=np.float32)
    np.testing.assert_allclose(loaded.score(chosen, route), expected, rtol=1e-5, atol=1e-6)
    assert loaded.config.variant == "static"
    assert loaded.config.training["exported"]["weights"] == [0.5, 0.0, 0.5]
    np.testing.assert_array_equal(loaded.predict_proba(chosen, rejected, route),
                                  scalar.predict_proba(chosen, rejected, route))


def test_export_scalar_with_a_route_freezes_the_router_weights(tmp_path):
    model = _model()
    chosen, _, route = _arrays()
    scalar = export_scalar(model, tmp_path / "s", route=route[3], context="be concise")
    np.testing.assert_allclose(scalar.router_weights(route)[0], model.router_weights(route[3:4])[0], rtol=1e-5)
    np.testing.assert_allclose(scalar.score(chosen[:1], route[:1]), model.score(chosen[:1], route[3:4]), rtol=1e-5)


@pytest.mark.parametrize("weights", [[1, 2], [1, -1, 1], [0, 0, 0], [1, float("nan"), 1]])
def test_export_scalar_refuses_bad_weights(tmp_path, weights):
    with pytest.raises(MicroRMError, match="`weights` must be 3 non-negative numbers"):
        export_scalar(_model(), tmp_path / "s", weights=weights)
    assert not (tmp_path / "s").exists()
