"""Stage-1 training on features: it learns, it is reproducible, and it refuses bad input by name."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.train import Stage1Config, fit_stage1, lr_at
from micro_rm.train.stage1 import initial_model, validation_split


def _pairs(n=2000, d=8, d_r=4, seed=0, prompts_per=1):
    """Two sub-populations that disagree on feature 1 and agree on feature 0; the route features'
    sign tells them apart."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((2, n, d)).astype(np.float32)
    route = rng.standard_normal((n, d_r)).astype(np.float32)
    group = route[:, 0] > 0
    delta = 2 * (a - b)[:, 0] + np.where(group, 3, -3) * (a - b)[:, 1]
    wins = rng.random(n) < 1 / (1 + np.exp(-delta))
    chosen, rejected = np.where(wins[:, None], a, b), np.where(wins[:, None], b, a)
    prompts = [f"prompt {i // prompts_per}" for i in range(n)]
    return PairFeatures(chosen=chosen, rejected=rejected, route=route, prompts=prompts,
                        fingerprint={"name": "synthetic"})


FAST = dict(epochs=4, lr=0.02, batch_size=32, val_fraction=0.0)  # a few hundred steps suffice at this lr


@pytest.mark.parametrize("variant", ["micro", "single", "static", "shared-base"])
def test_training_moved_every_trainable_parameter_and_beat_chance(variant):
    train, test = _pairs(seed=0), _pairs(seed=1)
    config = Stage1Config(heads=1 if variant == "single" else 2, variant=variant, **FAST)
    before = {k: v.clone() for k, v in initial_model(train, config).named_parameters()}
    model, history = fit_stage1(train, config, progress=False)
    for name, param in model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not move"
    accuracy = (model.predict_proba(test.chosen, test.rejected, test.route) > 0.5).mean()
    assert accuracy > 0.65
    assert history["train_loss"] < math.log(2)


def test_micro_beats_single_when_groups_disagree():
    train, test = _pairs(n=4000, seed=0), _pairs(seed=1)
    accuracy = {}
    for variant, k in (("micro", 2), ("single", 1)):
        model, _ = fit_stage1(train, Stage1Config(heads=k, variant=variant, alpha=0.0, **FAST), progress=False)
        accuracy[variant] = (model.predict_proba(test.chosen, test.rejected, test.route) > 0.5).mean()
    assert accuracy["micro"] > accuracy["single"] + 0.05


def _mean_entropy(weights):
    return float(-(weights * np.log(np.clip(weights, 1e-12, 1))).sum(axis=1).mean())


def test_alpha_raises_the_routers_mean_entropy():
    train = _pairs()
    entropy = {}
    for alpha in (0.0, 0.5):
        model, _ = fit_stage1(train, Stage1Config(heads=2, alpha=alpha, balance="example", **FAST), progress=False)
        entropy[alpha] = _mean_entropy(model.router_weights(train.route))
    assert entropy[0.5] > entropy[0.0] + 0.05


def test_same_seed_gives_the_same_weights_bit_for_bit():
    train = _pairs()
    config = Stage1Config(heads=3, **FAST)
    first, _ = fit_stage1(train, config, progress=False)
    second, _ = fit_stage1(train, config, progress=False)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    other, _ = fit_stage1(train, Stage1Config(heads=3, seed=1, **FAST), progress=False)
    assert not torch.equal(other.heads.weight, first.heads.weight)


def test_memory_mapped_float16_features_train_exactly_like_in_ram(tmp_path):
    ram = _pairs()
    maps = {}
    for name in ("chosen", "rejected", "route"):
        array = getattr(ram, name).astype(np.float16)
        maps[name] = np.lib.format.open_memmap(tmp_path / f"{name}.npy", mode="w+", dtype=np.float16,
                                               shape=array.shape)
        maps[name][:] = array
        setattr(ram, name, array)
    mapped = PairFeatures(prompts=ram.prompts, fingerprint=ram.fingerprint,
                          **{k: np.load(tmp_path / f"{k}.npy", mmap_mode="r") for k in maps})
    config = Stage1Config(heads=2, **{**FAST, "val_fraction": 0.2})
    a, history_a = fit_stage1(ram, config, progress=False)
    b, history_b = fit_stage1(mapped, config, progress=False)
    assert history_a["val_loss"] == history_b["val_loss"]
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_gradient_accumulation_is_the_effective_batch():
    train = _pairs()
    a, _ = fit_stage1(train, Stage1Config(heads=2, **{**FAST, "batch_size": 32}), progress=False)
    b, _ = fit_stage1(train, Stage1Config(heads=2, grad_accum=4, **{**FAST, "batch_size": 8}), progress=False)
    assert torch.equal(a.heads.weight, b.heads.weight)


