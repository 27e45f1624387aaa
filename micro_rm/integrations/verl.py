"""A MiCRo model as verl's custom reward function (tested with verl 0.9.1; setup in README, "verl").

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` once per
response and logs the returned dict. It passes no prompt, so each row's ``extra_info`` must carry
it (``prompt`` or ``question``). The model comes from ``reward_kwargs`` (``model=...``) or
``$MICRO_RM_MODEL`` and loads once per process; ``ground_truth`` and ``data_source`` mean nothing
to a preference reward model.

>>> compute_score("dsp", "Entropy counts microstates.", None,
...               {"prompt": "What is entropy?", "context": "I am a physicist."})  # doctest: +SKIP
{'score': 0.61, 'head0_reward': 1.2, 'head0_weight': 0.4, ...}
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from micro_rm.errors import MicroRMError
from micro_rm.integrations.common import shared_reward_function
from micro_rm.integrations.openrlhf import head_logs
from micro_rm.scoring.limits import per_sample

PROMPT_KEYS = ("prompt", "question")   # where the prompt may sit in extra_info
# reward_kwargs passed on to the RewardEngine; verl's own extras (return_dict ...) are dropped
OPTIONS = ("state", "context", "eta", "cache_dir", "device")


def _fields(extra_info: Optional[dict[str, Any]], where: str) -> tuple[Any, Optional[str], Optional[str]]:
    """``(prompt, context, user_id)`` of one sample's ``extra_info``."""
    if not isinstance(extra_info, dict):
        raise MicroRMError(f"{where}: verl passes the prompt only through `extra_info`; give each row an "
                           "extra_info dict with `prompt` (and optionally `context`, `user_id`), got "
                           f"{type(extra_info).__name__}")
    prompt = next((extra_info[k] for k in PROMPT_KEYS if extra_info.get(k) is not None), None)
    if prompt is None:
        raise MicroRMError(f"{where}: no `prompt` (or `question`) in extra_info, and verl passes the prompt "
                           "nowhere else; add it in your data preprocessing script")
    context, user = extra_info.get("context") or None, extra_info.get("user_id") or None
    for name, value in (("context", context), ("user_id", user)):
        if value is not None and not isinstance(value, str):
            raise MicroRMError(f"{where}: extra_info `{name}` must be a string, got {type(value).__name__}")
    if hasattr(prompt, "tolist"):          # verl keeps chat prompts as numpy object arrays
        prompt = prompt.tolist()
    return prompt, context, user


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str],
                        ground_truths: Optional[Sequence[Any]] = None,
                        extra_infos: Optional[Sequence[Optional[dict[str, Any]]]] = None,
                        *, model: Optional[str] = None, **kwargs: Any) -> list[dict[str, float]]:
    """One dict per response: ``score`` (the routed reward), each head's reward and weight."""
    n = len(solution_strs)
    infos = per_sample(extra_infos, n, "extra_infos", "solution_strs")
    rows = [_fields(info, f"extra_info[{i}]") for i, info in enumerate(infos)]
    scorer = shared_reward_function(model, **{k: kwargs[k] for k in OPTIONS if k in kwargs})
    out = scorer.routed([p for p, _, _ in rows], list(solution_strs), [c for _, c, _ in rows],
                        [u for _, _, u in rows])
    logs = head_logs(out)
    return [{"score": float(reward), **{key: values[i] for key, values in logs.items()}}
            for i, reward in enumerate(out.rewards)]


def compute_score(data_source: Any, solution_str: str, ground_truth: Any = None,
                  extra_info: Optional[dict[str, Any]] = None, *, model: Optional[str] = None,
                  **kwargs: Any) -> dict[str, float]:
    """verl's per-response reward: ``score`` plus each head's reward and weight (logged by verl).
    ``kwargs`` may carry the engine's ``OPTIONS`` (from ``reward_kwargs``); verl's other extras
    (``return_dict``, ``num_turns``, ...) are ignored."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], model=model,
                               **kwargs)[0]
