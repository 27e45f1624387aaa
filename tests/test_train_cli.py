"""``micro-rm train``, ``eval`` and ``export-scalar`` end to end, with a tiny fake backbone.

The fake backbone embeds each word with a fixed random vector (hashing the word), so the test
needs no download; the real feature cache and featurisation run unchanged.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from micro_rm.cli import main
from micro_rm.data.readers import write_pairs
from micro_rm.features.backbones.items import pair_reward_item, pair_route_item

DIM = 24


class WordBackbone:
    """Mean of per-word random vectors of the item's text(s)."""

    name = "fake-words"
    dim = DIM

    def fingerprint(self):
        return {"kind": "test", "spec": {"name": self.name}, "dim": DIM}

    def reward_item(self, prompt, response, context=None):
        return pair_reward_item(prompt, response, context)

    def route_item(self, prompt, context=None):
        return pair_route_item(prompt, context)

    def token_lengths(self, items):
        return [len(" ".join(t for t in item if t).split()) for item in items]

    def encode(self, items):
        return np.stack([np.mean([self._word(w) for w in " ".join(t for t in item if t).split()] or
                                 [np.zeros(DIM, np.float32)], axis=0) for item in items])

    @staticmethod
    def _word(word):
        seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


@pytest.fixture(autouse=True)
def fake_backbone(monkeypatch):
    import micro_rm.features.backbones as backbones

    def load_backbone(name, *, max_length=None, dtype="float32", device="cpu", pooling="auto", batch_size=32):
        if name != WordBackbone.name:
            raise AssertionError(f"unexpected backbone {name!r}")
        return WordBackbone()

    monkeypatch.setattr(backbones, "load_backbone", load_backbone)


