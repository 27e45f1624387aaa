"""A MiCRo model as OpenRLHF's in-process reward function (``--reward.remote_url reward_func.py``),
and the parser of OpenRLHF's request that the service's ``/get_reward`` shares.

OpenRLHF (tested with 0.11.2) calls ``reward_func(queries, prompts, labels)``: ``queries`` are the
decoded prompt + response texts, ``labels`` the dataset's ``--data.label_key`` column. It reads
``rewards``, ``scores`` and ``extra_logs`` (each head's reward and weight per sample). It passes
no settings, so they come from the environment: ``MICRO_RM_MODEL``, ``MICRO_RM_LABELS``
(``ignore``, ``context``, ``user_id`` or ``json``; default ``context``), and optionally
``MICRO_RM_STATE`` and ``MICRO_RM_CONTEXT`` (README, "OpenRLHF").

>>> out = reward_func(["Hi!Hello."], ["Hi!"], ["I am a child."])     # doctest: +SKIP
>>> out["rewards"], sorted(out["extra_logs"])[:2]                      # doctest: +SKIP
(tensor([0.4310]), ['head0_reward', 'head0_weight'])
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from micro_rm.errors import MicroRMError
from micro_rm.scoring.engine import Samples
from micro_rm.scoring.limits import (RequestRefused, ScoringLimits, check_chars, check_context, check_count,
                                     check_user, per_sample)

logger = logging.getLogger(__name__)

# What a per-sample label may carry (``micro-rm serve --labels``, ``MICRO_RM_LABELS``).
LABEL_MODES = ("ignore", "context", "user_id", "json")
LABELS_ENV = "MICRO_RM_LABELS"
DEFAULT_LABELS = "context"


def check_label_mode(mode: str, option: str) -> str:
    if mode not in LABEL_MODES:
        raise MicroRMError(f"{option} must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    return mode


def split_query(query: str, prompt: str) -> tuple[str, str, bool]:
    """``(prompt, response, found)`` of one OpenRLHF query (the decoded prompt + response).

    The response is the text after the first occurrence of ``prompt`` (padding or BOS decoded
    ahead of it is skipped). A prompt that is not in the query (OpenRLHF truncated it from the
    left) leaves the whole query as the response, ``found`` False.

    >>> split_query("<pad>Hi!Hello.", "Hi!")
    ('Hi!', 'Hello.', True)
    """
    at = query.find(prompt) if prompt else -1
    if at < 0:
        return prompt, query, False
    return prompt, query[at + len(prompt):], True


def label_fields(label: Any, mode: str, where: str, limits: ScoringLimits) -> tuple[Optional[str], Optional[str]]:
    """``(context, user_id)`` carried by one per-sample label under ``mode`` (one of LABEL_MODES,
    checked by the caller), checked.

    ``json``: the label is an object (or a JSON object string) with optional ``context`` and
    ``user_id`` keys. Empty labels carry nothing.

    >>> label_fields("I am a child.", "context", "labels[0]", ScoringLimits())
    ('I am a child.', None)
    >>> label_fields('{"user_id": "ana"}', "json", "labels[0]", ScoringLimits())
    (None, 'ana')
    """
    if mode == "ignore" or label is None or label == "":
        return None, None
    if isinstance(label, str):
        check_chars(label, where, limits)
    if mode == "json":
        if isinstance(label, str):
            try:
                label = json.loads(label)
            except (json.JSONDecodeError, RecursionError):
                raise RequestRefused(f"{where}: not a JSON object; with labels mode `json` each label is "
                                     '{"context": ..., "user_id": ...}') from None
        if not isinstance(label, dict):
            raise RequestRefused(f"{where}: expected an object with `context` / `user_id`, got "
                                 f"{type(label).__name__}")
        context, user = label.get("context"), label.get("user_id")
    else:
        if not isinstance(label, str):
            raise RequestRefused(f"{where}: a {mode} label must be a string, got {type(label).__name__}")
        context, user = (label, None) if mode == "context" else (None, label)
    return check_context(context, f"{where}.context", limits), check_user(user, f"{where}.user_id")


@dataclass
class Parsed:
    """One checked OpenRLHF request: its samples, the users named only by labels (the service
    lets ``--anonymous-scoring`` score them without a token) and the queries that do not
    contain their prompt (scored whole)."""

    samples: Samples
    from_labels: set[str]
    missed: list[int]


def parse_request(query: Any, prompts: Any = None, labels: Any = None, *, mode: str, limits: ScoringLimits,
                  separator: Optional[str] = None, context: Any = None, user_id: Optional[str] = None,
                  count: str = "max_texts", caller: str = "/get_reward") -> Parsed:
    """The one parser of OpenRLHF's request (``{"query": [...], "prompts": [...], "labels": [...]}``,
    plus micro-rm's optional ``separator``, ``context`` (one, or one per query) and ``user_id``),
    for ``/get_reward`` and :func:`reward_func` alike. Every field is checked against ``limits``
    (``count`` names the limit on the number of queries) before anything is encoded.

    With ``prompts`` (OpenRLHF sends them) each response is the text after the first occurrence
    of its prompt (:func:`split_query`; a miss is logged, naming ``caller``); otherwise, with
    ``separator``, the prompt is everything up to and including the separator's last occurrence.
    ``context`` / ``user_id`` win over what a label carries.
    """
    if not isinstance(query, (list, tuple)):
        raise RequestRefused(f"`query` must be a list of texts, got {type(query).__name__}")
    n = check_count(len(query), limits, count)
    if prompts is not None and len(prompts) != n:
        raise RequestRefused(f"`prompts` has {len(prompts)} texts but `query` has {n}; give one prompt per query")
    contexts = per_sample(context if isinstance(context, (list, tuple)) else [context] * n, n, "context")
    carried = [label_fields(label, mode, f"labels[{i}]", limits)
               for i, label in enumerate(per_sample(labels, n, "labels"))]
    texts = [_string(q, f"query[{i}]", limits) for i, q in enumerate(query)]
    contexts = [check_context(c, f"context[{i}]", limits) or lc
                for i, (c, (lc, _)) in enumerate(zip(contexts, carried))]
    users = [check_user(user_id, "user_id") or lu for _, lu in carried]
    from_labels = {lu for _, lu in carried if lu and not user_id}
    pairs, missed = [], []
    if prompts is not None:
        split = [split_query(text, _string(prompt, f"prompts[{i}]", limits))
                 for i, (text, prompt) in enumerate(zip(texts, prompts))]
        pairs = [(prompt, response) for prompt, response, _ in split]
        missed = [i for i, (_, _, found) in enumerate(split) if not found]
        if missed:
            logger.warning("%s: %d of %d queries do not contain their prompt (first: query[%d]; truncated "
                           "from the left?); scored on the whole query", caller, len(missed), n, missed[0])
    elif separator is not None:
        _string(separator, "separator", limits)
        for i, text in enumerate(texts):
            at = text.rfind(separator)
            if at < 0:
                raise RequestRefused(f"query[{i}] does not contain the separator {separator!r}")
            pairs.append((text[:at + len(separator)], text[at + len(separator):]))
    else:
        raise RequestRefused("cannot tell prompt from response: give `prompts` (one per query, as OpenRLHF "
                             "sends them) or a `separator` (e.g. the chat template's assistant header)")
    return Parsed(Samples([p for p, _ in pairs], [r for _, r in pairs], contexts, users), from_labels, missed)


def _string(value: Any, where: str, limits: ScoringLimits) -> str:
    if not isinstance(value, str):
        raise RequestRefused(f"`{where}` must be a string, got {type(value).__name__}")
    return check_chars(value, where, limits)


def make_reward_func(model: Any = None, *, labels: Optional[str] = None, **options: Any
                     ) -> Callable[..., dict[str, Any]]:
    """A ``reward_func(queries, prompts, labels, **kwargs)`` for OpenRLHF scoring with ``model``
    (a folder, hub id, loaded model or :class:`~micro_rm.scoring.engine.RewardEngine`; default
    ``$MICRO_RM_MODEL``). ``labels``: what each label carries (default ``$MICRO_RM_LABELS`` or
    ``context``); ``options`` go to :class:`~micro_rm.scoring.engine.RewardEngine` (``state``,
    ``context``, ``eta``, ``cache_dir``, ``device``, ``limits`` ...)."""
    from micro_rm.integrations.common import shared_reward_function
    from micro_rm.scoring.engine import RewardEngine

    mode = check_label_mode(labels or os.environ.get(LABELS_ENV) or DEFAULT_LABELS,
                            f"labels (${LABELS_ENV})")
    if isinstance(model, RewardEngine):
        scorer = model
    elif model is None or isinstance(model, (str, os.PathLike)):
        scorer = shared_reward_function(model, **options)
    else:
        scorer = RewardEngine(model, **options)

    def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Optional[Sequence[Any]] = None,
                    **kwargs: Any) -> dict[str, Any]:
        import torch

        parsed = parse_request(queries, prompts, labels, mode=mode, limits=scorer.limits, count="max_batch",
                               caller="reward_func")
        samples = parsed.samples
        out = scorer.routed(samples.prompts, samples.responses, samples.contexts, samples.users)
        rewards = torch.as_tensor(out.rewards, dtype=torch.float32)
        return {"rewards": rewards, "scores": rewards.clone(),
                "extra_logs": {k: torch.as_tensor(v, dtype=torch.float32) for k, v in head_logs(out).items()}}

    return reward_func


def head_logs(out: Any) -> dict[str, list[float]]:
    """Each head's reward (``head{k}_reward``) and routing weight (``head{k}_weight``) per sample
    of a :class:`~micro_rm.scoring.engine.Routed`: what OpenRLHF logs as ``extra_logs``."""
    logs = {}
    for k in range(out.head_rewards.shape[1]):
        logs[f"head{k}_reward"] = out.head_rewards[:, k].tolist()
        logs[f"head{k}_weight"] = out.weights[:, k].tolist()
    return logs


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Optional[Sequence[Any]] = None,
                **kwargs: Any) -> dict[str, Any]:
    """OpenRLHF's ``reward_func`` for the model in ``$MICRO_RM_MODEL`` (see the module docstring),
    loaded once per process by :func:`~micro_rm.integrations.common.shared_reward_function`."""
    return make_reward_func()(queries, prompts, labels, **kwargs)

