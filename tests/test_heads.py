"""Heads: masking, response statistics, profiles and labels, the safety audit, merging and
choosing K, on tiny synthetic features (no backbone)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.heads.agreement import agreement_clusters, agreement_matrix
from micro_rm.heads.audit import audit_heads, wilson_interval
from micro_rm.heads.labels import save_labels
from micro_rm.heads.mask import mask_heads
from micro_rm.heads.merge import duplicate_head, merge_heads
from micro_rm.heads.profile import profile_heads
from micro_rm.heads.stats import STATISTIC_NAMES, response_statistics
from micro_rm.model.config import MixtureConfig
from micro_rm.model.mixture import MixtureRewardModel
from micro_rm.train.config import Stage1Config
from micro_rm.train.select_k import one_standard_error, select_heads
from micro_rm.train.stage1 import fit_stage1


def group_features(groups: int, pairs_per_group: int = 300, dim: int = 8, seed: int = 0) -> PairFeatures:
    """Pairs from ``groups`` sub-populations, each with its own BT direction; the router reads a
    noisy one-hot of the group (what a context sentence would tell it)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(groups, dim)) * 3
    g = np.repeat(np.arange(groups), pairs_per_group)
    a, b = rng.normal(size=(len(g), dim)), rng.normal(size=(len(g), dim))
    win = rng.random(len(g)) < 1 / (1 + np.exp(-((a - b) * w[g]).sum(1)))
    chosen, rejected = np.where(win[:, None], a, b), np.where(win[:, None], b, a)
    route = np.eye(groups)[g] + 0.1 * rng.normal(size=(len(g), groups))
    return PairFeatures(chosen=chosen.astype(np.float32), rejected=rejected.astype(np.float32),
                        route=route.astype(np.float32), prompts=[f"p{i}" for i in range(len(g))],
                        attributes=[f"g{x}" for x in g])


def accuracy(model: MixtureRewardModel, features: PairFeatures) -> np.ndarray:
    return model.predict_proba(features.chosen, features.rejected, features.route) > 0.5


# ----- masking ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["micro", "static"])
def test_masked_head_gets_zero_weight_and_the_rest_renormalise(variant):
    torch.manual_seed(0)
    model = MixtureRewardModel(MixtureConfig(num_heads=3, reward_dim=4, route_dim=5, variant=variant))
    if variant == "static":
        model.logits.data = torch.tensor([0.3, 1.0, -0.5])
    route = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    before = model.router_weights(route)
    mask_heads(model, [1])
    after = model.router_weights(route)
    assert (after[:, 1] == 0).all()
    keep = before[:, [0, 2]]
    np.testing.assert_allclose(after[:, [0, 2]], keep / keep.sum(1, keepdims=True), rtol=1e-5)


def test_masked_router_has_no_nan_in_the_regulariser_or_its_gradient():
    """Regression: a −inf logit made π log π and the stage-2 cross-entropy NaN."""
    from micro_rm.model.losses import negative_entropy

    model = mask_heads(MixtureRewardModel(MixtureConfig(num_heads=3, reward_dim=2, route_dim=2)), [0])
    log_w = model.router_log_weights(torch.randn(4, 2))
    loss = negative_entropy(log_w, "example") + negative_entropy(log_w, "marginal")
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.router.parameters())


def test_mask_survives_save_and_load(tmp_path):
    model = mask_heads(MixtureRewardModel(MixtureConfig(num_heads=3, reward_dim=2, route_dim=2)), [2])
    model.save_pretrained(tmp_path / "m")
    loaded = MixtureRewardModel.from_pretrained(str(tmp_path / "m"))
    assert loaded.config.masked_heads == [2]
    assert (loaded.router_weights(np.ones((2, 2), np.float32))[:, 2] == 0).all()


