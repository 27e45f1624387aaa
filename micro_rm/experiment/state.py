"""``Run``: what the harness's steps share (the config, the splits, the features, the rows so
far), and the few verbs every step uses: fit stage 1, evaluate, adapt a router, log.

Each step (``micro_rm.experiment.runner.STEPS``) is a function ``step(run)`` that reads what the
earlier steps left on ``run`` and adds its own part.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from micro_rm.eval.metrics import expected_calibration_error, nll, pairwise_accuracy
from micro_rm.experiment.config import ExperimentConfig
from micro_rm.train.config import AdaptConfig, Stage1Config

# Where the wall time goes; the rest (HyRe, evaluation, intervals, report) is "other".
TIMED_STEPS = ("encode", "stage 1", "stage 2", "curves")


class Run:
    """One experiment in progress. The constructor stores the settings; the steps fill the rest."""

    # data (micro_rm.experiment.data.load_data)
    train: list[dict[str, Any]]        # stage 1's train split
    pool: list[dict[str, Any]]         # the stage-2 budget's train split (eval_data's, or train)
    test: list[dict[str, Any]]         # every method's test split
    cross: bool                        # eval_data differs from data
    attributes: list[str]
    budgets: list[int]                 # the budget curve's B that every attribute can supply
    # features (micro_rm.experiment.data.encode)
    train_feats: dict[str, Any]        # {protocol: PairFeatures}
    test_feats: dict[str, Any]
    test_ctx: Any                      # test pairs with the context in the route
    pool_ctx: Any                      # stage-2 pool with the context in the route
    train_reward_ctx: Any              # the context in the reward features too (single-ctx, static-ctx), or None
    test_reward_ctx: Any
    feats: Any                         # feats(records, router_input) → PairFeatures, through the cache
    backbone_name: str
    encoded: int                       # texts encoded (not read from the cache)
    encode_seconds: float
    # the steps after (micro_rm.experiment.variants, .adaptation, .baselines, .results)
    variants: list[dict[str, Any]]
    chosen: dict[str, Any]             # the variant that is the `micro` row
    selection: str
    labels: dict[str, str]             # each method's supervision, in words
    shared: Any                        # the shared-base model (HyRe reweights its heads)
    curve: dict[str, Any]
    results: dict[str, Any]
    folder: Path                       # the report folder, once written

    def __init__(self, config: ExperimentConfig, *, backbone: Any = None, out: str | os.PathLike | None = None,
                 cache: str | os.PathLike | None = None, progress: bool = True, command: Optional[str] = None):
        self.config, self.progress = config, progress
        stem = Path(config.path).stem if config.path else "experiment"
        self.out = Path(out) if out is not None else Path("runs") / stem
        self.cache_dir, self.backbone_arg = cache, backbone
        self.command = command or f"run_experiment({config.path or 'config'})"
        self.notes: list[str] = []
        self.methods: dict[str, dict[str, Any]] = {}    # the rows so far (results.PRIMARY_METHODS orders them)
        self.start = time.perf_counter()
        self.device = resolve_device(config.backbone.device)
        self.timing: dict[str, float] = dict.fromkeys(TIMED_STEPS, 0.0)

    def log(self, message: str) -> None:
        if self.progress:
            print(f"[{time.perf_counter() - self.start:6.1f} s] {message}", file=sys.stderr, flush=True)

    def seeds(self) -> list[int]:
        """The budget draws' seeds: ``budget_curve.seeds`` of them from ``seed``."""
        return [self.config.seed + i for i in range(self.config.budget_curve.seeds)]

    def fit(self, features: Any, variant: str, **overrides: Any) -> tuple[Any, dict[str, Any]]:
        """Stage 1 of ``variant`` with the config's shared settings (and ``overrides``)."""
        from micro_rm.train.stage1 import fit_stage1

        s1 = self.config.stage1
        settings = dict(heads=1 if variant == "single" else s1.heads, variant=variant, router=s1.router,
                        alpha=s1.alpha, epochs=s1.epochs, lr=s1.lr, batch_size=s1.batch_size,
                        val_fraction=s1.val_fraction, seed=self.config.seed, device=self.device)
        return fit_stage1(features, Stage1Config(**{**settings, **overrides}), progress=self.progress)

    def evaluate(self, model: Any, features: Any) -> dict[str, Any]:
        """Routed accuracy per attribute, mean, NLL and ECE of ``model`` on ``features``."""
        return evaluation(model.predict_proba(features.chosen, features.rejected, features.route),
                          features.attributes)

    def adapt(self, model: Any, budget: int, seed: int, pool: Any = None) -> tuple[Any, dict[str, Any]]:
        """Stage 2 of ``model`` on ``budget`` pairs per attribute drawn from ``pool`` (default the
        stage-2 pool with contexts) with ``seed``."""
        from micro_rm.train.adapt import adapt, draw_budget

        pool = self.pool_ctx if pool is None else pool
        rows = draw_budget(pool.attributes, budget, seed)
        config = AdaptConfig(budget=budget, tau=self.config.stage2.tau, seed=seed, folds=self.config.stage2.folds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # budgets were checked against the data up front
            return adapt(model, pool.subset(rows), config, progress=False)


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------- a method's row

def evaluation(probs: np.ndarray, attributes: Sequence[Optional[str]]) -> dict[str, Any]:
    """Accuracy per attribute, its mean over attributes, NLL and ECE of probabilities ``probs`` [N]."""
    result = pairwise_accuracy(probs, attributes)
    return {"mean": result["mean_accuracy"], "per_attribute": result["per_attribute"],
            "nll": nll(probs), "ece": expected_calibration_error(probs), "probs": probs}


def row(evaluation: dict[str, Any], supervision: str) -> dict[str, Any]:
    """A method's row; ``outcome`` (per-pair correctness, scored mask) is replaced by intervals
    in :func:`micro_rm.experiment.results.intervals` before the row is written."""
    return {"mean": evaluation["mean"], "per_attribute": evaluation["per_attribute"],
            "nll": evaluation["nll"], "ece": evaluation["ece"], "supervision": supervision,
            "outcome": (evaluation["probs"] > 0.5, None)}


def mean_row(evaluations: Sequence[dict[str, Any]], supervision: str) -> dict[str, Any]:
    """Per-attribute accuracy averaged over the seeds' draws (and NLL / ECE likewise)."""
    names = list(evaluations[0]["per_attribute"])
    per = {a: float(np.mean([e["per_attribute"][a] for e in evaluations])) for a in names}
    return {"mean": float(np.mean(list(per.values()))), "per_attribute": per,
            "nll": float(np.mean([e["nll"] for e in evaluations])),
            "ece": float(np.mean([e["ece"] for e in evaluations])),
            "std": seed_std([e["mean"] for e in evaluations]), "supervision": supervision,
            "outcome": (np.stack([e["probs"] > 0.5 for e in evaluations]), None)}


def seed_std(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (ddof = 1) over the budget draws; None for a single draw."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None