def test_keeps_the_epoch_with_the_lowest_validation_loss():
    train = _pairs(n=600)
    model, history = fit_stage1(train, Stage1Config(heads=2, epochs=6, lr=0.05, val_fraction=0.3), progress=False)
    losses = [row["val_loss"] for row in history["epochs"]]
    assert history["best_epoch"] == 1 + int(np.argmin(losses))
    assert history["val_loss"] == min(losses)
    assert model.config.metrics["best_epoch"] == history["best_epoch"]
    assert model.config.training["epochs"] == 6


def test_validation_split_is_by_prompt_and_deterministic():
    prompts = [f"p{i // 3}" for i in range(3000)]
    train, val = validation_split(prompts, 0.2)
    assert np.array_equal(val, validation_split(prompts, 0.2)[1])
    assert 0.15 < len(val) / len(prompts) < 0.25
    assert not {prompts[i] for i in train} & {prompts[i] for i in val}
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(3000))


def test_validation_holding_out_everything_is_an_error():
    def draw(prompt):  # the split's own hash, as documented in validation_split
        return int(hashlib.sha256(f"validation:{prompt}".encode()).hexdigest()[:8], 16) / 2 ** 32
    prompt = next(p for p in (f"p{i}" for i in range(100)) if draw(p) < 0.5)
    features = _pairs(n=40)
    features.prompts = [prompt] * 40
    with pytest.raises(MicroRMError, match=r"val_fraction=0.5 holds out every pair \(only 1 distinct"):
        fit_stage1(features, Stage1Config(**{**FAST, "val_fraction": 0.5}), progress=False)


def test_lr_schedule_warms_up_then_decays_to_zero():
    rates = [lr_at(s, total=100, warmup=5) for s in range(100)]
    assert rates[4] == 1.0 and rates[0] == pytest.approx(0.2)
    assert all(x >= y for x, y in zip(rates[5:], rates[6:])) and 0 < rates[-1] < 0.02


@pytest.mark.parametrize("field, value, message", [
    ("heads", 0, r"`heads` must be an integer in \[1, 64\], got 0"),
    ("alpha", -0.1, r"`alpha` must be a finite number in \[0.0, inf\], got -0.1"),
    ("alpha", float("nan"), r"`alpha` must be a finite number"),
    ("balance", "global", r"`balance` must be one of example, marginal, got 'global'"),
    ("variant", "moe", r"`variant` must be one of micro, single, static, shared-base"),
    ("router", "gru", r"`router` must be one of mlp, linear"),
    ("epochs", 0, r"`epochs` must be an integer in \[1, 10,000\]"),
    ("lr", 0.0, r"`lr` must be a finite number in \(0.0, inf\]"),
    ("batch_size", 0, r"`batch_size` must be an integer in \[1, 65,536\]"),
    ("grad_accum", 0, r"`grad_accum` must be an integer in \[1, 1,024\]"),
    ("warmup_ratio", 1.0, r"`warmup_ratio` must be a finite number in \[0.0, 1.0\)"),
    ("val_fraction", 1.0, r"`val_fraction` must be a finite number in \[0.0, 1.0\)"),
])
def test_config_refuses_bad_values_by_name(field, value, message):
    with pytest.raises(MicroRMError, match=message):
        Stage1Config(**{field: value})


def test_single_variant_warns_and_uses_one_head():
    with pytest.warns(UserWarning, match="ignoring heads=4"):
        config = Stage1Config(variant="single", heads=4)
    assert config.heads == 1


def _broken(kind):
    f = _pairs(n=50)
    if kind == "empty":
        return f.subset([])
    if kind == "nan":
        f.chosen[3, 2] = np.nan
    elif kind == "inf":
        f.route[7, 0] = np.inf
    elif kind == "dims":
        f.rejected = f.rejected[:, :5]
    elif kind == "rows":
        f.route = f.route[:40]
    elif kind == "prompts":
        f.prompts = f.prompts[:10]
    return f


@pytest.mark.parametrize("kind, message", [
    ("empty", "empty training set: the features hold 0 pairs"),
    ("nan", r"features\.chosen row 3 holds NaN or inf"),
    ("inf", r"features\.route row 7 holds NaN or inf"),
    ("dims", r"features\.rejected has shape \(50, 5\), but features\.chosen has \(50, 8\)"),
    ("rows", r"features\.route has shape \(40, 4\); expected \[50, dim\]"),
    ("prompts", r"features\.prompts has 10 entries for 50 pairs"),
])
def test_bad_features_are_refused_by_name(kind, message):
    with pytest.raises(MicroRMError, match=message):
        fit_stage1(_broken(kind), Stage1Config(**FAST), progress=False)