def test_masking_every_head_or_a_missing_head_is_refused():
    model = MixtureRewardModel(MixtureConfig(num_heads=2, reward_dim=2, route_dim=2))
    with pytest.raises(MicroRMError, match="would leave none of the 2 heads"):
        mask_heads(model, [0, 1])
    with pytest.raises(MicroRMError, match=r"head indices in 0\.\.1, got \[5\]"):
        mask_heads(model, [5])
    with pytest.raises(MicroRMError, match="`masked_heads` must be distinct head indices"):
        MixtureConfig(num_heads=2, reward_dim=2, route_dim=2, masked_heads=[1, 1])
    with pytest.raises(MicroRMError, match="`head_labels` must be empty or 2 strings"):
        MixtureConfig(num_heads=2, reward_dim=2, route_dim=2, head_labels=["one"])


# ----- statistics, profile, labels ------------------------------------------------------------
def test_response_statistics_measure_what_they_name():
    texts = ["Sure! Here are the steps:\n- plan\n- act\n- review", "I'm sorry, I can't help with that.",
             "Why? Is it so?", "The cat sat. The dog ran.",
             "Notwithstanding considerable methodological heterogeneity, contemporary epidemiological investigations "
             "consistently demonstrate substantial associations."]
    stats = dict(zip(STATISTIC_NAMES, response_statistics(texts, ["What are the steps?"] * len(texts)).T))
    assert stats["list_items"].tolist() == [3, 0, 0, 0, 0]
    assert stats["refusal"].tolist() == [0, 1, 0, 0, 0]
    assert stats["questions"][2] == 1.0 and stats["exclamations"][0] > 0
    assert stats["reading_ease"][3] > 90 > 0 > stats["reading_ease"][4]   # Flesch: plain vs dense
    assert stats["prompt_overlap"][0] > stats["prompt_overlap"][3]