def _records(n, seed):
    """Two contexts that want opposite things: brief or detailed answers."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        brief = bool(i % 2)
        topic = f"topic{rng.integers(50)}"
        short, long = f"short {topic} answer", f"long detailed thorough {topic} answer with examples"
        records.append({"prompt": f"tell me about {topic} number {i}",
                        "chosen": short if brief else long, "rejected": long if brief else short,
                        "context": "be brief please" if brief else "explain in depth",
                        "attribute": "brief" if brief else "detailed"})
    return records


@pytest.fixture
def files(tmp_path):
    write_pairs(_records(400, 0), tmp_path / "train.jsonl")
    write_pairs(_records(100, 1), tmp_path / "test.jsonl")
    return tmp_path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out.strip().splitlines()[-1]) if code == 0 and "--json" in argv else out)


def _train(files, capsys, *extra, out="model"):
    return _run(capsys, "train", "--data", files / "train.jsonl", "--backbone", "fake-words", "--heads", 2,
                "--out", files / out, "--epochs", 20, "--lr", 0.02, "--json", *extra)


def test_train_then_eval_reports_accuracy_per_attribute(files, capsys):
    code, result = _train(files, capsys, "--balance", "marginal")
    assert code == 0
    assert set(result) >= {"train_loss", "validation_loss", "pairs", "seconds", "out"}
    assert result["pairs"]["train"] + result["pairs"]["validation"] == 400
    config = json.loads((files / "model" / "config.json").read_text())
    assert config["feature"] == {"router_input": "context", "context_in_reward": False}
    assert config["backbone"]["spec"] == {"name": "fake-words"}
    assert config["training"]["balance"] == "marginal"
    code, evaluation = _run(capsys, "eval", "--model", files / "model", "--data", files / "test.jsonl", "--json")
    assert code == 0
    assert evaluation["pairs"] == 100
    assert set(evaluation["per_attribute"]) == {"brief", "detailed"}
    assert evaluation["mean_accuracy"] == pytest.approx(np.mean(list(evaluation["per_attribute"].values())))
    assert evaluation["mean_accuracy"] > 0.9   # only a context-aware router can get both attributes right


@pytest.mark.parametrize("variant", ["single", "static", "shared-base"])
def test_baselines_train_and_evaluate_the_same_way(files, capsys, variant):
    code, result = _train(files, capsys, "--variant", variant, "--heads", 1 if variant == "single" else 2)
    assert code == 0 and result["variant"] == variant
    code, evaluation = _run(capsys, "eval", "--model", files / "model", "--data", files / "test.jsonl", "--json")
    assert code == 0 and 0 <= evaluation["mean_accuracy"] <= 1


def test_eval_with_cache_only_and_unseen_texts_fails_clearly(files, capsys):
    assert _train(files, capsys)[0] == 0
    write_pairs([{"prompt": "never seen", "chosen": "a", "rejected": "b"}], files / "new.jsonl")
    code, out = _run(capsys, "eval", "--model", files / "model", "--data", files / "new.jsonl", "--cache-only")
    assert code == 2 and "not in the cache" in out.err


def test_export_scalar_by_weights_and_by_context(files, capsys):
    assert _train(files, capsys)[0] == 0
    code, result = _run(capsys, "export-scalar", "--model", files / "model", "--out", files / "w",
                        "--weights", "1,3", "--json")
    assert code == 0 and result["weights"] == [0.25, 0.75]
    code, result = _run(capsys, "export-scalar", "--model", files / "model", "--out", files / "c",
                        "--context", "be brief please", "--json")
    assert code == 0 and sum(result["weights"]) == pytest.approx(1.0)
    assert json.loads((files / "c" / "config.json").read_text())["variant"] == "static"


def test_export_scalar_weights_are_the_routers_on_the_training_format_input(files, capsys):
    """Regression (issue: export-scalar passed the context as the prompt): the frozen weights
    are the router's on the route features featurize builds for (prompt "", that context)."""
    from micro_rm.features.featurize import route_items, route_matrix
    from micro_rm.model.mixture import MixtureRewardModel
    from micro_rm.model.text import model_backbone

    assert _train(files, capsys)[0] == 0
    context = "be brief, in plain words"                               # two clauses: pooled views
    code, result = _run(capsys, "export-scalar", "--model", files / "model", "--out", files / "c",
                        "--context", context, "--json")
    model = MixtureRewardModel.from_pretrained(str(files / "model"))
    backbone = model_backbone(model)
    items = route_items(backbone, "", context, context_encoding=model.config.context_encoding)
    route = route_matrix(backbone.encode(items), [context], model.config.context_dim, model.config.context_encoding)
    assert model.config.context_encoding == "clauses" and len(items) == 4 and route.shape == (1, model.config.route_dim)
    assert result["weights"] == pytest.approx(model.router_weights(route)[0].tolist(), abs=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--heads", "0"], "`heads` must be an integer in [1, 64]"),
    (["--alpha", "-1"], "`alpha` must be a finite number"),
    (["--balance", "global"], "`balance` must be one of example, marginal"),
    (["--router-input", "persona"], "--router-input must be one of context, prompt"),
])
def test_train_bad_settings_exit_2_and_write_nothing(files, capsys, argv, message):
    code, out = _train(files, capsys, *argv)
    assert code == 2 and message in out.err
    assert not (files / "model").exists()


def test_train_on_a_missing_file_exits_2(files, capsys):
    code, out = _run(capsys, "train", "--data", files / "nope.jsonl", "--backbone", "fake-words",
                     "--heads", 2, "--out", files / "model")
    assert code == 2 and "no such file" in out.err and not (files / "model").exists()


@pytest.mark.parametrize("argv, message", [
    ([], "give exactly one of --context TEXT or --weights"),
    (["--weights", "1,2,3"], "`weights` must be 2 non-negative numbers"),
    (["--weights", "a,b"], "--weights must be comma-separated numbers"),
])
def test_export_scalar_bad_input_exits_2(files, capsys, argv, message):
    assert _train(files, capsys)[0] == 0
    code, out = _run(capsys, "export-scalar", "--model", files / "model", "--out", files / "s", *argv)
    assert code == 2 and message in out.err and not (files / "s").exists()


