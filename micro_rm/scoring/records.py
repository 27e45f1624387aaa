"""Offline batch scoring: the routed reward of every response in a file (``micro-rm score``).

A record holds a ``prompt`` and, the first that fits, ``responses`` (a list), ``response`` or
``completion`` (one), or ``chosen`` and ``rejected`` (both, chosen first); ``context`` and
``user_id`` route it. Each record is checked alone before the model loads. The output lines are
described in the README ("micro-rm score").

>>> score_file("runs/dsp", "candidates.jsonl", "scores.jsonl", context="Be kind.")["records"]   # doctest: +SKIP
2
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Optional

from micro_rm.errors import MicroRMError
from micro_rm.scoring.engine import one_prompt
from micro_rm.scoring.limits import RequestRefused, ScoringLimits, check_context, check_user

CHUNK = 256   # responses scored per backbone round trip (and per progress-bar step)


def score_item(row: Any, where: str, limits: ScoringLimits) -> dict[str, Any]:
    """The prompt, responses and routing of one record, checked (shape, then the limits).

    >>> score_item({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}, "in.jsonl line 1", ScoringLimits())
    {'prompt': 'Hi', 'responses': ['Hello!', 'Go away.'], 'context': None, 'user_id': None, 'id': None}
    """
    if not isinstance(row, dict):
        raise MicroRMError(f"{where}: a record must be a JSON object, got {type(row).__name__}")
    if row.get("prompt") is None:
        raise MicroRMError(f"{where}: missing field `prompt`")
    if row.get("responses") is not None:
        responses = row["responses"]
        if not isinstance(responses, list) or not responses:
            raise MicroRMError(f"{where}: `responses` must be a non-empty list of texts")
    elif row.get("response") is not None or row.get("completion") is not None:
        responses = [row["response"] if row.get("response") is not None else row["completion"]]
    elif row.get("chosen") is not None and row.get("rejected") is not None:
        responses = [row["chosen"], row["rejected"]]
    else:
        raise MicroRMError(f"{where}: no responses to score; give `responses` (a list), `response`, "
                           "`completion`, or `chosen` and `rejected`")
    if row.get("id") is not None and (not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool)):
        raise MicroRMError(f"{where}: `id` must be a string, got {type(row['id']).__name__}")
    try:
        samples = one_prompt(row["prompt"], responses, row.get("context"), limits)
        user_id = check_user(row.get("user_id"), "user_id")
    except RequestRefused as exc:
        raise MicroRMError(f"{where}: {exc}") from None
    return {"prompt": samples.prompts[0], "responses": samples.responses, "context": samples.contexts[0],
            "user_id": user_id, "id": row.get("id")}


def _chunks(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive runs of ``items`` holding at least ``CHUNK`` responses (the last may hold fewer)."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for item in items:
        chunk.append(item)
        size += len(item["responses"])
        if size >= CHUNK:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _score_chunk(items: list[dict[str, Any]], reward: Any) -> Iterator[dict[str, Any]]:
    flat = [(item, response) for item in items for response in item["responses"]]
    out = reward.routed([item["prompt"] for item, _ in flat], [r for _, r in flat],
                        [item["context"] for item, _ in flat], [item["user_id"] for item, _ in flat])
    start = 0
    for item in items:
        rows = slice(start, start + len(item["responses"]))
        start = rows.stop
        result = {key: item[key] for key in ("id", "context", "user_id") if item[key] is not None}
        result.update(rewards=out.rewards[rows].tolist(), head_rewards=out.head_rewards[rows].tolist(),
                      weights=out.weights[rows.start].tolist(), router_weights=out.prior[rows.start].tolist())
        yield result


def score_file(model: Any, data: str | os.PathLike, out: str | os.PathLike, *, context: Optional[str] = None,
               user_id: Optional[str] = None, state: Any = None, hf_split: Optional[str] = None,
               cache_dir: Optional[str | os.PathLike] = None, device: str = "cpu") -> dict[str, Any]:
    """Score every record of ``data`` with ``model`` into the JSON-lines file ``out`` (written
    atomically: a failure leaves no partial file), ``CHUNK`` responses per backbone round trip.
    ``state``: a URL, path or open store (needed for users). Returns counts for a summary."""
    from micro_rm.atomic import atomic_open
    from micro_rm.data.readers import read_rows
    from micro_rm.progress import progress_bar
    from micro_rm.scoring.engine import RewardEngine

    limits = ScoringLimits()
    context, user_id = check_context(context, "--context", limits), check_user(user_id, "--user")
    # Every record is checked before the model loads, so a bad line fails first and alone.
    items = [score_item(row, where, limits) for where, row in read_rows(data, hf_split)]
    if not items:
        raise MicroRMError(f"{data}: no records to score")
    for item in items:
        item["context"] = item["context"] or context
        item["user_id"] = item["user_id"] or user_id
    if state is None and any(item["user_id"] for item in items):
        raise MicroRMError("scoring for a user needs the per-user state: pass --state (the service's "
                           "or `micro-rm feedback`'s state, e.g. sqlite:///state.db)")
    reward = RewardEngine(model, state=state, cache_dir=cache_dir, device=device, limits=limits)
    bar = progress_bar(total=len(items), unit="record", desc="scoring")
    with atomic_open(out) as fh:
        for chunk in _chunks(items):
            for result in _score_chunk(chunk, reward):
                fh.write(json.dumps(result, ensure_ascii=False) + "\n")
            bar.update(len(chunk))
        bar.close()
    return {"out": str(out), "records": len(items), "responses": sum(len(item["responses"]) for item in items),
            "encoded_texts": reward.features.stats["encoded"]}
