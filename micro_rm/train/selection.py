"""Stage 2's model selection: the candidate routers, how each is fitted, and the choice between
them and "keep the stage-1 router" by cross-validation on the budget pairs (METHOD.md, measured
finding 2: a stage 2 that cannot keep stage 1 removes information at small budgets).

>>> per_pair_nll = cross_validate(model, route, deltas, fold, tau="auto", seed=0)   # doctest: +SKIP
>>> choose_candidate(per_pair_nll, clusters)                                       # doctest: +SKIP
'keep'
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence

import numpy as np
import torch

from micro_rm.errors import MicroRMError
from micro_rm.model.losses import bt_loss, mixture_bt_loss
from micro_rm.model.router import context_branch_logits
from micro_rm.progress import progress_bar
from micro_rm.train.algorithm1 import hedge_targets
from micro_rm.train.stage1 import context_prototypes

if TYPE_CHECKING:
    from micro_rm.model.mixture import MixtureRewardModel

KEEP = "keep"   # the candidate that leaves the stage-1 router as it is
TAU_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)   # τ of the candidates for tau="auto"
EPOCHS = 10               # Hedge steps of a joint-layout router, the targets recomputed before each
DISTIL_ITERATIONS = 20    # L-BFGS iterations that distil one step's targets into a joint-layout router
PAIRS_PER_PROTOTYPE = 10  # a cluster of rare contexts gets one prototype per this many pairs
MIN_PAIRS_PER_CONTEXT = 3  # a context with at least this many budget pairs is a prototype of its own


class Candidate(NamedTuple):
    """An adapted router that stage 2 may choose: what it re-weights (``update``: heads or
    contexts), at which τ, and how the budget's new wordings join the router (``wordings``:
    prototypes or corrections; see :class:`~micro_rm.model.router.ContextRouter`)."""

    update: str
    tau: float
    wordings: str = "prototypes"


def candidate_name(candidate: Any) -> str:
    """How a candidate is written: "keep", or its τ after its kinds other than the defaults
    (heads update, new wordings as prototypes).

    >>> candidate_name(KEEP), candidate_name(Candidate("heads", 1e-3)), candidate_name(Candidate("contexts", 0.1))
    ('keep', '0.001', 'contexts 0.1')
    >>> candidate_name(Candidate("heads", 0.01, "corrections"))
    'corrections 0.01'
    """
    if candidate == KEEP:
        return KEEP
    kinds = [k for k, first in ((candidate.update, "heads"), (candidate.wordings, "prototypes")) if k != first]
    return " ".join([*kinds, f"{candidate.tau:g}"])


@torch.no_grad()
def mixture_nll(model: "MixtureRewardModel", route: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Mixture NLL −log Σ_k f_ψ,k σ(Δ_k) of each pair with frozen head ``deltas`` [N, K]: [N]."""
    return mixture_bt_loss(deltas, model.router_log_weights(route))


# ----- cross-validation -----------------------------------------------------------------------
def cross_validate(model: "MixtureRewardModel", route: torch.Tensor, deltas: torch.Tensor, fold: np.ndarray,
                   tau: float | str, seed: int, *, progress: bool = False) -> dict[Any, np.ndarray]:
    """{candidate: mixture NLL of each budget pair when its ``fold`` was held out} [N], over the
    τ of :data:`TAU_GRID` (or ``tau`` when it is a number), on a separate layout each kind of
    update and of new wordings, and, last, ``"keep"`` (the stage-1 router's NLL)."""
    taus = TAU_GRID if tau == "auto" else (tau,)
    separate = bool(model.config.context_dim)
    known = len(model.router.prototypes) if separate else 0
    updates = ["heads", "contexts"] if known else ["heads"]
    wordings = ["prototypes", "corrections"] if separate and adds_wordings(model, route) else ["prototypes"]
    out: dict[Any, np.ndarray] = {Candidate(u, t, w): np.zeros(len(route))
                                  for w in wordings for u in updates for t in taus}
    with progress_bar(total=len(out) * len(np.unique(fold)), desc="stage 2: cross-validation",
                      unit="fit", enabled=progress, leave=False) as bar:
        for f in np.unique(fold):
            rows_held = fold == f
            held = torch.from_numpy(rows_held).to(route.device)
            fit_route, fit_deltas = route[~held], deltas[~held]
            held_route, held_deltas = route[held], deltas[held]
            if not separate:
                for t in taus:
                    fitted = copy.deepcopy(model)
                    fit_candidate(fitted, fit_route, fit_deltas, Candidate("heads", t), seed, history=False)
                    out[Candidate("heads", t)][rows_held] = mixture_nll(fitted, held_route, held_deltas).cpu().numpy()
                    bar.update()
                continue
            for kind in wordings:                                          # every τ in one fit
                candidate = copy.deepcopy(model)
                rows = budget_prototypes(candidate, fit_route, seed, corrections=kind == "corrections")
                inputs = candidate.context_branch_inputs(held_route)
                for update in updates:
                    logits, null_logits = context_step(candidate, fit_route, fit_deltas, update, taus, rows, known)
                    with torch.no_grad():
                        log_f = torch.log_softmax(context_branch_logits(inputs, logits, null_logits), dim=-1)
                    for t, lf in zip(taus, log_f):
                        out[Candidate(update, t, kind)][rows_held] = mixture_bt_loss(held_deltas, lf).cpu().numpy()
                    bar.update(len(taus))
    out[KEEP] = mixture_nll(model, route, deltas).cpu().numpy()
    return out


