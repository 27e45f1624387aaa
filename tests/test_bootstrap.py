"""Bootstrap intervals by prompt: the statistic matches the tables, prompts (not pairs) are the
unit, differences are paired, and a seed fixes the result."""

from __future__ import annotations

import numpy as np
import pytest

from micro_rm.errors import MicroRMError
from micro_rm.eval.bootstrap import PromptBootstrap, excludes_zero, percentile_interval
from micro_rm.eval.metrics import pairwise_accuracy


def _data(seed: int = 0, prompts: int = 30, per_prompt: int = 4):
    rng = np.random.default_rng(seed)
    n = prompts * per_prompt
    prompt = [f"p{i // per_prompt}" for i in range(n)]
    attributes = [("a", "b", "c")[i % 3] for i in range(n)]
    correct = rng.random(n) < 0.7
    return prompt, attributes, correct


def test_each_resample_equals_pairwise_accuracy_on_the_resampled_pairs():
    prompt, attributes, correct = _data()
    boot = PromptBootstrap(prompt, attributes, resamples=5, seed=3)
    samples = boot.samples(correct)
    distinct = sorted(set(prompt))
    for r in range(5):
        rows = [i for p, times in zip(distinct, boot.counts[r]) for i in range(len(prompt))
                if prompt[i] == p for _ in range(int(times))]
        expected = pairwise_accuracy(correct[rows].astype(float), [attributes[i] for i in rows])
        assert samples["mean"][r] == pytest.approx(expected["mean_accuracy"])
        assert samples["per_attribute"][r].tolist() == pytest.approx(list(expected["per_attribute"].values()))


def test_runs_are_averaged_and_unscored_pairs_left_out():
    prompt, attributes, correct = _data()
    other = ~correct
    scored = np.ones((2, len(prompt)), bool)
    scored[1, :12] = False
    boot = PromptBootstrap(prompt, attributes, resamples=1)
    boot.counts = np.ones_like(boot.counts)                      # the original sample, once
    mean = boot.samples(np.stack([correct, other]), scored)["mean"][0]
    runs = [pairwise_accuracy(c[s].astype(float), list(np.array(attributes)[s]))["mean_accuracy"]
            for c, s in zip((correct, other), scored)]
    assert mean == pytest.approx(np.mean(runs))


def test_prompts_not_pairs_are_resampled():
    # 20 prompts whose 10 pairs are all right or all wrong: the evidence is 20 draws, not 200.
    prompt = [f"p{i // 10}" for i in range(200)]
    correct = np.repeat(np.arange(20) % 2 == 0, 10)
    lo, hi = PromptBootstrap(prompt).intervals(PromptBootstrap(prompt).samples(correct))["ci95"]
    assert lo <= 0.5 <= hi and hi - lo > 0.3                      # pairs as the unit: about 0.14


def test_paired_difference_of_a_method_with_itself_is_zero_and_of_a_better_one_positive():
    prompt, attributes, correct = _data()
    boot = PromptBootstrap(prompt, attributes)
    a = boot.samples(correct)
    better = correct.copy()
    better[:40] = True
    assert percentile_interval(a["mean"] - a["mean"]) == [0.0, 0.0]
    difference = percentile_interval(boot.samples(better)["mean"] - a["mean"])
    assert excludes_zero(difference) and difference[0] > 0


def test_a_seed_fixes_the_intervals():
    prompt, attributes, correct = _data()

    def ci(seed):
        boot = PromptBootstrap(prompt, attributes, seed=seed)
        return boot.intervals(boot.samples(correct))

    assert ci(0) == ci(0) and ci(0) != ci(1)
    assert set(ci(0)["per_attribute_ci95"]) == {"a", "b", "c"}


def test_shapes_are_checked():
    prompt, attributes, correct = _data()
    with pytest.raises(MicroRMError, match=r"must be \[N\] or \[S, N\] with N = 120"):
        PromptBootstrap(prompt, attributes).samples(correct[:5])
