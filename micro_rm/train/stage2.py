"""Stage 2: context-aware router learning with Hedge targets (METHOD.md Eq. 5, Algorithm 1).

The heads stay frozen; only the router f_ψ, which now reads (context ⊕ prompt), is fine-tuned
on a small budget of context-annotated pairs. Once per epoch each pair gets a soft target

    ω_i = normalise( f_ψ(c_i ⊕ x_i) ⊙ exp(−L_i / τ) ),     L_ik = −log σ(Δ_ik)

(the Hedge step, computed as a softmax in log space) and the router is distilled into the
targets by cross-entropy over mini-batches. Small τ makes ω one-hot on each pair's lowest-loss
head; large τ keeps ω at the router's own weights (nothing moves). At τ = 1, ω_ik is the
posterior responsibility π_k σ(Δ_k) / Σ_j π_j σ(Δ_j) of head k for the observed label, so the
loop is (generalised) EM on the router for the mixture likelihood; a tiny τ instead trains the
router on each pair's noisy argmax head, which on pairs where several heads agree is arbitrary.
``tau="auto"`` picks τ by k-fold cross-validation of the mixture NLL on the budget pairs
themselves (no test labels): METHOD.md's reference measurements show the paper's τ = 1e-3 undoing
a good stage-1 router.

>>> rows = draw_budget(features.attributes, budget=50, seed=0)                  # doctest: +SKIP
>>> adapted, info = adapt_router(model, features.subset(rows), AdaptConfig(tau="auto"))  # doctest: +SKIP
>>> info["tau"], info["cv_nll"]                                                # doctest: +SKIP

Torch is imported inside the functions that need it, so the CLI's ``--help`` (which reads
``AdaptConfig``'s help texts) stays fast.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.train.config import _check_float, _check_int, _help

if TYPE_CHECKING:
    import torch

    from micro_rm.features.base import PairFeatures
    from micro_rm.model.mixture import MixtureRewardModel


@dataclass
class AdaptConfig:
    """Settings of stage 2. Each field's help is also the CLI's ``--help``."""

    budget: int = _help("Context-annotated pairs drawn per attribute (per context when no pair has "
                        "an attribute); the paper: 50.", 50)
    tau: float | str = _help("Hedge temperature τ of the soft targets ω ∝ f_ψ·exp(−L/τ), a number "
                             "> 0 (the paper: 1e-3; small τ = hard labels on each pair's best head, "
                             "large τ = keep the stage-1 router), or 'auto': k-fold cross-validation "
                             "of the mixture NLL on the budget pairs over tau_grid.", 1e-3)
    epochs: int = _help("Epochs T; the targets ω are recomputed with the current router once per "
                        "epoch (the paper: 10).", 10)
    batch_size: int = _help("Pairs per router update (the paper: 32).", 32)
    lr: float = _help("Peak AdamW learning rate of the router, decayed linearly to 0. Higher than "
                      "stage 1's 2e-3 because stage 2 takes only ~T·N/batch steps (70 for 4×50 "
                      "pairs); 3e-2 was best of 3e-3…3e-2 on synthetic groups and on DSP.", 3e-2)
    weight_decay: float = _help("AdamW weight decay of the router.", 0.0)
    seed: int = _help("Seed of the budget draw, the folds and the shuffling.", 0)
    tau_grid: tuple[float, ...] = _help("Candidate τ values for tau='auto'.",
                                        (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0))
    folds: int = _help("Folds (split by prompt) of the cross-validation for tau='auto'.", 5)

    def __post_init__(self) -> None:
        for name, low in (("budget", 1), ("epochs", 1), ("batch_size", 1), ("seed", 0), ("folds", 2)):
            _check_int(self, name, low)
        if self.tau != "auto":
            self.tau = check_tau(self.tau)
        _check_float(self, "lr", 0.0, math.inf, open_low=True)
        _check_float(self, "weight_decay", 0.0, math.inf)
        grid = self.tau_grid
        if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or not grid:
            raise MicroRMError(f"`tau_grid` must be a non-empty list of numbers > 0, got {grid!r}")
        self.tau_grid = tuple(check_tau(t, "tau_grid") for t in grid)

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def check_tau(tau: Any, name: str = "tau") -> float:
    """``tau`` as a float, or :class:`MicroRMError` unless it is a finite number > 0.

    >>> check_tau(1e-3)
    0.001
    """
    ok = not isinstance(tau, bool) and isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0
    if not ok:
        raise MicroRMError(f"`{name}` must be a finite number > 0 (a Hedge temperature) or 'auto', "
                           f"got {tau!r}; the paper uses 1e-3")
    return float(tau)


def parse_tau(text: str) -> float | str:
    """The value of a ``--tau`` option: ``"auto"`` or a number > 0.

    >>> parse_tau("1e-3"), parse_tau("auto")
    (0.001, 'auto')
    """
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise MicroRMError(f"--tau must be a number > 0 or 'auto', got {text!r}") from None
    return check_tau(value)


# ----- the budget -----------------------------------------------------------------------------
def budget_groups(records: Sequence[Mapping[str, Any]]) -> list[Optional[str]]:
    """The group each record's budget is drawn in: its ``attribute``, or its ``context`` when no
    record has an attribute.

    >>> budget_groups([{"context": "be brief"}, {"context": "be thorough"}])
    ['be brief', 'be thorough']
    """
    key = "attribute" if any(r.get("attribute") is not None for r in records) else "context"
    return [r.get(key) for r in records]


def draw_budget(records_or_groups: Sequence[Any], budget: int, seed: int) -> np.ndarray:
    """Sorted row indices of ``budget`` rows per group, drawn with ``seed``.

    ``records_or_groups`` is one group label (str or None) per row, or the pair records
    themselves (grouped by :func:`budget_groups`). Each group's draw depends only on the seed
    and the group's name and rows, so adding a group leaves the others' draws unchanged. A group
    with fewer than ``budget`` rows is used whole, with a warning.

    >>> draw_budget(["a", "a", "a", "b"], budget=2, seed=0).tolist()     # doctest: +SKIP
    [0, 2, 3]
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise MicroRMError(f"`budget` must be an integer ≥ 1 (pairs per group), got {budget!r}")
    groups = list(records_or_groups)
    if groups and isinstance(groups[0], Mapping):
        groups = budget_groups(groups)
    rows: dict[Optional[str], list[int]] = {}
    for i, group in enumerate(groups):
        rows.setdefault(group, []).append(i)
    chosen, short = [], []
    for group, index in sorted(rows.items(), key=lambda item: (item[0] is None, str(item[0]))):
        if len(index) <= budget:
            chosen.append(np.asarray(index))
            if len(index) < budget:
                short.append(f"{group!r} ({len(index)})")
            continue
        name_hash = int(hashlib.sha256(str(group).encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng([seed, name_hash])
        chosen.append(rng.choice(np.asarray(index), size=budget, replace=False))
    if short:
        warnings.warn(f"budget {budget} per group is more than {len(short)} group(s) hold: "
                      f"{', '.join(short)}; using all of their pairs (pass a smaller --budget to "
                      "silence this)", stacklevel=2)
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


# ----- Algorithm 1 ----------------------------------------------------------------------------
def hedge_targets(log_prior: "torch.Tensor", losses: "torch.Tensor", tau: float) -> "torch.Tensor":
    """Eq. 5 in log space: ω = softmax(log f − L / τ), [B, K], [B, K] → [B, K].

    >>> import torch
    >>> hedge_targets(torch.log(torch.tensor([[0.5, 0.5]])), torch.tensor([[0.0, math.log(3)]]), 1.0)
    tensor([[0.7500, 0.2500]])
    """
    import torch

    return torch.softmax(log_prior - losses / check_tau(tau), dim=-1)


def adapt_router(model: "MixtureRewardModel", features: "PairFeatures", config: AdaptConfig | None = None,
                 *, progress: bool = True) -> tuple["MixtureRewardModel", dict[str, Any]]:
    """Algorithm 1 on every row of ``features`` (draw the budget first, :func:`draw_budget`).

    ``features.route`` must be the router features of (context ⊕ prompt)
    (``featurize(..., router_input="context")``). Returns a new model (the input is untouched)
    whose heads are the input's and whose router is adapted, and ``info``: ``tau`` (the τ
    used), ``cv_nll`` ({τ: cross-validated mixture NLL} for ``tau="auto"``, else None),
    ``stage1_nll`` and ``nll`` (mixture NLL of the budget pairs before and after), ``epochs``
    (one row per epoch), ``pairs`` and ``seconds``.
    """
    import torch

    from micro_rm.train.stage1 import _small_tensor_cpu, check_features

    config = config or AdaptConfig()
    check_adaptable(model)
    check_features(features)
    model.check_features(features)
    start = time.perf_counter()
    device = model.heads.weight.device
    adapted = copy.deepcopy(model)
    route = torch.as_tensor(np.asarray(features.route, dtype=np.float32), device=device)
    with torch.no_grad():                                                # heads are frozen: Δ is data
        diff = np.subtract(features.chosen, features.rejected, dtype=np.float32)
        deltas = adapted.head_deltas(torch.as_tensor(diff, device=device))        # [N, K]
    with _small_tensor_cpu(str(device)):
        stage1_nll = mixture_nll(adapted, route, deltas)
        cv_nll = None
        if config.tau == "auto":
            cv_nll = cross_validate_tau(adapted, route, deltas, features.prompts, config, progress=progress)
        tau = min(cv_nll, key=cv_nll.get) if cv_nll else config.tau
        epochs = fit_router(adapted, route, deltas, tau, config, progress=progress)
    info = {"tau": tau, "cv_nll": cv_nll, "stage1_nll": stage1_nll, "nll": epochs[-1]["nll"],
            "epochs": epochs, "pairs": len(features), "seconds": time.perf_counter() - start}
    adapted.config.feature = {**adapted.config.feature, "router_input": "context"}
    adapted.config.training = {**adapted.config.training,
                               "stage2": {**asdict(config), "tau_chosen": tau, "cv_nll": cv_nll}}
    adapted.config.data = {**adapted.config.data, "stage2_pairs": len(features)}
    adapted.config.metrics = {**adapted.config.metrics, "stage2_budget_nll": info["nll"],
                              "stage2_budget_nll_before": stage1_nll}
    return adapted.eval(), info


def check_adaptable(model: "MixtureRewardModel") -> None:
    """Raise :class:`MicroRMError` unless ``model`` has a router to adapt (variant ``micro``)."""
    if model.config.variant != "micro":
        raise MicroRMError(f"stage 2 adapts a router, and a {model.config.variant!r} model has none "
                           "(a static mixture keeps its fixed weights at stage 2, a single head or an "
                           "ensemble has nothing to route); train stage 1 with --variant micro")


def fit_router(model: "MixtureRewardModel", route: "torch.Tensor", deltas: "torch.Tensor", tau: float,
               config: AdaptConfig, *, progress: bool = False) -> list[dict[str, float]]:
    """Algorithm 1 in place on ``model``'s router: ``route`` [N, d_r], frozen head ``deltas`` [N, K].
    Returns one row per epoch (epoch, ce, nll, seconds)."""
    import torch
    from tqdm.auto import tqdm

    from micro_rm.model.losses import bt_loss
    from micro_rm.train.schedule import lr_at
    from micro_rm.train.stage1 import _adamw

    losses = bt_loss(deltas)                                             # L_ik = −log σ(Δ_ik), [N, K]
    optimizer = _adamw(list(model.router.parameters()), config)
    shuffle = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(route) / config.batch_size)
    total, step, rows, start = config.epochs * steps_per_epoch, 0, [], time.perf_counter()
    model.train()
    for epoch in tqdm(range(1, config.epochs + 1), desc=f"stage 2 (τ={tau:g})", unit="epoch",
                      disable=not progress, leave=False):
        with torch.no_grad():                                            # ω_i, held for the epoch
            targets = hedge_targets(model.router_log_weights(route), losses, tau)        # [N, K]
        ce_sum = 0.0
        for batch in torch.randperm(len(route), generator=shuffle).split(config.batch_size):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_at(step, total, warmup=0)
            log_f = model.router_log_weights(route[batch])                              # [b, K]
            ce = -(targets[batch] * log_f).sum(-1).mean()                                # CE(ω, f_ψ)
            optimizer.zero_grad(set_to_none=True)
            ce.backward()
            optimizer.step()
            ce_sum += ce.item() * len(batch)
            step += 1
        rows.append({"epoch": epoch, "ce": ce_sum / len(route), "nll": mixture_nll(model, route, deltas),
                     "seconds": time.perf_counter() - start})
    return rows


def cross_validate_tau(model: "MixtureRewardModel", route: "torch.Tensor", deltas: "torch.Tensor",
                       prompts: Sequence[str], config: AdaptConfig, *, progress: bool = False
                       ) -> dict[float, float]:
    """{τ: mixture NLL of held-out pairs} over ``config.tau_grid``: ``config.folds`` folds split by
    prompt, each fold's router adapted from ``model``'s on the other folds."""
    import torch
    from tqdm.auto import tqdm

    fold = prompt_folds(prompts, config.folds, config.seed)
    total = {tau: 0.0 for tau in config.tau_grid}
    bar = tqdm(total=len(config.tau_grid) * (fold.max() + 1), desc="choosing τ", unit="fit",
               disable=not progress, leave=False)
    with bar:
        for f in range(fold.max() + 1):
            train, held = (torch.from_numpy(np.flatnonzero(fold != f)),
                           torch.from_numpy(np.flatnonzero(fold == f)))
            for tau in config.tau_grid:
                candidate = copy.deepcopy(model)
                fit_router(candidate, route[train], deltas[train], tau, config)
                total[tau] += mixture_nll(candidate, route[held], deltas[held]) * len(held)
                bar.update()
    return {tau: nll_sum / len(prompts) for tau, nll_sum in total.items()}


def prompt_folds(prompts: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold number of each row; all rows of one prompt share a fold (so held-out prompts are
    new). Fewer distinct prompts than ``folds`` gives one fold per prompt."""
    distinct = list(dict.fromkeys(prompts))
    if len(distinct) < 2:
        raise MicroRMError(f"tau='auto' cross-validates over prompts and needs pairs of at least 2 "
                           f"distinct prompts, got {len(distinct)}; pass a number as --tau")
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of = {distinct[i]: rank % min(folds, len(distinct)) for rank, i in enumerate(order)}
    return np.array([fold_of[p] for p in prompts])


def mixture_nll(model: "MixtureRewardModel", route: "torch.Tensor", deltas: "torch.Tensor") -> float:
    """Mean mixture NLL −log Σ_k f_ψ,k σ(Δ_k) of pairs with frozen head ``deltas`` [N, K]."""
    import torch

    from micro_rm.model.losses import mixture_bt_loss

    with torch.no_grad():
        return mixture_bt_loss(deltas, model.router_log_weights(route)).mean().item()


def state_model_id(model: "MixtureRewardModel") -> str:
    """The id a per-user state store is keyed on: the backbone fingerprint, K and a hash of the
    effective head weights. Users' cumulative losses depend on the heads only, so a model adapted
    at stage 2 (same heads, new router) shares its stage-1 model's user state; retrained heads or
    another backbone do not.

    >>> state_model_id(model)                                                # doctest: +SKIP
    'heads-3f1c9a0b2d4e5f60-k4'
    """
    import torch

    from micro_rm.features.backbones import fingerprint_id

    with torch.no_grad():
        weights = model.head_weight().detach().cpu().to(torch.float32).contiguous().numpy()
    digest = hashlib.sha256(weights.tobytes())
    digest.update(fingerprint_id(model.config.backbone).encode())
    return f"heads-{digest.hexdigest()[:16]}-k{model.config.num_heads}"