def adds_wordings(model: "MixtureRewardModel", route: torch.Tensor) -> bool:
    """Whether the budget brings a context the router has no prototype for, and the router has a
    plain prototype such a wording could correct: only then are new wordings as corrections
    different candidates from new wordings as prototypes."""
    return bool((~model.router.corrections).any()) and len(model.router.unseen_contexts(route)[1]) > 0


def choose_candidate(per_pair_nll: dict[Any, np.ndarray], clusters: Sequence[Any]) -> Any:
    """The candidate with the lowest mean cross-validated NLL if it beats keeping the stage-1
    router by more than one standard error of the paired difference and ranks at least as many
    held-out pairs right (p > 0.5 ⇔ NLL < log 2; better calibration that ranks fewer pairs right
    does not help a user); else ``"keep"``. The standard error is clustered by what a fold holds
    out (``clusters``: each pair's prompt or wording), as pairs of one wording fail together.

    >>> choose_candidate({"keep": np.array([0.6, 0.6]), Candidate("heads", 1.0): np.array([0.5, 0.7])}, [0, 1])
    'keep'
    """
    best = min((c for c in per_pair_nll if c != KEEP), key=lambda c: per_pair_nll[c].mean())
    keep, adapted = per_pair_nll[KEEP], per_pair_nll[best]
    gain = keep - adapted                                               # > 0: adapting helps
    correct_gain = int((adapted < math.log(2)).sum()) - int((keep < math.log(2)).sum())
    return best if gain.mean() > clustered_standard_error(gain, clusters) and correct_gain >= 0 else KEEP


def clustered_standard_error(values: np.ndarray, clusters: Sequence[Any]) -> float:
    """Cluster-robust (sandwich, G / (G − 1) factor) standard error of ``values.mean()``; one row
    per cluster gives the usual s / √n. Infinite with fewer than two clusters.

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


# ----- the folds ------------------------------------------------------------------------------
def cv_folds(model: "MixtureRewardModel", route: torch.Tensor, prompts: Sequence[str],
             attributes: Optional[Sequence[Optional[str]]], folds: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The fold of each budget row and the cluster it is held out with: its prompt, or its
    wording where an attribute's rows carry several (:func:`phrasing_folds`, separate layouts)."""
    fold, clusters = prompt_folds(prompts, folds, seed), [f"prompt {p}" for p in prompts]
    width = model.config.context_dim
    if width and attributes:
        varied, wording = varied_wordings(attributes, route[:, -width:])
        fold = phrasing_folds(fold, attributes, varied, wording, folds)
        clusters = [f"wording {w}" if v else c for c, v, w in zip(clusters, varied, wording)]
    return fold, clusters


