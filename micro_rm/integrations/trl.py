"""A MiCRo model as a TRL reward function (``GRPOTrainer(reward_funcs=...)``), and best-of-n.

Dataset columns arrive as keyword arguments: ``context`` routes each sample, ``user_id`` scores it
with that user's online weights (needs ``state``). The rewards are the service's ``/score`` (both
go through :mod:`micro_rm.scoring`). TRL itself is not imported here (README, "TRL").

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
from micro_rm.online.hedge import DEFAULT_ETA
from micro_rm.scoring.engine import RewardEngine


class MicroRMRewardFunction(RewardEngine):
    """Routed MiCRo rewards for batches of (prompt, completion), with TRL's calling convention.

    Parameters are those of :class:`~micro_rm.scoring.engine.RewardEngine`, plus ``name``: the
    key TRL logs the rewards under (``rewards/<name>``); give two instances different names.

    It pickles (TRL's async GRPO sends it to a rollout process): the model travels, the backbone
    and the stores are rebuilt there, so ``state`` must be a URL or path, not an open store.
    """

    def __init__(self, model_dir_or_model: Any, context: Optional[str] = None, eta: float = DEFAULT_ETA,
                 state: Any = None, *, name: str = "micro_rm", **options: Any):
        if not isinstance(name, str) or not name:
            raise MicroRMError(f"name must be a non-empty string (TRL logs rewards/<name>), got {name!r}")
        super().__init__(model_dir_or_model, context, eta, state, **options)
        self.__name__ = name  # TRL logs each reward function under its __name__

    # pickling: locks, the backbone and database connections stay behind; the model travels.
    def __getstate__(self) -> dict[str, Any]:
        if self._state_arg is not None and not isinstance(self._state_arg, (str, os.PathLike)):
            raise MicroRMError("this reward function holds an open state store, which cannot be "
                               "pickled; pass state='sqlite:///state.db' (a URL or path) instead")
        model = self.scorer.model   # as config + CPU tensors: the other process may have no GPU
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return {"model": (model.config, weights), "context": self.context, "eta": self.eta,
                "state": self._state_arg, "name": self.__name__, "options": self._options}

    def __setstate__(self, saved: dict[str, Any]) -> None:
        from micro_rm.model.mixture import MixtureRewardModel

        config, weights = saved["model"]
        model = MixtureRewardModel(config)
        model.load_state_dict(weights)
        self.__init__(model, saved["context"], saved["eta"], saved["state"], name=saved["name"], **saved["options"])

    def __call__(self, prompts: Sequence[Text], completions: Sequence[Text], **kwargs: Any) -> list[float]:
        n = len(completions)
        contexts = _column(kwargs.get("context"), n, "context")
        users = _column(kwargs.get("user_id"), n, "user_id")
        return self.routed(prompts, completions, contexts, users).rewards.tolist()


def _column(values: Any, n: int, name: str) -> list[Any]:
    """A dataset column as ``n`` values (None or one string: every sample's; "" means none)."""
    if values is None or isinstance(values, str):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise MicroRMError(f"the `{name}` column has {len(values)} values for {n} completions")
    return values


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
    rewards = reward([prompt] * len(candidates), list(candidates), context=context, user_id=user_id)
    index = int(np.argmax(rewards))
    return BestOfN(index=index, text=candidates[index], rewards=rewards)
