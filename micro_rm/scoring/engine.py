"""The scoring engine: (texts, context, user state) → items → vectors → routed rewards.

    r(x, a) = Σ_k w_k r_k(x, a),   w = normalise( f_ψ(context ⊕ prompt) ⊙ exp(−η S_u) )

(S_u: the user's summed per-head losses; without a user, w is the router's). Every caller goes
through :class:`RewardScorer`: the service with vectors from its micro-batcher, everything
in-process (``micro-rm score``, the RLHF adapters, :class:`micro_rm.MiCRo`) through
:class:`RewardEngine`. So all of them return the same numbers.

>>> engine = RewardEngine("runs/dsp", context="I am a child.")                   # doctest: +SKIP
>>> engine.routed(["Hi"] * 2, ["Hello!", "Go away."]).rewards                     # doctest: +SKIP
array([ 0.83, -0.41])
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from micro_rm.data.records import Text
from micro_rm.errors import MicroRMError
from micro_rm.features.base import Backbone, Item
from micro_rm.online.hedge import DEFAULT_ETA, DEFAULT_P_MIN, hedge_log_weights, pair_losses, validate_eta
from micro_rm.scoring.limits import (RequestRefused, ScoringLimits, check_context, check_count, check_text,
                                     check_user, per_sample, split_system)


@dataclass
class Routed:
    """Rewards of N responses under per-response weights."""

    rewards: np.ndarray        # [N]    Σ_k w_k r_k
    head_rewards: np.ndarray   # [N, K] r_k
    weights: np.ndarray        # [N, K] w used (router prior ⊙ Hedge, normalised)
    prior: np.ndarray          # [N, K] the router's weights alone


@dataclass
class Samples:
    """N checked (prompt, response) samples with each one's context and user id.
    ``shared_route``: every sample has the same prompt and context, routed once (``/score``)."""

    prompts: list[Text]
    responses: list[Text]
    contexts: list[Optional[str]]
    users: list[Optional[str]]
    shared_route: bool = False


class RewardScorer:
    """A loaded model with its backbone: builds items the way the model was trained, and
    computes routed rewards, comparisons and feedback losses from vectors."""

    def __init__(self, model: Any, backbone: Backbone):
        from micro_rm.online.identity import state_model_id

        self.model = model
        self.backbone = backbone
        self.settings = model.config.feature_settings()   # how training built the model's items
        self.model_id = state_model_id(model)
        self.num_heads = model.config.num_heads

    @classmethod
    def load(cls, model_dir_or_model: Any, device: str = "cpu") -> "RewardScorer":
        """From a model folder (or hub id) or a :class:`MixtureRewardModel`; rebuilds its backbone."""
        from micro_rm.model.mixture import MixtureRewardModel
        from micro_rm.model.text import model_backbone

        model = model_dir_or_model
        if not isinstance(model, MixtureRewardModel):   # refuses NaN/Inf weights, naming the file
            model = MixtureRewardModel.from_pretrained(str(model_dir_or_model), device=device)
        return cls(model.eval(), model_backbone(model, device=device))

    # items --------------------------------------------------------------------------------
    def route_items(self, prompt: Text, context: Optional[str]) -> list[Item]:
        """The router's items of one prompt (see micro_rm.features.featurize.route_items);
        turn their vectors into route features with :meth:`route_features`."""
        from micro_rm.features.featurize import route_items

        return route_items(self.backbone, prompt, self._context(context),
                           context_encoding=self.model.config.context_encoding)

    def route_features(self, vectors: np.ndarray, contexts: Sequence[Optional[str]]) -> np.ndarray:
        """Route features [N, d_r] from the vectors of N prompts' :meth:`route_items`."""
        from micro_rm.features.featurize import route_matrix

        return route_matrix(vectors, [self._context(c) for c in contexts], self.model.config.context_dim,
                            self.model.config.context_encoding)

    def _context(self, context: Optional[str]) -> Optional[str]:
        return context if self.settings.router_input == "context" else None

    def items(self, samples: Samples) -> list[Item]:
        """Every item ``samples`` need: the N reward items, then the route items (of the first
        sample only, with ``shared_route``). Their vectors go to :meth:`score`."""
        contexts = samples.contexts if self.settings.context_in_reward else [None] * len(samples.contexts)
        reward = [self.backbone.reward_item(p, r, c) for p, r, c in zip(samples.prompts, samples.responses, contexts)]
        routes = range(1 if samples.shared_route else len(reward))
        return reward + [item for i in routes for item in self.route_items(samples.prompts[i], samples.contexts[i])]

    def pair_items(self, records: Sequence[dict[str, Any]]) -> list[Item]:
        """The items of pair records (``POST /feedback``, candidate pools) as training made them
        (:func:`~micro_rm.features.featurize.record_items`): N chosen, N rejected, then route items."""
        from micro_rm.features.featurize import record_items

        return record_items(records, self.backbone, **asdict(self.settings))

    def score(self, samples: Samples, vectors: np.ndarray, cumulative_loss: Optional[np.ndarray] = None,
              eta: float = DEFAULT_ETA) -> Routed:
        """:meth:`routed` rewards of ``samples`` from the vectors of their :meth:`items`."""
        n = len(samples.responses)
        contexts = samples.contexts[:1] if samples.shared_route else samples.contexts
        return self.routed(vectors[:n], self.route_features(vectors[n:], contexts), cumulative_loss, eta)

    # math on vectors -----------------------------------------------------------------------
    def routed(self, reward_vectors: np.ndarray, route_vectors: np.ndarray,
               cumulative_loss: Optional[np.ndarray] = None, eta: float = DEFAULT_ETA) -> Routed:
        """Rewards of N responses: ``reward_vectors`` [N, d], ``route_vectors`` [N, d_r] (or
        [1, d_r], shared), ``cumulative_loss`` None (router only), [K] or [N, K] (each row's user)."""
        import torch

        head_rewards = self.model.rewards(reward_vectors).astype(np.float64)              # [N, K]
        with torch.inference_mode():
            route = torch.as_tensor(np.asarray(route_vectors, dtype=np.float32),
                                    device=self.model.heads.weight.device)
            log_prior = self.model.router_log_weights(route).double().cpu().numpy()         # [B, K]
        log_prior = np.broadcast_to(log_prior, head_rewards.shape)
        log_w = log_prior if cumulative_loss is None else hedge_log_weights(log_prior, cumulative_loss, eta)
        weights = np.exp(log_w)
        rewards = (weights * head_rewards).sum(-1)
        bad = np.flatnonzero(~np.isfinite(rewards))
        if bad.size:   # a reward is a number or the request is refused, never NaN in an answer
            raise RequestRefused(f"the model gave no finite reward for sample(s) {bad[:5].tolist()} (NaN/Inf in "
                                 "their features, weights or the user's state); nothing was scored")
        return Routed(rewards=rewards, head_rewards=head_rewards, weights=weights, prior=np.exp(log_prior))

    def head_probs(self, a_vectors: np.ndarray, b_vectors: np.ndarray) -> np.ndarray:
        """σ(r_k(a) − r_k(b)) per pair and head: [N, K] float64."""
        return self.model.head_probs(a_vectors, b_vectors).astype(np.float64)

    def feedback_losses(self, chosen_vectors: np.ndarray, rejected_vectors: np.ndarray,
                        p_min: float = DEFAULT_P_MIN) -> np.ndarray:
        """Each head's scaled loss on pairs labelled chosen ≻ rejected: [N, K] in [0, 1]."""
        return pair_losses(self.head_probs(chosen_vectors, rejected_vectors), p_min)


