"""A MiCRo model as OpenRLHF's in-process reward function (``--remote_rm_url reward_func.py``).

OpenRLHF loads the file given as ``--remote_rm_url`` when it ends in ``.py`` and calls its
``reward_func(queries, prompts, labels)``: ``queries`` are the decoded prompt + response texts,
``prompts`` the prompts, ``labels`` the dataset's ``--label_key`` column. It returns what
OpenRLHF reads: ``rewards`` and ``scores`` (tensors) and ``extra_logs`` (each head's reward and
weight per sample).

The model and the meaning of the labels come from the environment, since OpenRLHF passes no
settings to the file: ``MICRO_RM_MODEL`` (model folder or hub id), ``MICRO_RM_LABELS``
(``ignore``, ``context``, ``user_id`` or ``json``; default ``context``), and optionally
``MICRO_RM_STATE`` (per-user state for user labels) and ``MICRO_RM_CONTEXT`` (a context for
samples without one). The model loads once per process.

    # reward_func.py, given to OpenRLHF as --remote_rm_url reward_func.py
    from micro_rm.integrations.openrlhf import reward_func

>>> out = reward_func(["Hi!Hello."], ["Hi!"], ["I am a child."])     # doctest: +SKIP
>>> out["rewards"], sorted(out["extra_logs"])[:2]                      # doctest: +SKIP
(tensor([0.4310]), ['head0_reward', 'head0_weight'])
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence

from micro_rm.integrations.common import (LABELS_ENV, check_label_mode, label_fields, per_sample,
                                          shared_reward_function, split_query)

logger = logging.getLogger(__name__)

DEFAULT_LABELS = "context"


def make_reward_func(model: Any = None, *, labels: Optional[str] = None, **options: Any
                     ) -> Callable[..., dict[str, Any]]:
    """A ``reward_func(queries, prompts, labels, **kwargs)`` for OpenRLHF scoring with ``model``
    (a folder, hub id, loaded model or :class:`MicroRMRewardFunction`; default
    ``$MICRO_RM_MODEL``). ``labels``: what each label carries (default ``$MICRO_RM_LABELS`` or
    ``context``); ``options`` go to :class:`MicroRMRewardFunction` (``state``, ``context``,
    ``eta``, ``cache_dir``, ``device`` ...)."""
    from micro_rm.integrations.trl import MicroRMRewardFunction

    mode = check_label_mode(labels or os.environ.get(LABELS_ENV) or DEFAULT_LABELS,
                            f"labels (${LABELS_ENV})")
    if isinstance(model, MicroRMRewardFunction):
        scorer = model
    elif model is None or isinstance(model, (str, os.PathLike)):
        scorer = shared_reward_function(str(model) if model else None, **options)
    else:
        scorer = MicroRMRewardFunction(model, **options)

    def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Optional[Sequence[Any]] = None,
                    **kwargs: Any) -> dict[str, Any]:
        import torch

        n = len(queries)
        prompts = per_sample(prompts, n, "prompts")
        carried = [label_fields(label, mode, f"labels[{i}]")
                   for i, label in enumerate(per_sample(labels, n, "labels"))]
        pairs = [split_query(q, p or "") for q, p in zip(queries, prompts)]
        missed = sum(not found for _, _, found in pairs)
        if missed:
            logger.warning("%d of %d queries do not contain their prompt (truncated from the left?); "
                           "scored on the whole query", missed, n)
        out = scorer.routed([p for p, _, _ in pairs], [r for _, r, _ in pairs],
                            [c for c, _ in carried], [u for _, u in carried])
        rewards = torch.as_tensor(out.rewards, dtype=torch.float32)
        return {"rewards": rewards, "scores": rewards.clone(),
                "extra_logs": {k: torch.as_tensor(v, dtype=torch.float32) for k, v in head_logs(out).items()}}

    return reward_func


def head_logs(out: Any) -> dict[str, list[float]]:
    """Each head's reward (``head{k}_reward``) and routing weight (``head{k}_weight``) per sample
    of a :class:`~micro_rm.serve.scoring.Routed`: what OpenRLHF logs as ``extra_logs``."""
    logs = {}
    for k in range(out.head_rewards.shape[1]):
        logs[f"head{k}_reward"] = out.head_rewards[:, k].tolist()
        logs[f"head{k}_weight"] = out.weights[:, k].tolist()
    return logs


_default: Optional[Callable[..., dict[str, Any]]] = None


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Optional[Sequence[Any]] = None,
                **kwargs: Any) -> dict[str, Any]:
    """OpenRLHF's ``reward_func`` for the model in ``$MICRO_RM_MODEL`` (see the module docstring)."""
    global _default
    if _default is None:
        _default = make_reward_func()
    return _default(queries, prompts, labels, **kwargs)

