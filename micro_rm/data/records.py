"""The pair record, validated and normalised: a plain ``dict`` (so it works with ``datasets.map``)
with the fields of the README's "Data" table; texts are strings or ``{"role", "content"}`` lists.
"""

from __future__ import annotations

import math
import re
from typing import Any, Union

from micro_rm.errors import InvalidRecord, MicroRMError

Message = dict[str, str]
Text = Union[str, list[Message]]

USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$"
USER_ID_RULE = ("1-128 characters: letters, digits and . _ @ : - (starting with a letter or "
                "digit)")
OPTIONAL_STR_FIELDS = ("context", "attribute", "user_id", "id")


class IdenticalPair(InvalidRecord):
    """``chosen`` and ``rejected`` are the same: the pair carries no preference."""


def _fail(where: str, message: str, kind: type[InvalidRecord] = InvalidRecord,
          fix_it: bool = False) -> InvalidRecord:
    return kind(f"{where}: {message}" if where else message, fix_it)


def check_unicode(value: str, field: str, where: str = "") -> str:
    """``value`` unless it holds a lone surrogate (JSON ``"\\ud800"``), which no UTF-8 encoder,
    tokenizer or database accepts.

    >>> check_unicode("caf\u00e9", "chosen")
    'café'
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(where, f"`{field}` is not valid Unicode (a lone surrogate such as \\ud800); "
                           "fix the text") from None
    return value


def check_user_id(user_id: str, where: str = "user id") -> str:
    """``user_id`` if it follows the one rule the CLI and the service share (``USER_ID_RULE``).

    >>> check_user_id("ana@example.org")
    'ana@example.org'
    """
    if not re.fullmatch(USER_ID_PATTERN, user_id):
        raise MicroRMError(f"{where} {user_id!r} is not a valid user id: {USER_ID_RULE}")
    return user_id


def _check_text(value: Any, field: str, where: str) -> Text:
    if isinstance(value, str):
        if not value.strip():
            raise _fail(where, f"`{field}` is empty", fix_it=True)
        return check_unicode(value, field, where)
    if isinstance(value, list):
        if not value:
            raise _fail(where, f"`{field}` is an empty message list", fix_it=True)
        for i, msg in enumerate(value):
            if not (isinstance(msg, dict) and isinstance(msg.get("role"), str)
                    and isinstance(msg.get("content"), str)):
                raise _fail(where, f"`{field}[{i}]` is not a chat message "
                                   "{'role': str, 'content': str}")
            check_unicode(msg["role"], f"{field}[{i}].role", where)
            check_unicode(msg["content"], f"{field}[{i}].content", where)
        if not any(msg["content"].strip() for msg in value):
            raise _fail(where, f"`{field}` has only empty messages", fix_it=True)
        return value
    raise _fail(where, f"`{field}` must be a string or a list of chat messages, "
                       f"got {type(value).__name__}")


def _shared_prefix(chosen: list[Message], rejected: list[Message]) -> int:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n


def normalize_pair(record: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Validate one record and return it in canonical form (only known fields, prompt present);
    ``where`` (e.g. ``"pairs.jsonl line 12"``) prefixes every error message.

    >>> normalize_pair({"chosen": [{"role": "user", "content": "Hi"},
    ...                            {"role": "assistant", "content": "Hello!"}],
    ...                 "rejected": [{"role": "user", "content": "Hi"},
    ...                              {"role": "assistant", "content": "Go away."}]})
    {'prompt': [{'role': 'user', 'content': 'Hi'}], 'chosen': [{'role': 'assistant', 'content': 'Hello!'}], 'rejected': [{'role': 'assistant', 'content': 'Go away.'}]}
    """
    if not isinstance(record, dict):
        raise _fail(where, f"a record must be a JSON object, got {type(record).__name__}")
    for field in ("chosen", "rejected"):
        if record.get(field) is None:
            raise _fail(where, f"missing field `{field}`", fix_it=True)
    chosen = _check_text(record["chosen"], "chosen", where)
    rejected = _check_text(record["rejected"], "rejected", where)
    prompt = record.get("prompt")
    if prompt is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise _fail(where, "missing field `prompt` (it may be omitted only when `chosen` and "
                               "`rejected` are whole conversations)")
        n = _shared_prefix(chosen, rejected)
        if n == 0:
            raise _fail(where, "missing field `prompt` and `chosen`/`rejected` share no prefix")
        prompt = chosen[:n]
        chosen = _check_text(chosen[n:], "chosen", where)
        rejected = _check_text(rejected[n:], "rejected", where)
    prompt = _check_text(prompt, "prompt", where)
    if chosen == rejected:
        raise _fail(where, "`chosen` and `rejected` are the same, so the pair carries no preference",
                    IdenticalPair, fix_it=True)
    out: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for field in OPTIONAL_STR_FIELDS:
        value = record.get(field)
        if value is None:
            continue
        if field == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise _fail(where, f"`{field}` must be a string, got {type(value).__name__}")
        if field == "context" and not value.strip():
            raise _fail(where, "`context` is empty; remove the field or give the context")
        out[field] = check_unicode(value, field, where)
    margin = record.get("margin")
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise _fail(where, f"`margin` must be a number, got {type(margin).__name__}")
        try:
            out["margin"] = float(margin)
        except OverflowError:
            out["margin"] = math.inf
        if not math.isfinite(out["margin"]):
            raise _fail(where, "`margin` must be a finite number (JSON has no NaN or infinity)")
    return out


def render_text(text: Text) -> str:
    """Flatten a string or a message list into plain text for an encoder backbone.

    >>> render_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}])
    'user: Hi\\nassistant: Hey'
    """
    if isinstance(text, str):
        return text
    return "\n".join(f"{m['role']}: {m['content']}" for m in text)


def prompt_key(record: dict[str, Any]) -> str:
    """The prompt as one string: what the canonical split hashes and what groups pairs."""
    return render_text(record["prompt"])