def test_eval_of_a_model_from_another_major_version_exits_2(files, capsys):
    assert _train(files, capsys)[0] == 0
    config = json.loads((files / "model" / "config.json").read_text())
    (files / "model" / "config.json").write_text(json.dumps({**config, "version": "9.0.0"}))
    code, out = _run(capsys, "eval", "--model", files / "model", "--data", files / "test.jsonl")
    assert code == 2 and "incompatible" in out.err


def test_a_model_fitted_by_the_library_scores_as_the_cli_trained_one(files, capsys):
    """Regression (issue 24): ``fit_stage1`` saved directly recorded no feature settings, so a
    reader could not tell that the context was part of the reward input. Same data, settings and
    seed: the same config.feature and the same scores through the one reader, featurize_for."""
    from micro_rm.data.readers import read_pairs
    from micro_rm.features.cache import FeatureCache
    from micro_rm.features.featurize import featurize
    from micro_rm.model.mixture import MixtureRewardModel
    from micro_rm.model.text import featurize_for
    from micro_rm.train.config import Stage1Config
    from micro_rm.train.stage1 import fit_stage1

    assert _train(files, capsys, "--context-in-reward", out="cli")[0] == 0
    features, _ = featurize(read_pairs(files / "train.jsonl"), WordBackbone(), FeatureCache(files / "cache"),
                            context_in_reward=True, progress=False)
    fit_stage1(features, Stage1Config(heads=2, epochs=20, lr=0.02), progress=False)[0].save_pretrained(files / "lib")
    cli, lib = (MixtureRewardModel.from_pretrained(str(files / name)) for name in ("cli", "lib"))
    assert lib.config.feature == cli.config.feature == {"router_input": "context", "context_in_reward": True}
    pairs = [{"prompt": "tell me about topic7", "chosen": "short topic7 answer", "context": "be brief please",
              "rejected": "long detailed thorough topic7 answer with examples"}]
    read = [featurize_for(model, pairs, files / "cache", progress=False) for model in (cli, lib)]
    np.testing.assert_array_equal(read[0].chosen, read[1].chosen)
    with_context, _ = featurize(pairs, WordBackbone(), FeatureCache(files / "cache"), context_in_reward=True)
    np.testing.assert_array_equal(read[1].chosen, with_context.chosen)   # the context is in the reward input
    scores = [model.predict_proba(f.chosen, f.rejected, f.route) for model, f in zip((cli, lib), read)]
    np.testing.assert_array_equal(scores[0], scores[1])


def test_a_model_saved_before_feature_settings_reads_as_the_defaults_and_unknown_settings_are_refused(
        files, capsys):
    from micro_rm.features.base import FeatureSettings
    from micro_rm.model.mixture import MixtureRewardModel

    assert _train(files, capsys)[0] == 0
    config = json.loads((files / "model" / "config.json").read_text())
    (files / "model" / "config.json").write_text(json.dumps({**config, "feature": {}}))
    model = MixtureRewardModel.from_pretrained(str(files / "model"))
    assert model.config.feature_settings() == FeatureSettings()
    (files / "model" / "config.json").write_text(json.dumps({**config, "feature": {"router_input": "persona"}}))
    code, out = _run(capsys, "eval", "--model", files / "model", "--data", files / "test.jsonl")
    assert code == 2 and "`feature.router_input` must be one of context, prompt, got 'persona'" in out.err
    assert len(out.err.strip().splitlines()) == 1
    config["backbone"]["spec"]["layers"] = 3
    (files / "model" / "config.json").write_text(json.dumps(config))
    code, out = _run(capsys, "eval", "--model", files / "model", "--data", files / "test.jsonl")
    assert code == 2 and "unknown backbone setting(s) 'layers' in `backbone.spec`" in out.err
