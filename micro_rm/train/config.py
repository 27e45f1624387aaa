"""The settings of stage 1 (``Stage1Config``) and stage 2 (``AdaptConfig``): each field's type,
range and help (also the CLI's ``--help``) defined once; ``micro_rm.experiment.config`` nests the
same definitions. Pydantic dataclasses, checked on construction and assignment: a bad value or an
unknown key is one :class:`MicroRMError` line. Free of torch, so ``micro-rm --help`` stays fast.

>>> Stage1Config(heads=0)
Traceback (most recent call last):
...
micro_rm.errors.MicroRMError: `heads` must be an integer in [1, 64], got 0
"""

from __future__ import annotations

import math
import warnings
from typing import Annotated, Any, Literal, Union

import pydantic
from pydantic import BeforeValidator, Field

from micro_rm.errors import MicroRMError
from micro_rm.model.config import BALANCES, ROUTERS, VARIANTS, MixtureConfig
from micro_rm.schema import accepts, as_number, choice, config_class, integer, number

TAU_MIN = 1e-8   # below this, exp(−L/τ) underflows for every head and the targets are undefined
SEED_MAX = 2**32 - 1   # numpy's and torch's seeds both take any value up to here


# ---------------------------------------------------------------------- field types


def _tau(value: Any) -> Any:
    try:
        return value if value == "auto" else check_tau(as_number(value))
    except MicroRMError as exc:
        raise ValueError(str(exc)) from None


# The fields shared by Stage1Config and the experiment's stage-1 section (defaults stay with each).
Heads = integer(1, "Number of reward heads K (the paper: 5 for HelpSteer2, 10 for RPR).", 64)
Router = choice(ROUTERS, "Router network: mlp (d_r → 128 → K, the paper's) or linear.")
Alpha = number(0.0, math.inf, "Weight α of the router's negative-entropy regulariser (the paper: 0.5).")
Epochs = integer(1, "Passes over the training pairs.", 10_000)
LearningRate = number(0.0, math.inf, "Peak AdamW learning rate (the paper: 2e-3).", open_low=True)
BatchSize = integer(1, "Pairs per micro-batch (the paper: 32 effective).", 65_536)
ValFraction = number(0.0, 1.0, "Fraction of train prompts (by hash, deterministic) held out for "
                     "validation: early stopping (the epoch with the lowest validation loss is kept; "
                     "0: keep the last) and the harness's variant selection.", open_high=True)
Balance = choice(BALANCES, "marginal: entropy of the batch-mean routing (load balancing; lets heads "
                 "specialise, the default); example: each pair's router entropy (the paper's).")
# The fields shared by AdaptConfig and the experiment's stage-2 section.
Budget = integer(1, "Context-annotated pairs drawn per attribute (per context when no pair has an "
                 "attribute; the paper: 50). An attribute with fewer is used whole, with a warning.", 1_000_000)
Tau = Annotated[Union[float, Literal["auto"]], BeforeValidator(_tau),
                accepts(f"a finite number ≥ {TAU_MIN:g} or 'auto'",
                        f"Hedge temperature τ, a number ≥ {TAU_MIN:g} (the paper: 1e-3 HelpSteer2, 1e-4 "
                        "RPR; small τ trusts the budget's labels, large τ keeps the stage-1 router), or "
                        "'auto': chosen with 'keep the stage-1 router' by k-fold cross-validation of "
                        "the mixture NLL on the budget pairs.")]
Folds = integer(2, "Folds of the cross-validation that chooses τ and keep-or-adapt.", 100)


# ---------------------------------------------------------------------- the config classes

@config_class
class Stage1Config:
    """Settings of stage-1 training. Each field's help is also the CLI's ``--help``."""

    # the model
    heads: Heads = 4
    variant: choice(VARIANTS, "micro (router), single (one BT head), static (K free weights, "
                    "MaxMin-RLHF) or shared-base (trainable + frozen prior heads, HyRe's ensemble).") = "micro"
    router: Router = "mlp"
    router_hidden: integer(1, "Hidden units of the MLP router.", 65_536) = MixtureConfig.router_hidden
    context_temperature: number(0.0, math.inf, "Temperature of the router's attention over prototype "
                                "contexts (cosine similarity / T); smaller routes a new phrasing like "
                                "its single nearest training phrasing. The default was chosen on "
                                "validation (BENCHMARKS.md, router defaults).",
                                open_low=True) = MixtureConfig.context_temperature
    max_prototypes: integer(1, "At most this many prototype contexts (k-means centres of the training "
                            "contexts when there are more distinct ones).", 1_000_000) = 512
    context_dropout: number(0.0, 1.0, "Fraction of training pairs whose context the router does not "
                            "see, so that 'no context' learns the population's routing (the prior of a "
                            "new user). 0.3: chosen on validation (BENCHMARKS.md, router defaults).",
                            open_high=True) = 0.3
    # the objective
    alpha: Alpha = 0.5
    # Default `marginal`: it had the lower stage-1 validation NLL on every shipped dataset's config
    # (results/*/results.json, "variants" → "val_nll"; the harness picks by it, `stage1.select`).
    balance: Balance = "marginal"
    # optimisation
    epochs: Epochs = 10
    lr: LearningRate = 2e-3
    batch_size: BatchSize = 32
    grad_accum: integer(1, "Micro-batches per optimizer step (effective batch = batch_size × "
                        "grad_accum; the paper: 4 × 8). On cached features one step's micro-batches "
                        "are computed in one pass.", 1024) = 1
    warmup_ratio: number(0.0, 1.0, "Fraction of the steps spent warming the learning rate up; it then "
                         "decays linearly to 0.", open_high=True) = 0.05
    weight_decay: number(0.0, math.inf, "AdamW weight decay.") = 0.0
    val_fraction: ValFraction = 0.1
    seed: integer(0, "Seed of the initialisation and the shuffling (same seed, same weights).", SEED_MAX) = 0
    device: Annotated[str, Field(description="Torch device: cpu, cuda, cuda:1, mps.")] = "cpu"

    @pydantic.model_validator(mode="after")
    def _one_head_for_single(self) -> "Stage1Config":
        if self.variant == "single" and self.heads != 1:
            # stacklevel: this validator, pydantic's init or setattr, config_class's wrapper, the caller
            warnings.warn(f"variant 'single' trains one head; ignoring heads={self.heads} "
                          "(pass heads=1 / --heads 1 to silence this)", stacklevel=4)
            self.__dict__["heads"] = 1     # not through setattr: that would validate again
        return self


@config_class
class AdaptConfig:
    """Settings of stage 2 (``micro_rm.train.adapt``). Each field's help is also the CLI's ``--help``."""

    budget: Budget = 50
    tau: Tau = "auto"
    seed: integer(0, "Seed of the budget draw and the folds.", SEED_MAX) = 0
    folds: Folds = 5


def check_tau(tau: Any) -> float:
    """``tau`` as a float, or :class:`MicroRMError` unless it is a finite number ≥ ``TAU_MIN``.

    >>> check_tau(1e-3)
    0.001
    """
    ok = not isinstance(tau, bool) and isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= TAU_MIN
    if not ok:
        raise MicroRMError(f"`tau` must be a finite number ≥ {TAU_MIN:g} (a Hedge temperature) or "
                           f"'auto', got {tau!r}; the paper uses 1e-3")
    return float(tau)


__all__ = ["AdaptConfig", "Stage1Config", "TAU_MIN", "check_tau"]

