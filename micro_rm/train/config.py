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

import functools
import math
import typing
import warnings
from typing import Annotated, Any, Literal, Optional, Union

import pydantic
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError

from micro_rm.errors import MicroRMError
from micro_rm.model.config import BALANCES, ROUTERS, VARIANTS, MixtureConfig

TAU_MIN = 1e-8   # below this, exp(−L/τ) underflows for every head and the targets are undefined


# ---------------------------------------------------------------------- field types

def _allowed(text: str, help: str) -> Any:
    """The field's help and, for error messages, what it accepts in words."""
    return Field(description=help, json_schema_extra={"allowed": text})


def _number(value: Any) -> Any:
    """Refuse a bool where a number is expected; read a YAML 1.1 string such as ``1e-3``."""
    if isinstance(value, bool):
        raise ValueError("a bool is not a number")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


SEED_MAX = 2**32 - 1   # numpy's and torch's seeds both take any value up to here


def integer(low: int, help: str, high: int | None = None) -> Any:
    """An ``int`` in [low, high] (a bool or a float such as 2.0 is refused). ``high`` bounds what
    would otherwise only fail later, out of memory or time (e.g. 100,000 heads)."""
    text = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high:,}]"
    return Annotated[int, Field(strict=True, ge=low, le=high), _allowed(text, help)]


def number(low: float, high: float, help: str, *, open_low: bool = False, open_high: bool = False) -> Any:
    """A finite number in [low, high] (bounds open where asked)."""
    bounds = Field(allow_inf_nan=False, **{"gt" if open_low else "ge": low},
                   **({} if high == math.inf else {"lt" if open_high else "le": high}))
    text = f"a finite number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return Annotated[float, BeforeValidator(_number), bounds, _allowed(text, help)]


def choice(values: tuple[str, ...], help: str) -> Any:
    """One of ``values``, exactly."""
    return Annotated[Literal[values], _allowed(f"one of {', '.join(values)}", help)]


def integers(low: int, help: str) -> Any:
    """A list of integers ≥ ``low``."""
    return Annotated[list[integer(low, "")], _allowed(f"a list of integers ≥ {low}", help)]


def _tau(value: Any) -> Any:
    try:
        return value if value == "auto" else check_tau(_number(value))
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
                _allowed(f"a finite number ≥ {TAU_MIN:g} or 'auto'",
                         f"Hedge temperature τ, a number ≥ {TAU_MIN:g} (the paper: 1e-3 HelpSteer2, 1e-4 "
                         "RPR; small τ trusts the budget's labels, large τ keeps the stage-1 router), or "
                         "'auto': chosen with 'keep the stage-1 router' by k-fold cross-validation of "
                         "the mixture NLL on the budget pairs.")]
Folds = integer(2, "Folds of the cross-validation that chooses τ and keep-or-adapt.", 100)


# ---------------------------------------------------------------------- the config classes

def config_class(cls: type) -> type:
    """``cls`` as a pydantic dataclass that refuses unknown keys, checks assignments too, and
    raises :class:`MicroRMError` (one line, see :func:`explain`) instead of pydantic's report."""
    cls = pydantic.dataclasses.dataclass(cls, config=ConfigDict(extra="forbid", validate_assignment=True))

    def explained(method: Any) -> Any:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                method(self, *args, **kwargs)
            except ValidationError as exc:
                raise MicroRMError(explain(exc, type(self))) from None
        return wrapper

    cls.__init__, cls.__setattr__ = explained(cls.__init__), explained(cls.__setattr__)
    return cls


_BY_TYPE = {"bool_type": "true or false", "string_type": "a string", "dict_type": "a mapping of keys",
            "list_type": "a list", "int_type": "an integer", "float_type": "a number",
            "float_parsing": "a number", "dataclass_type": "a mapping of keys",
            "dataclass_args_type": "a mapping of keys"}


def explain(exc: ValidationError, root: type, where: str = "") -> str:
    """The first error of ``exc`` as one line: the key path from ``root``, what it accepts and
    what came, e.g. "config.yaml: `stage2.folds` must be an integer ≥ 2, got 1"."""
    error = exc.errors(include_url=False)[0]
    prefix = f"{where}: " if where else ""
    cls, annotation, allowed, path = root, None, None, ""
    for part in error["loc"]:
        if isinstance(part, int):           # a list item: its own type says what it accepts
            path += f"[{part}]"
            annotation = next(iter(typing.get_args(annotation)), None)
            allowed = _allowed_text(annotation) or allowed
            continue
        known = getattr(cls, "__pydantic_fields__", None)
        if known is None:                   # past the field: pydantic's tags for union members
            break
        joined = f"{path}.{part}" if path else part
        if part not in known:
            section = path or ("the top level" if where else root.__name__)
            accepted = ", ".join(k for k in known if k != "path")     # ExperimentConfig.path is no key
            return f"{prefix}unknown key `{joined}`; {section} accepts: {accepted}"
        info, path = known[part], joined
        annotation = info.annotation
        allowed = (info.json_schema_extra or {}).get("allowed") or _allowed_text(annotation)
        cls = _nested_class(annotation)
    if error["type"] in ("missing", "missing_argument"):
        return f"{prefix}missing key `{path}`"
    if allowed is None and error["type"] == "value_error":
        return f"{prefix}`{path}`: {error['ctx']['error']}"
    what = allowed or _BY_TYPE.get(error["type"], error["msg"][0].lower() + error["msg"][1:])
    return f"{prefix}`{path or 'the file'}` must be {what}, got {error['input']!r}"


def _allowed_text(annotation: Any) -> Optional[str]:
    """The ``allowed`` words carried by an ``Annotated`` type, also inside ``Optional``."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, pydantic.fields.FieldInfo) and meta.json_schema_extra:
            return meta.json_schema_extra.get("allowed")
    if typing.get_origin(annotation) is Union:
        texts = [t for t in map(_allowed_text, typing.get_args(annotation)) if t]
        return texts[0] if texts else None
    return None


def _nested_class(annotation: Any) -> Optional[type]:
    """The config class a field holds (directly, in a list or in ``Optional``), or None."""
    if hasattr(annotation, "__pydantic_fields__"):
        return annotation
    for arg in typing.get_args(annotation):
        nested = _nested_class(arg)
        if nested is not None:
            return nested
    return None


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


__all__ = ["AdaptConfig", "Stage1Config", "TAU_MIN", "check_tau", "config_class", "explain"]