def prompt_folds(prompts: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold number of each row; all rows of one prompt share a fold (so held-out prompts are
    new). Fewer distinct prompts than ``folds`` gives one fold per prompt."""
    distinct = list(dict.fromkeys(prompts))
    if len(distinct) < 2:
        raise MicroRMError(f"stage 2 cross-validates over prompts and needs pairs of at least 2 "
                           f"distinct prompts, got {len(distinct)}")
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of = {distinct[i]: rank % min(folds, len(distinct)) for rank, i in enumerate(order)}
    return np.array([fold_of[p] for p in prompts])


def varied_wordings(attributes: Sequence[Optional[str]], contexts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Which rows belong to an attribute whose rows carry several distinct contexts (bool [N]),
    and each row's wording (an id of its context vector, [N])."""
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
    to folds by context (``varied``, ``wording``: :func:`varied_wordings`), its wordings taking
    turns, so a held-out wording has a sibling of the same preference among the fitted ones (a
    user who says it in words no prototype holds). Other rows keep their prompt fold.

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


# ----- fitting a candidate --------------------------------------------------------------------
def fit_candidate(model: "MixtureRewardModel", route: torch.Tensor, deltas: torch.Tensor, candidate: Candidate,
                  seed: int, *, progress: bool = False, history: bool = True) -> list[dict[str, float]]:
    """Adapt ``model``'s router in place to ``candidate`` on ``route`` [N, d_r] and the frozen
    head ``deltas`` [N, K]: on the separate layout, the budget's contexts join the router and the
    context branch takes one Hedge step; a joint-layout router takes ``EPOCHS`` mirror-descent
    steps (:func:`distil`). Returns one row per step (epoch, ce, nll, seconds; nll is NaN without
    ``history``, ce without a distillation)."""
    update, tau, wordings = candidate
    if model.config.context_dim:
        known = len(model.router.prototypes)
        spoken_for = budget_prototypes(model, route, seed, corrections=wordings == "corrections")
        start = time.perf_counter()
        logits, null_logits = context_step(model, route, deltas, update if known else "heads", [tau], spoken_for, known)
        model.router.set_context_logits(logits[0], null_logits[0])
        nll = mixture_nll(model, route, deltas).mean().item() if history else math.nan
        return [{"epoch": 1, "ce": math.nan, "nll": nll, "seconds": time.perf_counter() - start}]
    losses = bt_loss(deltas)                                             # L_ik = −log σ(Δ_ik), [N, K]
    rows, start = [], time.perf_counter()
    model.train()
    for epoch in progress_bar(range(1, EPOCHS + 1), desc=f"stage 2 (τ={tau:g})", unit="epoch", enabled=progress,
                      leave=False):
        with torch.no_grad():                                            # ω_i, held for the step
            targets = hedge_targets(model.router_log_weights(route), losses, tau)        # [N, K]
        ce = distil(model, route, targets)
        nll = mixture_nll(model, route, deltas).mean().item() if history else math.nan
        rows.append({"epoch": epoch, "ce": ce, "nll": nll, "seconds": time.perf_counter() - start})
    model.eval()
    return rows


def distil(model: "MixtureRewardModel", route: torch.Tensor, targets: torch.Tensor) -> float:
    """One exact mirror-descent step on a joint-layout router (which trains whole): fit the router
    to the targets ω [N, K], full batch, with L-BFGS (at most ``DISTIL_ITERATIONS``); returns
    the cross-entropy CE(ω, f_ψ)."""
    optimizer = torch.optim.LBFGS(list(model.router.parameters()), lr=1.0, max_iter=DISTIL_ITERATIONS,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        ce = -(targets * model.router_log_weights(route)).sum(-1).mean()                # CE(ω, f_ψ)
        ce.backward()
        return ce

    return float(optimizer.step(closure).detach())


def budget_prototypes(model: "MixtureRewardModel", route: torch.Tensor, seed: int,
                      corrections: bool = False) -> torch.Tensor:
    """Make the budget's contexts prototypes (or ``corrections``) of the router; return which
    prototypes the budget speaks for (bool [M]): those equal to a budget context, and the new ones.
    A new phrasing gets its own prototype, so re-training it moves no user of its nearest training
    phrasing. Rare contexts (e.g. one persona per pair) become k-means centres, one per
    ``PAIRS_PER_PROTOTYPE`` pairs, so that no prototype memorises one pair's label."""
    router = model.router
    known = len(router.prototypes)
    matched, new = router.unseen_contexts(route)
    if len(new):
        distinct, inverse, counts = torch.unique(new, dim=0, return_inverse=True, return_counts=True)
        frequent = distinct[counts >= MIN_PAIRS_PER_CONTEXT]
        rare = new[(counts < MIN_PAIRS_PER_CONTEXT)[inverse]]
        if len(rare):                                    # e.g. one persona per pair: cluster them
            centres = context_prototypes(rare.detach().cpu().numpy(), model.config.context_dim,
                                         max(1, len(rare) // PAIRS_PER_PROTOTYPE), seed)
            frequent = torch.cat([frequent, torch.from_numpy(centres).to(route.device)])
        router.add_prototypes(frequent, model.config, corrections=corrections)
    added = torch.ones(len(router.prototypes) - known, dtype=torch.bool, device=route.device)
    return torch.cat([matched, added])


@torch.no_grad()
def context_step(model: "MixtureRewardModel", route: torch.Tensor, deltas: torch.Tensor, update: str,
                 taus: Sequence[float], rows: torch.Tensor, known: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The context branch's logits after the ``update`` step of a separate-layout router, for C
    values of τ: prototype logits [C, M, K] (:func:`hedge_context_branch` or, for ``contexts``,
    :func:`known_routing_logits` on the prototypes past ``known``) and no-context logits [C, K]."""
    if update != "contexts":
        return hedge_context_branch(model, route, deltas, taus, rows)
    logits = model.router.prototype_logits.detach().expand(len(taus), -1, -1).clone()
    logits[:, known:] = known_routing_logits(model, route, deltas, known, taus)
    return logits, model.router.null_logits.detach().expand(len(taus), -1)


@torch.no_grad()
def hedge_context_branch(model: "MixtureRewardModel", route: torch.Tensor, deltas: torch.Tensor,
                         taus: Sequence[float], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads update on a separate-layout router, for C values of τ at once: one Hedge step for
    each context the budget speaks for (``rows``, bool [M]), on the mean loss of its pairs,

        a_m ← a_m − L̄_m / τ,   L̄_mk = Σ_i w_im L_ik / Σ_i w_im,   L_ik = −log σ(Δ_ik),

    w_im the attention pair i's context gives prototype m; "no context" takes the same step on the
    pairs without one (why not Eq. 5 per pair: docs/personalization.md §4). Returns the prototype
    logits [C, M, K] and no-context logits [C, K]."""
    router, c = model.router, len(taus)
    _, attention, has_context = model.context_branch_inputs(route)
    losses = bt_loss(deltas)                                             # L_ik = −log σ(Δ_ik), [N, K]
    step = 1 / torch.tensor(list(taus), dtype=route.dtype, device=route.device).view(c, 1, 1)
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


@torch.no_grad()
def known_routing_logits(model: "MixtureRewardModel", route: torch.Tensor, deltas: torch.Tensor,
                         known: int, taus: Sequence[float]) -> torch.Tensor:
    """The contexts update: the logits of the budget's new prototypes (rows ``known:``) as Hedge
    over the routings of the ``known`` prototypes stage 1 trained, for C values of τ at once:
    [C, M − known, K].

        β_nm ∝ att_m(u_n) · exp(−Σ_i w_in L_i(m) / τ),   a_n = Σ_m β_nm a_m

    att(u_n) the stage-1 attention of new wording u_n over the known prototypes, L_i(m) the mixture
    NLL of pair i routed as prototype m, w_in the weight pair i's context gives u_n (why:
    docs/personalization.md §4). A correction gets a_n minus its routing without one; known
    corrections are not routings and take no part."""
    router = model.router
    fixed, attention, has_context = model.context_branch_inputs(route)
    plain = ~router.corrections[:known]
    routings = router.prototype_logits[:known][plain]                                # [Mk, K]
    log_weights = torch.log_softmax(fixed[:, None, :] + routings[None], dim=-1)      # [N, Mk, K]
    losses = mixture_bt_loss(deltas[:, None, :].expand_as(log_weights), log_weights)  # [N, Mk]
    evidence = (attention[:, known:] * has_context).T @ losses                      # [Mn, Mk]
    prior = torch.log_softmax(router.prototypes[known:] @ router.prototypes[:known][plain].T
                              / router.temperature, dim=-1)                         # [Mn, Mk]
    tau = torch.tensor(list(taus), dtype=route.dtype, device=route.device).view(-1, 1, 1)
    logits = torch.softmax(prior - evidence / tau, dim=-1) @ routings               # [C, Mn, K]
    new = router.corrections[known:]
    if bool(new.any()):                 # corrections are still at δ = 0: h(u_n) is what they correct
        logits[:, new] -= router.context_logits(router.prototypes[known:][new])
    return logits