def one_prompt(prompt: Any, responses: Sequence[Any], context: Any, limits: ScoringLimits,
               names: Optional[Sequence[str]] = None) -> Samples:
    """The checked samples of one prompt's responses, routed once (``/score``, ``/compare``, a
    ``micro-rm score`` record): 413/422 naming the field; ``names`` (default ``responses[i]``)
    name the responses."""
    n = check_count(len(responses), limits)
    prompt = check_text(prompt, "prompt", limits)
    names = names or [f"responses[{i}]" for i in range(n)]
    responses = [check_text(r, name, limits) for r, name in zip(responses, names)]
    context = check_context(context, "context", limits)
    return Samples([prompt] * n, responses, [context] * n, [None] * n, shared_route=True)


def user_losses(store: Any, users: Sequence[Optional[str]], num_heads: int) -> Optional[np.ndarray]:
    """S_u of each sample's user [N, K] from the state ``store`` (a user without feedback, or a
    sample without a user, has S = 0: the router's weights), or None when no sample names a user."""
    if not any(users):
        return None
    states = {u: store.get(u, True).cumulative_loss for u in sorted({u for u in users if u})}
    zero = np.zeros(num_heads)
    return np.stack([states[u] if u else zero for u in users])


class RewardEngine:
    """Routed MiCRo rewards of (prompt, completion) batches in this process, for the CLI and the
    RLHF adapters: each call is checked against ``limits``, then encoded through the feature
    caches and scored by :class:`RewardScorer`.

    Parameters
    ----------
    model_dir_or_model : a model folder (or hub id), a loaded ``MixtureRewardModel`` or a
        :class:`RewardScorer`; the backbone is rebuilt from the model's config.
    context : a context for samples that bring none.
    eta : Hedge learning rate for users' weights (see :mod:`micro_rm.online.hedge`).
    state : the per-user state store (a URL/path like the service's ``--state``, or an open
        store); needed only for samples with a user. Read-only here.
    cache_dir : feature cache folder (default: $MICRO_RM_CACHE or the user cache dir);
        ``disk_cache=False`` keeps vectors in memory only.
    limits : the :class:`~micro_rm.scoring.limits.ScoringLimits` of each call.
    """

    def __init__(self, model_dir_or_model: Any, context: Optional[str] = None, eta: float = DEFAULT_ETA,
                 state: Any = None, *, cache_dir: Optional[str | os.PathLike] = None, disk_cache: bool = True,
                 device: str = "cpu", limits: Optional[ScoringLimits] = None):
        from micro_rm.features.cache import FeatureCache
        from micro_rm.scoring.features import FeatureStore

        self.scorer = model_dir_or_model if isinstance(model_dir_or_model, RewardScorer) \
            else RewardScorer.load(model_dir_or_model, device=device)
        self.context = context or None
        self.eta = validate_eta(eta)
        self.limits = limits or ScoringLimits()
        self._state_arg = state
        if isinstance(state, (str, os.PathLike)):
            from micro_rm.online import open_store
            state = open_store(state, self.scorer.model_id, self.scorer.num_heads)
        self.store = state
        self._options = dict(cache_dir=cache_dir, disk_cache=disk_cache, device=device, limits=limits)
        self.features = FeatureStore(self.scorer.backbone, FeatureCache(cache_dir) if disk_cache else None)

    def routed(self, prompts: Sequence[Any], completions: Sequence[Any],
               contexts: Optional[Sequence[Optional[str]]] = None,
               users: Optional[Sequence[Optional[str]]] = None) -> Routed:
        """Rewards, per-head rewards and weights of each (prompt, completion), routed by its
        context (None: the system message, then the default context) and weighted by its user's
        state (None: the router alone). Every field is checked first (``RequestRefused``)."""
        n, limits = len(completions), self.limits
        check_count(n, limits, "max_batch")
        if len(prompts) != n:
            raise MicroRMError(f"got {len(prompts)} prompts and {n} completions; give one prompt per completion")
        prompts = [check_text(p, f"prompts[{i}]", limits) for i, p in enumerate(prompts)]
        completions = [check_text(c, f"completions[{i}]", limits) for i, c in enumerate(completions)]
        contexts = [check_context(c, f"contexts[{i}]", limits)
                    for i, c in enumerate(per_sample(contexts, n, "contexts", "completions"))]
        users = [check_user(u, f"user_ids[{i}]")
                 for i, u in enumerate(per_sample(users, n, "user_ids", "completions"))]
        for i, prompt in enumerate(prompts):   # a leading system message is the context of a sample with none
            if contexts[i] is None:
                prompts[i], contexts[i] = split_system(prompt)
        samples = Samples(prompts, completions, [c or self.context for c in contexts], users)
        if any(users) and self.store is None:
            raise MicroRMError("a sample with a user id needs the per-user state: pass "
                               "state='sqlite:///state.db' (the service's --state)")
        losses = user_losses(self.store, users, self.scorer.num_heads)
        return self.scorer.score(samples, self.features.vectors(self.scorer.items(samples)), losses, self.eta)
