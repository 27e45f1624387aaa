"""Stage 2: context-aware router learning with Hedge targets (METHOD.md Eq. 5, Algorithm 1).

The heads stay frozen; only the router learns, from a small budget of context-annotated pairs.
Once per epoch each pair gets a soft target

    ω_i = normalise( f_ψ(c_i, x_i) ⊙ exp(−L_i / τ) ),     L_ik = −log σ(Δ_ik)

(the Hedge step, computed as a softmax in log space) and the router is distilled into the
targets by cross-entropy over mini-batches. Small τ makes ω one-hot on each pair's lowest-loss
head; large τ keeps ω at the router's own weights. At τ = 1, ω_ik is the posterior responsibility
of head k for the observed label, so the loop is (generalised) EM on the router.

Two algorithms (``AdaptConfig.algorithm``):

``safe`` (the default)
    * "keep the stage-1 router" is a candidate beside every τ of the grid; k-fold
      cross-validation by prompt on the budget pairs scores each candidate by the mixture NLL of
      pairs its router did not adapt on, and an adapted router replaces the stage-1 one only when
      its NLL is lower by more than one standard error of the paired difference. At small budgets
      this keeps stage 1 unless the labels clearly say otherwise (METHOD.md, measured finding 2).
    * on the separate route layout each context the budget speaks for takes one Hedge step on
      the mean loss of its pairs, a ← a − L̄/τ (:func:`hedge_context_branch`), so the change
      follows τ and nothing else: at large τ nothing moves. (The paper's mini-batch Adam
      normalises the gradient, so even τ = 100 moved the router, and how far it moves depends
      on the number of steps, not on τ. Eq. 5's per-pair targets at small τ count which head
      wins each pair, not by how much.) A joint-layout router distils the targets of each epoch
      exactly (full batch, L-BFGS), which is the mirror-descent step itself.
    * on the separate route layout only the router's context branch learns (the prototypes'
      logits, and the logits of "no context"); the prompt branch keeps what stage 1 learned
      from all the data. The budget's contexts become new prototypes.
    * a new wording's prototype can also learn which routing stage 1 already knows it states
      (``update="contexts"``: Hedge over the known prototypes, :func:`known_routing_logits`);
      ``update="both"`` (the default) lets the cross-validation choose between the two kinds.
    * a new wording joins the router as a plain prototype, which takes attention from the known
      ones (so even at large τ it moves other contexts' routing), or as a correction, added to
      stage 1's routing by the share of attention it would get (``wordings``; see
      :class:`~micro_rm.model.mixture.ContextRouter`); ``wordings="both"`` (the default) makes
      candidates of each kind.
``paper``
    The paper's Algorithm 1 as written: the whole router fine-tuned with AdamW for T epochs at the
    given τ (or the τ of the grid with the lowest cross-validated NLL, ``tau="auto"``), no "keep".

>>> rows = draw_budget(features.attributes, budget=50, seed=0)                  # doctest: +SKIP
>>> adapted, info = adapt_router(model, features.subset(rows), AdaptConfig())   # doctest: +SKIP
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
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from micro_rm.errors import MicroRMError
from micro_rm.train.config import _check_float, _check_int, _help

if TYPE_CHECKING:
    import torch

    from micro_rm.features.base import PairFeatures
    from micro_rm.model.mixture import MixtureRewardModel


ALGORITHMS = ("safe", "paper")
HELDOUT = ("phrasing", "prompt")
UPDATES = ("heads", "contexts", "both")
WORDINGS = ("prototypes", "corrections", "both")
TAU_MIN = 1e-8   # below this, exp(−L/τ) underflows for every head and the targets are undefined


@dataclass
class AdaptConfig:
    """Settings of stage 2. Each field's help is also the CLI's ``--help``."""

    budget: int = _help("Context-annotated pairs drawn per attribute (per context when no pair has "
                        "an attribute); the paper: 50.", 50)
    algorithm: str = _help("safe: 'keep the stage-1 router' is a candidate beside each τ, chosen by "
                           "cross-validation on held-out budget prompts with a one-standard-error "
                           "margin; one Hedge step per context on the mean loss of its pairs, so the "
                           "change follows τ; only the context branch learns. "
                           "paper: Algorithm 1 as written (AdamW on the whole router, no keep).", "safe")
    tau: float | str = _help("Hedge temperature τ of the soft targets ω ∝ f_ψ·exp(−L/τ), a number "
                             f"≥ {TAU_MIN:g} (the paper: 1e-3; small τ = hard labels on each pair's "
                             "best head, large τ = keep the router), or 'auto': k-fold "
                             "cross-validation of the mixture NLL on the budget pairs over tau_grid.",
                             "auto")
    epochs: int = _help("Epochs T; the targets ω are recomputed with the current router once per "
                        "epoch (the paper: 10). Safe stage 2 on a separate-layout router takes a "
                        "single Hedge step instead.", 10)
    batch_size: int = _help("Pairs per router update (the paper: 32).", 32)
    lr: float = _help("Peak AdamW learning rate of the paper's algorithm, decayed linearly to 0 "
                      "(safe has no learning rate). No validation "
                      "evidence backs 3e-2; stage 2 takes only ~T·N/batch steps.", 3e-2)
    weight_decay: float = _help("Weight decay (paper) / L2 penalty (safe, joint-layout router) of "
                                "the router's trained parameters.", 0.0)
    seed: int = _help("Seed of the budget draw, the folds and the shuffling.", 0)
    tau_grid: tuple[float, ...] = _help("Candidate τ values for tau='auto'.",
                                        (1e-3, 1e-2, 1e-1, 1.0, 10.0))
    folds: int = _help("Folds of the cross-validation for tau='auto' and for safe's keep-or-adapt "
                       "choice.", 5)
    heldout: str = _help("What a cross-validation fold holds out. phrasing: where an attribute's budget "
                         "pairs carry several contexts (wordings of one preference), whole wordings, "
                         "so a candidate must also route a wording it was not fitted on (separate "
                         "context layouts only); prompts elsewhere. prompt: prompts only.", "phrasing")
    update: str = _help("safe, separate context layouts: what a candidate re-weights. heads: Hedge over "
                        "the K heads for each context the budget speaks for, one step on the mean "
                        "loss of its pairs. contexts: Hedge over the routings of the contexts stage 1 "
                        "knows, for each new wording of the budget (which known preference does it "
                        "state?); a context stage 1 knew keeps its routing. both: candidates of each "
                        "kind. Elsewhere: heads.", "both")
    wordings: str = _help("safe, separate context layouts: how a wording the router never saw joins it. "
                          "prototypes: a prototype of its own in the router's attention, so a context "
                          "near it routes like it. corrections: a change added to the routing stage 1 "
                          "gives a context, by the share of attention the wording would get; it takes "
                          "no attention from stage 1's prototypes, so at large τ nothing moves. both: "
                          "candidates of each kind. Elsewhere: prototypes.", "both")
    keep_margin: float = _help("safe: standard errors (of the paired difference, clustered by the "
                               "held-out prompt or wording) by which an adapted router's "
                               "cross-validated NLL must beat keeping the stage-1 router.", 1.0)

    def __post_init__(self) -> None:
        for name, low in (("budget", 1), ("epochs", 1), ("batch_size", 1), ("seed", 0), ("folds", 2)):
            _check_int(self, name, low)
        if self.heldout not in HELDOUT:
            raise MicroRMError(f"`heldout` must be one of {', '.join(HELDOUT)}, got {self.heldout!r}")
        if self.update not in UPDATES:
            raise MicroRMError(f"`update` must be one of {', '.join(UPDATES)}, got {self.update!r}")
        if self.wordings not in WORDINGS:
            raise MicroRMError(f"`wordings` must be one of {', '.join(WORDINGS)}, got {self.wordings!r}")
        if self.algorithm not in ALGORITHMS:
            raise MicroRMError(f"`algorithm` must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.tau != "auto":
            self.tau = check_tau(self.tau)
        _check_float(self, "lr", 0.0, math.inf, open_low=True)
        _check_float(self, "weight_decay", 0.0, math.inf)
        _check_float(self, "keep_margin", 0.0, math.inf)
        grid = self.tau_grid
        if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or not grid:
            raise MicroRMError(f"`tau_grid` must be a non-empty list of numbers ≥ {TAU_MIN:g}, got {grid!r}")
        self.tau_grid = tuple(check_tau(t, "tau_grid") for t in grid)

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def check_tau(tau: Any, name: str = "tau") -> float:
    """``tau`` as a float, or :class:`MicroRMError` unless it is a finite number ≥ ``TAU_MIN``
    (smaller values make exp(−L/τ) underflow for every head, so the targets would be NaN).

    >>> check_tau(1e-3)
    0.001
    """
    ok = not isinstance(tau, bool) and isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= TAU_MIN
    if not ok:
        raise MicroRMError(f"`{name}` must be a finite number ≥ {TAU_MIN:g} (a Hedge temperature) or "
                           f"'auto', got {tau!r}; the paper uses 1e-3")
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
        raise MicroRMError(f"--tau must be a number ≥ {TAU_MIN:g} or 'auto', got {text!r}") from None
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
    """Stage 2 on every row of ``features`` (draw the budget first, :func:`draw_budget`).

    ``features.route`` must carry the contexts (``featurize(..., router_input="context")``).
    Returns a new model (the input is untouched) whose heads are the input's, and ``info``:
    ``tau`` (the τ used, or ``"keep"`` when safe stage 2 kept the stage-1 router), ``update`` and
    ``wordings`` (the chosen candidate's kind, see :class:`Candidate`), ``cv_nll``
    ({candidate: cross-validated mixture NLL}, None without cross-validation), ``stage1_nll`` and
    ``nll`` (mixture NLL of the budget pairs before and after), ``epochs`` (one row per epoch),
    ``pairs`` and ``seconds``.
    """
    import torch

    from micro_rm.train.stage1 import _small_tensor_cpu, check_features

    config = config or AdaptConfig()
    check_adaptable(model)
    check_features(features)
    model.check_features(features)
    start = time.perf_counter()
    device = model.heads.weight.device
    route = torch.as_tensor(np.asarray(features.route, dtype=np.float32), device=device)
    with torch.no_grad():                                                # heads are frozen: Δ is data
        diff = np.subtract(features.chosen, features.rejected, dtype=np.float32)
        deltas = model.head_deltas(torch.as_tensor(diff, device=device))          # [N, K]
    with _small_tensor_cpu(str(device)):
        stage1_nll = mixture_nll(model, route, deltas)
        cv_nll, candidate = None, Candidate("heads", config.tau)
        if config.algorithm == "safe" or config.tau == "auto":
            fold, clusters = cv_folds(model, route, features.prompts, features.attributes, config)
            cv_nll = cross_validate(model, route, deltas, features.prompts, config, progress=progress, fold=fold)
            candidate = choose_candidate(cv_nll, config, clusters)
        adapted, epochs = copy.deepcopy(model), []
        update, tau, wordings = ("heads", KEEP, "prototypes") if candidate == KEEP else candidate
        if tau != KEEP:
            epochs = fit_router(adapted, route, deltas, tau, config, progress=progress, update=update,
                                wordings=wordings)
    nll = epochs[-1]["nll"] if epochs else stage1_nll
    info = {"tau": tau, "update": update, "wordings": wordings, "cv_nll": _plain(cv_nll),
            "stage1_nll": stage1_nll, "nll": nll, "epochs": epochs, "pairs": len(features),
            "seconds": time.perf_counter() - start}
    adapted.config.feature = {**adapted.config.feature, "router_input": "context"}
    adapted.config.training = {**adapted.config.training,
                               "stage2": {**asdict(config), "tau_chosen": tau, "update_chosen": update,
                                          "wordings_chosen": wordings, "cv_nll": info["cv_nll"]}}
    adapted.config.data = {**adapted.config.data, "stage2_pairs": len(features)}
    adapted.config.metrics = {**adapted.config.metrics, "stage2_budget_nll": nll,
                              "stage2_budget_nll_before": stage1_nll}
    return adapted.eval(), info


KEEP = "keep"   # the safe candidate that leaves the stage-1 router as it is


class Candidate(NamedTuple):
    """An adapted router that stage 2 may choose: what it re-weights (``update``: heads or
    contexts), at which τ, and how the budget's new wordings join the router (``wordings``:
    prototypes or corrections; see :class:`~micro_rm.model.mixture.ContextRouter`)."""

    update: str
    tau: float
    wordings: str = "prototypes"


def check_adaptable(model: "MixtureRewardModel") -> None:
    """Raise :class:`MicroRMError` unless ``model`` has a router to adapt (variant ``micro``)."""
    if model.config.variant != "micro":
        raise MicroRMError(f"stage 2 adapts a router, and a {model.config.variant!r} model has none "
                           "(a static mixture keeps its fixed weights at stage 2, a single head or an "
                           "ensemble has nothing to route); train stage 1 with --variant micro")


def fit_router(model: "MixtureRewardModel", route: "torch.Tensor", deltas: "torch.Tensor", tau: float,
               config: AdaptConfig, *, progress: bool = False, history: bool = True,
               update: str = "heads", wordings: str = "prototypes") -> list[dict[str, float]]:
    """Algorithm 1 in place on ``model``'s router: ``route`` [N, d_r], frozen head ``deltas`` [N, K].
    On the separate layout the budget's contexts become prototypes (or ``wordings="corrections"``)
    first (:func:`budget_prototypes`) and ``safe`` takes one Hedge step on the context branch only
    (:func:`hedge_context_branch`, or with ``update="contexts"`` :func:`known_routing_logits`);
    otherwise the whole router learns for T epochs. Returns one row per epoch (epoch, ce, nll,
    seconds; nll is NaN without ``history``, ce without a distillation)."""
    import torch
    from tqdm.auto import tqdm

    from micro_rm.model.losses import bt_loss

    known = len(model.router.prototypes) if model.config.context_dim else 0
    spoken_for = (budget_prototypes(model, route, config.seed, corrections=wordings == "corrections")
                  if model.config.context_dim else None)
    if spoken_for is not None and config.algorithm == "safe":
        start = time.perf_counter()
        with torch.no_grad():
            if update == "contexts" and known:
                model.router.prototype_logits[known:] = known_routing_logits(model, route, deltas, known, [tau])[0]
            else:
                prototype_logits, null_logits = hedge_context_branch(model, route, deltas, [tau], spoken_for)
                model.router.prototype_logits.copy_(prototype_logits[0])
                model.router.null_logits.copy_(null_logits[0])
        return [{"epoch": 1, "ce": math.nan, "nll": mixture_nll(model, route, deltas) if history else math.nan,
                 "seconds": time.perf_counter() - start}]
    losses = bt_loss(deltas)                                             # L_ik = −log σ(Δ_ik), [N, K]
    distil = _exact_distillation if config.algorithm == "safe" else _adam_distillation(model, route, config)
    rows, start = [], time.perf_counter()
    model.train()
    for epoch in tqdm(range(1, config.epochs + 1), desc=f"stage 2 (τ={tau:g})", unit="epoch",
                      disable=not progress, leave=False):
        with torch.no_grad():                                            # ω_i, held for the epoch
            targets = hedge_targets(model.router_log_weights(route), losses, tau)        # [N, K]
        ce = distil(model, route, targets, config)
        rows.append({"epoch": epoch, "ce": ce, "nll": mixture_nll(model, route, deltas) if history else math.nan,
                     "seconds": time.perf_counter() - start})
    model.eval()
    return rows


PAIRS_PER_PROTOTYPE = 10   # a cluster of rare contexts gets one prototype per this many pairs
MIN_PAIRS_PER_CONTEXT = 3  # a context with at least this many budget pairs is a prototype of its own


def budget_prototypes(model: "MixtureRewardModel", route: "torch.Tensor", seed: int,
                      corrections: bool = False) -> "torch.Tensor":
    """Make the budget's contexts prototypes (or ``corrections``) of the router and return which
    prototypes the budget speaks for (bool [M]): the existing ones equal to a budget context, and
    the new ones. A new phrasing becomes a prototype of its own instead of re-training the logits
    of the training phrasing it happens to be nearest to, which would move every user of that
    phrasing. A context with at least ``MIN_PAIRS_PER_CONTEXT`` budget pairs is a prototype of
    its own; rarer ones (one per pair, e.g. personas) become spherical k-means centres, at most
    one per ``PAIRS_PER_PROTOTYPE`` pairs, so that no prototype memorises one pair's label."""
    import torch

    from micro_rm.train.stage1 import context_prototypes

    router, width = model.router, model.config.context_dim
    known = len(router.prototypes)
    matched, new = unseen_contexts(model, route)
    if len(new):
        distinct, inverse, counts = torch.unique(new, dim=0, return_inverse=True, return_counts=True)
        frequent = distinct[counts >= MIN_PAIRS_PER_CONTEXT]
        rare = new[(counts < MIN_PAIRS_PER_CONTEXT)[inverse]]
        if len(rare):                                    # e.g. one persona per pair: cluster them
            centres = context_prototypes(rare.detach().cpu().numpy(), width,
                                         max(1, len(rare) // PAIRS_PER_PROTOTYPE), seed)
            frequent = torch.cat([frequent, torch.from_numpy(centres).to(route.device)])
        router.add_prototypes(frequent, corrections=corrections)
        model.config.context_prototypes = len(router.prototypes)
        model.config.context_corrections = router.corrections.nonzero()[:, 0].tolist()
    added = torch.ones(len(router.prototypes) - known, dtype=torch.bool, device=route.device)
    return torch.cat([matched, added])


def unseen_contexts(model: "MixtureRewardModel", route: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Which prototypes equal one of ``route``'s contexts (bool [M]), and the contexts (unit
    vectors, one per row that has a context) that equal none of them."""
    import torch

    router, width = model.router, model.config.context_dim
    context = route[:, -width:]
    unit = torch.nn.functional.normalize(context[context.norm(dim=-1) > 0], dim=-1)
    if not len(router.prototypes) or not len(unit):
        return torch.zeros(len(router.prototypes), dtype=torch.bool, device=route.device), unit
    similarity = unit @ router.prototypes.T                                              # [n, M]
    return (similarity > 1 - 1e-6).any(dim=0), unit[similarity.max(dim=-1).values <= 1 - 1e-6]


def known_routing_logits(model: "MixtureRewardModel", route: "torch.Tensor", deltas: "torch.Tensor",
                         known: int, taus: Sequence[float]) -> "torch.Tensor":
    """The logits of the budget's new prototypes (rows ``known:``) as Hedge over the routings of
    the ``known`` prototypes stage 1 trained, for C values of τ at once: [C, M − known, K].

        β_nm ∝ att_m(u_n) · exp(−Σ_i w_in L_i(m) / τ),   a_n = Σ_m β_nm a_m

    where att(u_n) is the stage-1 attention of new wording u_n over the known prototypes (so large
    τ keeps its zero-shot routing), L_i(m) the mixture NLL of budget pair i routed as prototype m,
    and w_in the weight pair i's context gives u_n. At τ = 1 β is the posterior of "which known
    preference does this wording state". Why: a few pairs per new wording cannot fit K free
    logits that transfer to the next wording, but they can tell apart the few routings stage 1
    learned, and the answer carries over to any wording near it. A new wording that is a
    correction gets a_n minus the routing it has without one, so that it routes about as a_n; known
    corrections (of an earlier stage 2) are not routings and take no part."""
    import torch

    from micro_rm.model.losses import mixture_bt_loss

    router = model.router
    with torch.no_grad():
        fixed, attention, has_context = model.context_branch_inputs(route)
        plain = ~router.corrections[:known]
        routings = router.prototype_logits[:known][plain]                                # [Mk, K]
        log_weights = torch.log_softmax(fixed[:, None, :] + routings[None], dim=-1)      # [N, Mk, K]
        losses = mixture_bt_loss(deltas[:, None, :].expand_as(log_weights), log_weights)  # [N, Mk]
        evidence = (attention[:, known:] * has_context).T @ losses                      # [Mn, Mk]
        prior = torch.log_softmax(router.prototypes[known:] @ router.prototypes[:known][plain].T
                                  / router.temperature, dim=-1)                         # [Mn, Mk]
        tau = torch.tensor([check_tau(t) for t in taus], dtype=route.dtype, device=route.device).view(-1, 1, 1)
        logits = torch.softmax(prior - evidence / tau, dim=-1) @ routings               # [C, Mn, K]
        new = router.corrections[known:]
        if bool(new.any()):                 # corrections are still at δ = 0: h(u_n) is what they correct
            logits[:, new] -= router.context_logits(router.prototypes[known:][new])
        return logits


def _exact_distillation(model: "MixtureRewardModel", route: "torch.Tensor", targets: "torch.Tensor",
                        config: AdaptConfig) -> float:
    """One exact mirror-descent step (``safe`` on a joint-layout router, which trains whole): fit
    the router to the targets, full batch, with L-BFGS (at most ``DISTIL_ITERATIONS``)."""
    import torch

    params = list(model.router.parameters())
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=DISTIL_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> "torch.Tensor":
        optimizer.zero_grad(set_to_none=True)
        ce = -(targets * model.router_log_weights(route)).sum(-1).mean()                # CE(ω, f_ψ)
        if config.weight_decay:
            ce = ce + config.weight_decay * sum((p ** 2).sum() for p in params) / 2
        ce.backward()
        return ce

    return float(optimizer.step(closure).detach())


def hedge_context_branch(model: "MixtureRewardModel", route: "torch.Tensor", deltas: "torch.Tensor",
                         taus: Sequence[float], rows: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Safe stage 2 on a separate-layout router, for C values of τ at once: one Hedge step for each
    context the budget speaks for, on the mean loss of its pairs,

        a_m ← a_m − L̄_m / τ,   L̄_mk = Σ_i w_im L_ik / Σ_i w_im,   L_ik = −log σ(Δ_ik),

    where w_im is the attention pair i's context gives prototype m; "no context" takes the same
    step on the pairs without one. A pair routed by prototype m then gets f_ψ(x, c) ⊙ exp(−L̄_m/τ),
    normalised: Eq. 5 with the evidence of all the context's pairs at once, so the change follows τ
    and nothing else. Why not Eq. 5 per pair, distilled: at small τ each pair's target is one-hot on
    its own best head, so the router learns the share of pairs each head wins rather than which head
    explains them: on validation a head that won more of 10 pairs by a hair took an attribute from
    the head with half its total loss (−29 points on one wording; BENCHMARKS.md). Only the
    prototypes ``rows`` move. Returns the prototype logits [C, M, K] and the no-context logits [C, K]."""
    import torch

    from micro_rm.model.losses import bt_loss

    router, c = model.router, len(taus)
    _, attention, has_context = model.context_branch_inputs(route)
    losses = bt_loss(deltas)                                             # L_ik = −log σ(Δ_ik), [N, K]
    step = 1 / torch.tensor([check_tau(t) for t in taus], dtype=route.dtype, device=route.device).view(c, 1, 1)
    prototype_logits = router.prototype_logits.detach().expand(c, -1, -1).clone()
    null_logits = router.null_logits.detach().expand(c, -1).clone()
    if attention is not None:
        weight = (attention * has_context)[:, rows]                                      # [N, M']
        mean_loss = (weight.T @ losses) / weight.sum(0).clamp_min(1e-12)[:, None]       # [M', K]
        prototype_logits[:, rows] -= step * mean_loss
    without = ~has_context[:, 0]
    if bool(without.any()):
        null_logits -= step[:, :, 0] * losses[without].mean(0)
    return prototype_logits, null_logits


DISTIL_ITERATIONS = 20  # L-BFGS iterations per epoch of safe stage 2 on a joint-layout router


def _adam_distillation(model: "MixtureRewardModel", route: "torch.Tensor", config: AdaptConfig):
    """The paper's distillation step (``paper``): one pass of AdamW mini-batches per epoch over the
    whole router, with a linearly decaying learning rate across the epochs."""
    import torch

    from micro_rm.train.schedule import lr_at
    from micro_rm.train.stage1 import _adamw

    optimizer = _adamw(list(model.router.parameters()), config)
    shuffle = torch.Generator().manual_seed(config.seed)
    total, step = config.epochs * math.ceil(len(route) / config.batch_size), 0

    def distil(model: "MixtureRewardModel", route: "torch.Tensor", targets: "torch.Tensor",
               config: AdaptConfig) -> float:
        nonlocal step
        ce_sum = 0.0
        for batch in torch.randperm(len(route), generator=shuffle).split(config.batch_size):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_at(step, total, warmup=0)
            ce = -(targets[batch] * model.router_log_weights(route[batch])).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            ce.backward()
            optimizer.step()
            ce_sum += ce.item() * len(batch)
            step += 1
        return ce_sum / len(route)

    return distil


def cross_validate(model: "MixtureRewardModel", route: "torch.Tensor", deltas: "torch.Tensor",
                   prompts: Sequence[str], config: AdaptConfig, *, progress: bool = False,
                   fold: Optional[np.ndarray] = None) -> dict[Any, np.ndarray]:
    """{candidate: mixture NLL of each budget pair when its fold was held out} [N], over the τ
    of the grid (or ``config.tau`` when it is a number), for ``safe`` on a separate layout each
    kind of update and of new wordings (:class:`Candidate`), and ``"keep"`` (the stage-1 router's
    NLL). ``fold``: each row's fold (:func:`cv_folds`); by default folds split by prompt, so a
    held-out pair's prompt is new to the adapted router."""
    import torch
    from tqdm.auto import tqdm

    from micro_rm.model.losses import mixture_bt_loss
    from micro_rm.model.mixture import context_branch_logits

    taus = config.tau_grid if config.tau == "auto" else (config.tau,)
    if fold is None:
        fold = prompt_folds(prompts, config.folds, config.seed)
    separate = config.algorithm == "safe" and bool(model.config.context_dim)
    known = len(model.router.prototypes) if separate else 0
    updates = [u for u in (("heads", "contexts") if config.update == "both" else (config.update,))
               if u == "heads" or known] or ["heads"]
    wordings = [w for w in (("prototypes", "corrections") if config.wordings == "both" else (config.wordings,))
                if w == "prototypes" or (separate and adds_wordings(model, route))] or ["prototypes"]
    kinds = [(u, w) for w in wordings for u in updates] if separate else [("heads", "prototypes")]
    out: dict[Any, np.ndarray] = {Candidate(u, t, w): np.zeros(len(prompts)) for u, w in kinds for t in taus}
    with torch.no_grad():
        if config.algorithm == "safe":
            out[KEEP] = mixture_bt_loss(deltas, model.router_log_weights(route)).cpu().numpy()
    bar = tqdm(total=len(kinds) * len(taus) * len(np.unique(fold)), desc="stage 2: cross-validation",
               unit="fit", disable=not progress, leave=False)
    with bar:
        for f in np.unique(fold):
            train, held = (torch.from_numpy(np.flatnonzero(fold != f)).to(route.device),
                           torch.from_numpy(np.flatnonzero(fold == f)).to(route.device))
            if separate:                                                     # every τ in one fit
                for kind in wordings:
                    candidate = copy.deepcopy(model)
                    rows = budget_prototypes(candidate, route[train], config.seed, corrections=kind == "corrections")
                    inputs = candidate.context_branch_inputs(route[held])
                    for update in updates:
                        if update == "contexts":
                            logits = candidate.router.prototype_logits.detach().expand(len(taus), -1, -1).clone()
                            logits[:, known:] = known_routing_logits(candidate, route[train], deltas[train], known, taus)
                            null_logits = candidate.router.null_logits.detach().expand(len(taus), -1)
                        else:
                            logits, null_logits = hedge_context_branch(candidate, route[train], deltas[train], taus, rows)
                        with torch.no_grad():
                            log_f = torch.log_softmax(context_branch_logits(inputs, logits, null_logits), dim=-1)
                        for tau, lf in zip(taus, log_f):
                            out[Candidate(update, tau, kind)][held.cpu().numpy()] = mixture_bt_loss(deltas[held], lf).cpu().numpy()
                        bar.update(len(taus))
                continue
            for tau in taus:
                candidate = copy.deepcopy(model)
                fit_router(candidate, route[train], deltas[train], tau, config, history=False)
                with torch.no_grad():
                    out[Candidate("heads", tau)][held.cpu().numpy()] = mixture_bt_loss(
                        deltas[held], candidate.router_log_weights(route[held])).cpu().numpy()
                bar.update()
    return out


def adds_wordings(model: "MixtureRewardModel", route: "torch.Tensor") -> bool:
    """Whether the budget brings a context the router has no prototype for, and the router has a
    plain prototype such a wording could correct: only then is ``wordings="corrections"`` a
    different candidate from ``"prototypes"``."""
    return bool((~model.router.corrections).any()) and len(unseen_contexts(model, route)[1]) > 0


def choose_candidate(per_pair_nll: dict[Any, np.ndarray], config: AdaptConfig,
                     clusters: Optional[Sequence[Any]] = None) -> Any:
    """The candidate with the lowest mean cross-validated NLL. For ``safe``, an adapted router
    replaces ``"keep"`` only when its NLL is lower by more than ``keep_margin`` standard errors of
    the paired difference and it classifies at least as many held-out pairs correctly (p > 0.5 ⇔
    NLL < log 2): a better-calibrated router that ranks fewer pairs right is not an improvement
    to a user. The standard error is clustered by what a fold holds out (``clusters``: the
    prompt, or the wording, of each pair): pairs of one wording succeed or fail together, so
    counting them as independent overstates the evidence of a few wordings.

    >>> choose_candidate({"keep": np.array([0.6, 0.6]), Candidate("heads", 1.0): np.array([0.5, 0.7])},
    ...                  AdaptConfig())
    'keep'
    """
    taus = [c for c in per_pair_nll if c != KEEP]
    best = min(taus, key=lambda t: per_pair_nll[t].mean())
    if KEEP not in per_pair_nll:
        return best
    keep, adapted = per_pair_nll[KEEP], per_pair_nll[best]
    gain = keep - adapted                                               # > 0: adapting helps
    standard_error = clustered_standard_error(gain, np.arange(len(gain)) if clusters is None else clusters)
    correct_gain = int((adapted < math.log(2)).sum()) - int((keep < math.log(2)).sum())
    return best if gain.mean() > config.keep_margin * standard_error and correct_gain >= 0 else KEEP


def clustered_standard_error(values: np.ndarray, clusters: Sequence[Any]) -> float:
    """Standard error of ``values.mean()`` when rows of one cluster are not independent (the
    cluster-robust sandwich estimate with the G / (G − 1) small-sample factor); one row per
    cluster gives the usual s / √n. Infinite with fewer than two clusters.

    >>> round(clustered_standard_error(np.array([1.0, 2.0, 3.0, 4.0]), [0, 1, 2, 3]), 4)
    0.6455
    >>> round(clustered_standard_error(np.array([1.0, 1.0, 4.0, 4.0]), ["a", "a", "b", "b"]), 4)
    1.5
    """
    _, group = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    count = int(group.max()) + 1 if len(group) else 0
    if count < 2:
        return math.inf
    sums = np.bincount(group, weights=values - values.mean(), minlength=count)
    return math.sqrt(count / (count - 1) * (sums ** 2).sum()) / len(values)


def _plain(per_pair_nll: Optional[dict[Any, np.ndarray]]) -> Optional[dict[str, float]]:
    """{candidate: mean NLL} for reports and config.json ("keep", "0.001", "contexts 0.1", …)."""
    if per_pair_nll is None:
        return None
    return {candidate_name(c): float(v.mean()) for c, v in per_pair_nll.items()}


def candidate_name(candidate: Any) -> str:
    """How a candidate is written: "keep", or its τ after the kinds that are not the first
    (heads update, new wordings as prototypes): "0.001", "contexts 0.1", "corrections 0.01",
    "contexts corrections 1".

    >>> candidate_name(KEEP), candidate_name(Candidate("heads", 1e-3)), candidate_name(Candidate("contexts", 0.1))
    ('keep', '0.001', 'contexts 0.1')
    >>> candidate_name(Candidate("heads", 0.01, "corrections"))
    'corrections 0.01'
    """
    if candidate == KEEP:
        return KEEP
    kinds = [k for k, first in ((candidate.update, "heads"), (candidate.wordings, "prototypes")) if k != first]
    return " ".join([*kinds, f"{candidate.tau:g}"])


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


def cv_folds(model: "MixtureRewardModel", route: "torch.Tensor", prompts: Sequence[str],
             attributes: Optional[Sequence[Optional[str]]], config: AdaptConfig) -> tuple[np.ndarray, list[str]]:
    """The fold of each budget row and the cluster it is held out with: its prompt, or its
    wording where :func:`phrasing_folds` applies (``config.heldout``)."""
    fold, clusters = prompt_folds(prompts, config.folds, config.seed), [f"prompt {p}" for p in prompts]
    width = model.config.context_dim
    if config.heldout == "phrasing" and width and attributes:
        varied, wording = varied_wordings(attributes, route[:, -width:])
        fold = phrasing_folds(fold, attributes, varied, wording, config.folds)
        clusters = [f"wording {w}" if v else c for c, v, w in zip(clusters, varied, wording)]
    return fold, clusters


def varied_wordings(attributes: Sequence[Optional[str]], contexts: "torch.Tensor") -> tuple[np.ndarray, np.ndarray]:
    """Which rows belong to an attribute whose rows carry several distinct contexts (bool [N]),
    and each row's wording (an id of its context vector, [N])."""
    import torch

    present = (contexts.norm(dim=-1) > 0).cpu().numpy()
    wording = torch.unique(contexts, dim=0, return_inverse=True)[1].cpu().numpy()
    varied = np.zeros(len(wording), dtype=bool)
    for attribute in dict.fromkeys(a for a, p in zip(attributes, present) if a is not None and p):
        rows = np.flatnonzero([a == attribute and p for a, p in zip(attributes, present)])
        varied[rows] = len(set(wording[rows])) > 1
    return varied, wording


def phrasing_folds(fold: np.ndarray, attributes: Sequence[Optional[str]], varied: np.ndarray,
                   wording: np.ndarray, folds: int) -> np.ndarray:
    """``fold`` (by prompt) with each attribute whose pairs carry several distinct contexts moved
    to folds by context (``varied`` and ``wording`` from :func:`varied_wordings`): its wordings
    take turns over the folds, so a held-out wording always has a sibling wording of the same
    preference among the fitted ones. That is the case a user meets who says the same thing in
    words no prototype holds. Rows without an attribute or a context keep their prompt fold.

    >>> phrasing_folds(np.array([0, 1, 2, 0]), ["a", "a", "a", None],
    ...                np.array([True, True, True, False]), np.array([1, 2, 1, 0]), folds=5).tolist()
    [0, 1, 0, 0]
    """
    fold = fold.copy()
    for attribute in dict.fromkeys(a for a, v in zip(attributes, varied) if v):
        rows = np.flatnonzero([a == attribute and v for a, v in zip(attributes, varied)])
        offset = int(hashlib.sha256(str(attribute).encode()).hexdigest()[:8], 16)
        turn = {w: (offset + i) % folds for i, w in enumerate(dict.fromkeys(wording[rows]))}
        fold[rows] = [turn[w] for w in wording[rows]]
    return fold


def mixture_nll(model: "MixtureRewardModel", route: "torch.Tensor", deltas: "torch.Tensor") -> float:
    """Mean mixture NLL −log Σ_k f_ψ,k σ(Δ_k) of pairs with frozen head ``deltas`` [N, K]."""
    import torch

    from micro_rm.model.losses import mixture_bt_loss

    with torch.no_grad():
        return mixture_bt_loss(deltas, model.router_log_weights(route)).mean().item()
