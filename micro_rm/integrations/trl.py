"""A MiCRo model as a TRL reward function, and best-of-n selection.

``MicroRMRewardFunction`` has the signature TRL's ``GRPOTrainer`` expects of ``reward_funcs``:
``(prompts, completions, **kwargs) -> list[float]``. Prompts and completions are strings or,
for conversational datasets, lists of chat messages. Dataset columns arrive as keyword
arguments: a ``context`` column routes each sample by its own context, a ``user_id`` column
scores each sample with that user's adapted weights (needs ``state``). It returns the same
numbers as the service's ``/score`` (both call :meth:`RewardScorer.routed`). TRL itself is not
imported here.

>>> reward = MicroRMRewardFunction("runs/dsp", context="I am a researcher.")   # doctest: +SKIP
>>> trainer = GRPOTrainer(model="Qwen/Qwen2-0.5B-Instruct", reward_funcs=reward, ...)  # doctest: +SKIP
>>> best_of_n("Explain entropy.", candidates, reward).text                    # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from micro_rm.data.records import Text
from micro_rm.errors import MicroRMError
from micro_rm.online.hedge import DEFAULT_ETA, validate_eta


class MicroRMRewardFunction:
    """Routed MiCRo rewards for batches of (prompt, completion).

    Parameters
    ----------
    model_dir_or_model : a model folder (or hub id) or a loaded ``MixtureRewardModel``; its
        backbone is rebuilt from its config.
    context : a fixed context for every sample (a ``context`` column overrides it per sample).
    eta : Hedge learning rate for users' weights (see :mod:`micro_rm.online.hedge`).
    state : the per-user state store (a URL/path like the service's ``--state``, or an open
        store); needed only for a ``user_id`` column. Read-only here.
    cache_dir : feature cache folder (default: $MICRO_RM_CACHE or the user cache dir); None and
        ``disk_cache=False`` keeps vectors in memory only.
    """

    def __init__(self, model_dir_or_model: Any, context: Optional[str] = None, eta: float = DEFAULT_ETA,
                 state: Any = None, *, cache_dir: Optional[str | os.PathLike] = None,
                 disk_cache: bool = True, device: str = "cpu", batch_size: int = 32,
                 lru_items: int = 100_000):
        from micro_rm.features.cache import FeatureCache
        from micro_rm.serve.scoring import FeatureStore, RewardScorer

        self.scorer = model_dir_or_model if isinstance(model_dir_or_model, RewardScorer) \
            else RewardScorer.load(model_dir_or_model, device=device)
        self.context = context or None
        self.eta = validate_eta(eta)
        if state is not None and isinstance(state, (str, os.PathLike)):
            from micro_rm.online import open_store
            state = open_store(state, self.scorer.model_id, self.scorer.num_heads)
        self.store = state
        self.features = FeatureStore(self.scorer.backbone, FeatureCache(cache_dir) if disk_cache else None,
                                     lru_items=lru_items, batch_size=batch_size)
        self.__name__ = "micro_rm"  # TRL logs each reward function under its __name__

    def __call__(self, prompts: Sequence[Text], completions: Sequence[Text], **kwargs: Any) -> list[float]:
        n = len(completions)
        if len(prompts) != n:
            raise MicroRMError(f"got {len(prompts)} prompts and {n} completions; give one prompt per completion")
        contexts = _column(kwargs.get("context"), n, "context", self.context)
        users = _column(kwargs.get("user_id"), n, "user_id", None)
        losses = None
        if any(u is not None for u in users):
            if self.store is None:
                raise MicroRMError("a `user_id` column needs the per-user state: pass "
                                   "state='sqlite:///state.db' (the service's --state)")
            states = {u: self.store.get(u, missing_ok=True).cumulative_loss for u in set(users) if u is not None}
            zero = np.zeros(self.scorer.num_heads)
            # A sample without a user routes with the router alone: S = 0 leaves the prior unchanged.
            losses = np.stack([states[u] if u is not None else zero for u in users])
        reward_items = [self.scorer.reward_item(p, c, x) for p, c, x in zip(prompts, completions, contexts)]
        route_items = [self.scorer.route_item(p, x) for p, x in zip(prompts, contexts)]
        vectors = self.features.vectors(reward_items + route_items)
        return self.scorer.routed(vectors[:n], vectors[n:], losses, self.eta).rewards.tolist()


def _column(values: Any, n: int, name: str, default: Any) -> list[Any]:
    if values is None:
        return [default] * n
    if isinstance(values, str):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise MicroRMError(f"the `{name}` column has {len(values)} values for {n} completions")
    return [v if v not in ("", None) else default for v in values]


@dataclass
class BestOfN:
    """The chosen candidate of :func:`best_of_n`."""

    index: int              # position of the best candidate
    text: Text              # the best candidate
    rewards: list[float]    # reward of every candidate, in input order


def best_of_n(prompt: Text, candidates: Sequence[Text], reward: Any, *, context: Optional[str] = None,
              user_id: Optional[str] = None) -> BestOfN:
    """Pick the candidate with the highest routed reward (ties: the first).

    ``reward`` is a :class:`MicroRMRewardFunction`, a model folder or a loaded model.

    >>> best_of_n("How do I sort a list?", ["sorted(xs)", "You can't."], "runs/dsp").index  # doctest: +SKIP
    0
    """
    if not candidates:
        raise MicroRMError("best_of_n needs at least one candidate")
    if not isinstance(reward, MicroRMRewardFunction):
        reward = MicroRMRewardFunction(reward)
    kwargs: dict[str, Any] = {}
    if context is not None:
        kwargs["context"] = [context] * len(candidates)
    if user_id is not None:
        kwargs["user_id"] = [user_id] * len(candidates)
    rewards = reward([prompt] * len(candidates), list(candidates), **kwargs)
    index = int(np.argmax(rewards))
    return BestOfN(index=index, text=candidates[index], rewards=rewards)
