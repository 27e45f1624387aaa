"""What a scoring request may hold, checked per request before it joins a shared encode batch.

Every scoring path checks each request here, alone, so a bad request fails alone (docs/service.md).
Nothing heavy is imported (the CLI's ``--help`` reads :class:`ScoringLimits`).

>>> check_text("Hi", "prompt", ScoringLimits())
'Hi'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from micro_rm.data.records import check_unicode, check_user_id, normalize_pair
from micro_rm.errors import InvalidRecord, MicroRMError


class RequestRefused(MicroRMError):
    """One request's field is invalid or too long; the service answers ``status``."""

    status = 422


class TooManyTexts(RequestRefused):
    """One request holds more texts than allowed."""

    status = 413


@dataclass(frozen=True)
class ScoringLimits:
    """Size limits of one scoring request, applied on every path.

    ``max_texts``: most texts (responses, queries, feedback pairs) in one HTTP request or one
    ``micro-rm score`` record. ``max_text_chars``: longest text, context or label (the default
    takes an 8k-token RLHF context with room to spare). ``max_batch``: most samples in one
    in-process adapter call. ``flags``: name the limits by the service's flags in messages.
    """

    max_texts: int = 256
    max_text_chars: int = 100_000
    max_batch: int = 65_536
    flags: bool = False

    def __post_init__(self) -> None:
        for name in ("max_texts", "max_text_chars", "max_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MicroRMError(f"{self.name(name)} must be an integer ≥ 1, got {value!r}")

    def name(self, field: str) -> str:
        return "--" + field.replace("_", "-") if self.flags else f"ScoringLimits.{field}"


def check_count(count: int, limits: ScoringLimits, limit: str = "max_texts") -> int:
    """``count`` unless it is over ``limits.<limit>`` (413)."""
    most = getattr(limits, limit)
    if count > most:
        raise TooManyTexts(f"{count} texts in one request; the limit is {most} ({limits.name(limit)}): "
                           "split the request")
    return count


def check_chars(value: str, where: str, limits: ScoringLimits) -> str:
    """``value`` if it is at most ``max_text_chars`` long and valid Unicode (no lone surrogate,
    the rule of :func:`micro_rm.data.records.check_unicode`, shared with the data readers)."""
    if len(value) > limits.max_text_chars:
        raise RequestRefused(f"`{where}` has {len(value)} characters; the limit is {limits.max_text_chars} "
                             f"({limits.name('max_text_chars')})")
    try:
        return check_unicode(value, where)
    except MicroRMError as exc:
        raise RequestRefused(str(exc)) from None


def check_text(value: Any, where: str, limits: ScoringLimits) -> Any:
    """A prompt or response as the backbones take it: a string, or chat messages (one message
    alone becomes a list of one) with a string ``role`` and the ``content`` of
    :func:`message_content`; each part checked by :func:`check_chars`."""
    if isinstance(value, str):
        return check_chars(value, where, limits)
    if isinstance(value, dict):      # one message instead of a list of them
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, dict) for m in value):
        raise RequestRefused(f"{where}: expected a string or a list of chat messages, got {type(value).__name__}")
    text = [{"role": str(m.get("role", "user")), "content": message_content(m, f"{where}[{i}]")}
            for i, m in enumerate(value)]
    for i, message in enumerate(text):
        for key in ("role", "content"):
            check_chars(message[key], f"{where}[{i}].{key}", limits)
    return text


def check_context(value: Any, where: str, limits: ScoringLimits) -> Optional[str]:
    """A context (None or empty: none) checked by :func:`check_chars`."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestRefused(f"{where}: a context must be a string, got {type(value).__name__}")
    return check_chars(value, where, limits)


def check_user(value: Any, where: str) -> Optional[str]:
    """A user id (None or empty: none) that follows :data:`~micro_rm.data.records.USER_ID_RULE`."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestRefused(f"{where}: a user id must be a string, got {type(value).__name__}")
    try:
        return check_user_id(value, where)
    except MicroRMError as exc:
        raise RequestRefused(str(exc)) from None


def check_pair(pair: dict[str, Any], where: str, limits: ScoringLimits, fix_it: bool = True) -> dict[str, Any]:
    """A feedback or candidate pair as a record (the data files' rule, :func:`normalize_pair`),
    each text checked by :func:`check_text`; ``fix_it=False`` leaves "; fix it" out of the error."""
    try:
        record = normalize_pair(pair, where=where)
    except InvalidRecord as exc:
        raise RequestRefused(str(exc) if fix_it else exc.problem) from None
    for key, value in record.items():
        check_text(value, f"{where}.{key}", limits)
    return record


# ----- chat messages ----------------------------------------------------------------------------
def message_content(message: dict[str, Any], where: str) -> str:
    """The text of one chat message, whatever shape the framework gave it.

    Typed content blocks (``[{"type": "text", "text": ...}]``) are joined with newlines; a tool
    call (``content: None`` with ``tool_calls``) becomes its calls as JSON; ``None`` alone is
    empty. A non-text block (an image) is refused: the reward model reads text only.

    >>> message_content({"role": "user", "content": [{"type": "text", "text": "Hi"}]}, "prompt")
    'Hi'
    >>> message_content({"role": "assistant", "content": None,
    ...                  "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}, "completion")
    '[{"name": "f", "arguments": "{}"}]'
    """
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None:
        calls = message.get("tool_calls") or []
        functions = [c.get("function", c) if isinstance(c, dict) else c for c in calls]
        return json.dumps(functions, ensure_ascii=False, default=str) if functions else ""
    if isinstance(content, list):
        parts = []
        for i, block in enumerate(content):
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type", "text") == "text":
                parts.append(str(block.get("text") or ""))
            else:
                kind = block.get("type") if isinstance(block, dict) else type(block).__name__
                raise RequestRefused(f"{where}: content block {i} has type {kind!r}; a MiCRo reward "
                                     "model reads text only, so drop non-text blocks before scoring")
        return "\n".join(parts)
    raise RequestRefused(f"{where}: message content must be a string, a list of content blocks or "
                         f"None, got {type(content).__name__}")


def split_system(prompt: Any) -> tuple[Any, Optional[str]]:
    """``(prompt without its leading system messages, their text)``: a system message is the
    natural place for a user's context in a conversational dataset.

    >>> split_system([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    ([{'role': 'user', 'content': 'Hi'}], 'Be brief.')
    """
    if not isinstance(prompt, list):
        return prompt, None
    n = 0
    while n < len(prompt) and prompt[n].get("role") == "system":
        n += 1
    system = "\n".join(m["content"] for m in prompt[:n] if m["content"].strip())
    if not system or n == len(prompt):
        return prompt, None
    return prompt[n:], system


def per_sample(values: Any, n: int, name: str, count: str = "query") -> list[Any]:
    """``values`` as a list of ``n`` (None → n Nones); a wrong length is refused."""
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise RequestRefused(f"`{name}` has {len(values)} entries but `{count}` has {n}")
    return values
