"""``Stage1Config``: the settings of stage-1 training, each documented once (its help is also the
CLI's ``--help``). Kept free of torch so that ``micro-rm --help`` stays fast.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

from micro_rm.errors import MicroRMError
from micro_rm.model.config import BALANCES, ROUTERS, VARIANTS


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class Stage1Config:
    """Settings of stage-1 training. Each field's help is also the CLI's ``--help``."""

    # the model
    heads: int = _help("Number of reward heads K (the paper: 5 for HelpSteer2, 10 for RPR).", 4)
    variant: str = _help("micro (router), single (one BT head), static (K free weights, MaxMin-RLHF) "
                         "or shared-base (trainable + frozen prior heads, HyRe's ensemble).", "micro")
    router: str = _help("Router network: mlp (d_r → 128 → K, the paper's) or linear.", "mlp")
    router_hidden: int = _help("Hidden units of the MLP router.", 128)
    context_temperature: float = _help("Temperature of the router's attention over prototype "
                                       "contexts (cosine similarity / T); smaller routes a new "
                                       "phrasing like its single nearest training phrasing. "
                                       "0.05: best of 0.02 / 0.03 / 0.05 / 0.1 / 0.2 with clause-pooled "
                                       "contexts on unseen phrasings of held-out train prompts, DSP and "
                                       "HH, 3 seeds; benchmarks/validate_defaults.py.", 0.05)
    max_prototypes: int = _help("At most this many prototype contexts (k-means centres of the "
                                "training contexts when there are more distinct ones).", 512)
    context_dropout: float = _help("Fraction of training pairs whose context the router does not "
                                   "see, so that 'no context' learns the population's routing "
                                   "(the prior of a new user). 0.3: best mean of 0 / 0.1 / 0.3 over "
                                   "DSP and HH on unseen phrasings of held-out train prompts "
                                   "(benchmarks/validate_defaults.py).", 0.3)
    # the objective
    alpha: float = _help("Weight α of the router's negative-entropy regulariser (the paper: 0.5).", 0.5)
    # Default `marginal`: the harness picks between the two by stage-1 validation NLL on held-out
    # train prompts (`stage1.select: validation`), and `marginal` had the lower validation NLL on
    # every shipped dataset's config (results/*/results.json, "variants" → "val_nll").
    balance: str = _help("marginal: entropy of the batch-mean routing (load balancing; lets heads "
                         "specialise, the default); example: each pair's router entropy (the paper's).",
                         "marginal")
    # optimisation
    epochs: int = _help("Passes over the training pairs.", 10)
    lr: float = _help("Peak AdamW learning rate.", 2e-3)
    batch_size: int = _help("Pairs per micro-batch.", 32)
    grad_accum: int = _help("Micro-batches per optimizer step (effective batch = batch_size × "
                            "grad_accum; the paper: 4 × 8). On cached features one step's "
                            "micro-batches are computed in one pass.", 1)
    warmup_ratio: float = _help("Fraction of the steps spent warming the learning rate up; it then "
                                "decays linearly to 0.", 0.05)
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    val_fraction: float = _help("Fraction of prompts (by hash, deterministic) held out for validation; "
                                "the epoch with the lowest validation loss is kept. 0: keep the last.", 0.1)
    seed: int = _help("Seed of the initialisation and the shuffling (same seed, same weights).", 0)
    device: str = _help("Torch device: cpu, cuda, cuda:1, mps.", "cpu")

    def __post_init__(self) -> None:
        _check_int(self, "heads", 1)
        _check_choice(self, "variant", VARIANTS)
        _check_choice(self, "router", ROUTERS)
        _check_int(self, "router_hidden", 1)
        _check_float(self, "alpha", 0.0, math.inf)
        _check_float(self, "context_temperature", 0.0, math.inf, open_low=True)
        _check_int(self, "max_prototypes", 1)
        _check_float(self, "context_dropout", 0.0, 1.0, open_high=True)
        _check_choice(self, "balance", BALANCES)
        for name in ("epochs", "batch_size", "grad_accum"):
            _check_int(self, name, 1)
        _check_float(self, "lr", 0.0, math.inf, open_low=True)
        _check_float(self, "warmup_ratio", 0.0, 1.0, open_high=True)
        _check_float(self, "weight_decay", 0.0, math.inf)
        _check_float(self, "val_fraction", 0.0, 1.0, open_high=True)
        _check_int(self, "seed", 0)
        if self.variant == "single" and self.heads != 1:
            warnings.warn(f"variant 'single' trains one head; ignoring heads={self.heads} "
                          "(pass heads=1 / --heads 1 to silence this)", stacklevel=3)
            self.heads = 1

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def _check_int(config: Stage1Config, name: str, low: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise MicroRMError(f"`{name}` must be an integer ≥ {low}, got {value!r}")


def _check_float(config: Stage1Config, name: str, low: float, high: float, *,
                 open_low: bool = False, open_high: bool = False) -> None:
    value = getattr(config, name)
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if open_low else value >= low) and (value < high if open_high else value <= high))
    if not ok:
        bounds = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise MicroRMError(f"`{name}` must be a finite number in {bounds}, got {value!r}")


def _check_choice(config: Stage1Config, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise MicroRMError(f"`{name}` must be one of {', '.join(choices)}, got {value!r}")


TAU_MIN = 1e-8   # below this, exp(−L/τ) underflows for every head and the targets are undefined


@dataclass
class AdaptConfig:
    """Settings of stage 2 (``micro_rm.train.adapt``). Each field's help is also the CLI's ``--help``."""

    budget: int = _help("Context-annotated pairs drawn per attribute (per context when no pair has "
                        "an attribute); the paper: 50.", 50)
    tau: float | str = _help("Hedge temperature τ, a number ≥ 1e-08 (the paper: 1e-3; small τ trusts "
                             "the budget's labels, large τ keeps the stage-1 router), or 'auto': "
                             "chosen with 'keep the stage-1 router' by k-fold cross-validation of the "
                             "mixture NLL on the budget pairs.", "auto")
    seed: int = _help("Seed of the budget draw and the folds.", 0)
    folds: int = _help("Folds of the cross-validation that chooses τ and keep-or-adapt.", 5)

    def __post_init__(self) -> None:
        for name, low in (("budget", 1), ("seed", 0), ("folds", 2)):
            _check_int(self, name, low)
        if self.tau != "auto":
            self.tau = check_tau(self.tau)

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def check_tau(tau: Any, name: str = "tau") -> float:
    """``tau`` as a float, or :class:`MicroRMError` unless it is a finite number ≥ ``TAU_MIN``.

    >>> check_tau(1e-3)
    0.001
    """
    ok = not isinstance(tau, bool) and isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= TAU_MIN
    if not ok:
        raise MicroRMError(f"`{name}` must be a finite number ≥ {TAU_MIN:g} (a Hedge temperature) or "
                           f"'auto', got {tau!r}; the paper uses 1e-3")
    return float(tau)