def _styled_pairs(n: int = 240, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Pairs whose responses differ in length and in exclamations independently."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        sides = []
        for _ in range(2):
            words = " ".join(["word"] * int(rng.integers(3, 40)))
            sides.append(f"{words}{'!' * int(rng.integers(0, 3)) or '.'} More {words}.")
        records.append({"prompt": f"prompt {i}", "chosen": sides[0], "rejected": sides[1],
                        "attribute": "a" if i % 2 else "b"})
    return records, rng


def _features_of_statistics(records: list[dict]) -> PairFeatures:
    """Reward features = the responses' own (words, exclamations) statistics."""
    columns = [STATISTIC_NAMES.index("words"), STATISTIC_NAMES.index("exclamations")]
    prompts = [r["prompt"] for r in records]
    chosen = response_statistics([r["chosen"] for r in records], prompts)[:, columns]
    rejected = response_statistics([r["rejected"] for r in records], prompts)[:, columns]
    return PairFeatures(chosen=chosen.astype(np.float32), rejected=rejected.astype(np.float32),
                        route=np.zeros((len(records), 2), np.float32), prompts=prompts,
                        attributes=[r["attribute"] for r in records])


def test_profile_finds_what_each_head_rewards_and_labels_it():
    records, _ = _styled_pairs()
    features = _features_of_statistics(records)
    model = MixtureRewardModel(MixtureConfig(num_heads=3, reward_dim=2, route_dim=2))
    with torch.no_grad():   # head 0 rewards length, head 1 exclamations, head 2 brevity
        model.heads.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    profile = profile_heads(model, features, records, resamples=200)
    names, rho = profile["statistics"]["names"], np.array(profile["statistics"]["spearman"])
    assert rho[0, names.index("words")] > 0.9 and rho[2, names.index("words")] < -0.9
    assert rho[1, names.index("exclamations")] > 0.9
    assert profile["labels"][0].startswith("prefers long") and profile["labels"][2].startswith("prefers short")
    assert "exclamatory" in profile["labels"][1]
    assert profile["agreement"]["matrix"][0][2] < 0.05 and profile["agreement"]["clusters"] == [[0], [1], [2]]
    example = profile["examples"][0][0]   # head 0 prefers the longer side where the others do not
    assert len(example["head_prefers"].split()) > len(example["others_prefer"].split())


def test_agreement_and_complete_linkage_clusters():
    deltas = np.array([[1.0, 2.0, -1.0], [1.0, 0.5, 1.0], [-1.0, -3.0, 2.0], [2.0, 1.0, -1.0]])
    agreement = agreement_matrix(deltas)
    assert agreement[0, 1] == 1.0 and agreement[0, 2] == 0.25
    chain = np.array([[1, .92, .85], [.92, 1, .92], [.85, .92, 1]])
    assert agreement_clusters(chain, 0.9) == [[0, 1], [2]]   # 0 and 2 agree on only 0.85


def test_labels_are_stored_in_config_and_edits_are_validated(tmp_path):
    MixtureRewardModel(MixtureConfig(num_heads=2, reward_dim=2, route_dim=2)).save_pretrained(tmp_path / "m")
    save_labels(tmp_path / "m", ["prefers short answers", "prefers long answers"])
    save_labels(tmp_path / "m", {1: "verbose"}, only=[1])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["head_labels"] == ["prefers short answers", "verbose"]
    with pytest.raises(MicroRMError, match="one non-empty line"):
        save_labels(tmp_path / "m", {0: "two\nlines"}, only=[0])
    with pytest.raises(MicroRMError, match="not a local model folder"):
        save_labels(tmp_path / "nowhere", ["a", "b"])


# ----- audit -----------------------------------------------------------------------------------
def test_wilson_interval_matches_the_formula():
    assert wilson_interval(60, 100) == [0.502, 0.6906]
    assert wilson_interval(0, 10)[0] == 0.0


def test_audit_flags_the_head_that_prefers_rejected_responses():
    rng = np.random.default_rng(0)
    n = 300
    diff = np.abs(rng.normal(size=(n, 1))).astype(np.float32)
    diff[rng.random(n) < 0.3] *= -1             # the label follows +diff on about 70% of pairs
    features = PairFeatures(chosen=diff, rejected=np.zeros((n, 1), np.float32),
                            route=np.zeros((n, 1), np.float32), prompts=[str(i) for i in range(n)])
    model = MixtureRewardModel(MixtureConfig(num_heads=3, reward_dim=1, route_dim=1))
    with torch.no_grad():
        model.heads.weight.copy_(torch.tensor([[1.0], [-1.0], [0.0]]))   # safe, harmful, indifferent
        model.router[-1].weight.zero_()                                   # not the random init's
        model.router[-1].bias.copy_(torch.tensor([0.0, 3.0, 0.0]))        # routed mostly to the harmful one
    audit = audit_heads(model, features)
    assert audit["flagged"] == [1]
    harmful = audit["heads"][1]
    assert harmful["interval"][0] > 0.5 and harmful["rejected_rate"] == pytest.approx(np.mean(diff > 0))
    assert audit["heads"][2]["rejected_rate"] == 0.0      # a tie is not a preference for rejected
    masked = mask_heads(model, audit["flagged"])
    assert audit_heads(masked, features)["routed_accuracy"] > audit["routed_accuracy"]


# ----- merging ---------------------------------------------------------------------------------
def test_merging_a_duplicated_head_gives_back_k_heads_and_the_same_accuracy():
    features = group_features(4, seed=1)
    model, _ = fit_stage1(features, Stage1Config(heads=4, epochs=30, val_fraction=0.2), progress=False)
    doubled = duplicate_head(model, 1)
    np.testing.assert_allclose(doubled.predict_proba(features.chosen, features.rejected, features.route),
                               model.predict_proba(features.chosen, features.rejected, features.route), atol=1e-5)
    merged, info = merge_heads(doubled, features, 0.9, progress=False)
    assert merged.config.num_heads == 4 and [1, 4] in info["clusters"]
    before, after = accuracy(doubled, features), accuracy(merged, features)
    assert abs(after.mean() - before.mean()) < 0.02
    assert info["validation_nll"] <= info["validation_nll_before"] + 1e-6


def test_merge_with_nothing_to_merge_keeps_the_model_and_refuses_masked_models():
    features = group_features(2, pairs_per_group=50)
    model, _ = fit_stage1(features, Stage1Config(heads=2, epochs=5), progress=False)
    same, info = merge_heads(model, features, 0.999, progress=False)
    assert same is model and info["clusters"] == [[0], [1]]
    with pytest.raises(MicroRMError, match="has masked heads"):
        merge_heads(mask_heads(model, [0]), features, 0.9, progress=False)
    with pytest.raises(MicroRMError, match=r"--min-agreement must be in \[0.5, 1\]"):
        merge_heads(model, features, 0.2)


def test_merging_keeps_a_correction_that_changes_nothing_changing_nothing():
    """A stage-2 correction multiplies a head's weight by exp(δ); merged heads take the mean of
    their factors, so a correction at δ = 0 still routes nothing differently after a merge."""
    import copy

    from micro_rm.heads.merge import _merged_model

    model = MixtureRewardModel(MixtureConfig(num_heads=3, reward_dim=2, route_dim=5, context_dim=3))
    model.router.add_prototypes(torch.eye(3)[:2], model.config)
    model.router.set_context_logits(torch.tensor([[2.0, 0.0, -1.0], [-1.0, 1.0, 0.5]]))
    corrected = copy.deepcopy(model)
    corrected.router.add_prototypes(torch.tensor([[0.0, 0.0, 1.0]]), corrected.config, corrections=True)
    assert (corrected.config.context_prototypes, corrected.config.context_corrections) == (3, [2])
    route = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    clusters, usage = [[0, 2], [1]], np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(_merged_model(corrected, clusters, usage).router_weights(route),
                               _merged_model(model, clusters, usage).router_weights(route), atol=1e-6)


# ----- choosing K ------------------------------------------------------------------------------
def test_one_standard_error_rule_prefers_the_smallest_k_near_the_best():
    assert one_standard_error([1, 2, 3, 4], [0.70, 0.55, 0.54, 0.53], [0.01, 0.01, 0.01, 0.02]) == 2
    assert one_standard_error([1, 2, 3], [0.5, 0.6, 0.7], [0.0, 0.0, 0.0]) == 1


@pytest.mark.parametrize("groups", [2, 4, 6])
def test_heads_auto_finds_the_number_of_groups_within_one(groups):
    _, _, curve = select_heads(group_features(groups), Stage1Config(epochs=30, val_fraction=0.2),
                               range(1, groups + 4), progress=False)
    assert abs(curve["chosen"] - groups) <= 1, curve
    assert curve["nll"][0] > curve["nll"][curve["grid"].index(curve["chosen"])]   # K = 1 underfits


def test_heads_auto_refuses_a_variant_without_k():
    with pytest.raises(MicroRMError, match="variant 'shared-base' has no K"):
        select_heads(group_features(2, 20), Stage1Config(variant="shared-base"))


@pytest.mark.parametrize("settings", [{"context_dim": 2, "context_prototypes": 3}, {"router": "linear"},
                                      {"variant": "static"}])
def test_a_duplicated_head_predicts_exactly_as_the_original(settings):
    torch.manual_seed(0)
    model = MixtureRewardModel(MixtureConfig(num_heads=3, reward_dim=4, route_dim=5, **settings)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    x = np.random.default_rng(0).normal(size=(3, 8, 5)).astype(np.float32)
    doubled = duplicate_head(model, 2)
    assert doubled.config.num_heads == 4
    np.testing.assert_allclose(doubled.predict_proba(x[0, :, :4], x[1, :, :4], x[2]),
                               model.predict_proba(x[0, :, :4], x[1, :, :4], x[2]), atol=1e-5)
