"""What the RLHF adapters share: chat messages as the backbones read them, OpenRLHF's
query → (prompt, response) split, per-sample labels → context / user, and one loaded reward
function per process for the frameworks that import a plain function (OpenRLHF, verl).

Torch-free at import: the service's router and the adapters import it freely.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Optional, Sequence

from micro_rm.errors import MicroRMError

# What a per-sample label may carry (``micro-rm serve --labels``, ``MICRO_RM_LABELS``).
LABEL_MODES = ("ignore", "context", "user_id", "json")

MODEL_ENV = "MICRO_RM_MODEL"    # model folder or hub id of the in-process adapters
LABELS_ENV = "MICRO_RM_LABELS"  # what OpenRLHF's `labels` carry (one of LABEL_MODES)
STATE_ENV = "MICRO_RM_STATE"    # per-user state for `user_id` labels
CONTEXT_ENV = "MICRO_RM_CONTEXT"  # one context for samples that bring none


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
                raise MicroRMError(f"{where}: content block {i} has type {kind!r}; a MiCRo reward "
                                   "model reads text only, so drop non-text blocks before scoring")
        return "\n".join(parts)
    raise MicroRMError(f"{where}: message content must be a string, a list of content blocks or "
                       f"None, got {type(content).__name__}")


def clean_text(text: Any, where: str) -> Any:
    """A prompt or completion as the backbones take it: a string, or messages whose content is a
    string (see :func:`message_content`)."""
    if isinstance(text, str):
        return text
    if isinstance(text, dict):      # one message instead of a list of them
        text = [text]
    if isinstance(text, (list, tuple)) and all(isinstance(m, dict) for m in text):
        return [{"role": str(m.get("role", "user")), "content": message_content(m, f"{where}[{i}]")}
                for i, m in enumerate(text)]
    raise MicroRMError(f"{where}: expected a string or a list of chat messages, got {type(text).__name__}")


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


# ----- OpenRLHF ---------------------------------------------------------------------------------
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


def label_fields(label: Any, mode: str, where: str) -> tuple[Optional[str], Optional[str]]:
    """``(context, user_id)`` carried by one per-sample label under ``mode`` (LABEL_MODES).

    ``json``: the label is an object (or a JSON object string) with optional ``context`` and
    ``user_id`` keys. Empty labels carry nothing.

    >>> label_fields("I am a child.", "context", "labels[0]")
    ('I am a child.', None)
    >>> label_fields('{"user_id": "ana"}', "json", "labels[0]")
    (None, 'ana')
    """
    if mode == "ignore" or label is None or label == "":
        return None, None
    if mode == "json":
        if isinstance(label, str):
            try:
                label = json.loads(label)
            except json.JSONDecodeError:
                raise MicroRMError(f"{where}: not a JSON object; with labels mode `json` each label is "
                                   '{"context": ..., "user_id": ...}') from None
        if not isinstance(label, dict):
            raise MicroRMError(f"{where}: expected an object with `context` / `user_id`, got "
                               f"{type(label).__name__}")
        context, user = label.get("context"), label.get("user_id")
    elif mode in ("context", "user_id"):
        if not isinstance(label, str):
            raise MicroRMError(f"{where}: a {mode} label must be a string, got {type(label).__name__}")
        context, user = (label, None) if mode == "context" else (None, label)
    else:
        raise MicroRMError(f"labels mode must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    for name, value in (("context", context), ("user_id", user)):
        if value is not None and not isinstance(value, str):
            raise MicroRMError(f"{where}: `{name}` must be a string, got {type(value).__name__}")
    return context or None, user or None


def check_label_mode(mode: str, option: str) -> str:
    if mode not in LABEL_MODES:
        raise MicroRMError(f"{option} must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    return mode


# ----- one loaded reward function per process ---------------------------------------------------
_loaded: dict[tuple, Any] = {}
_loading = threading.Lock()


def shared_reward_function(model: Optional[str] = None, *, state: Optional[str] = None,
                           context: Optional[str] = None, **options: Any) -> Any:
    """The :class:`~micro_rm.integrations.trl.MicroRMRewardFunction` for ``model`` (default
    ``$MICRO_RM_MODEL``), loaded once per process and shared by every caller: OpenRLHF and
    verl call a plain function many times, from several threads."""
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise MicroRMError(f"no MiCRo model: set ${MODEL_ENV} to a model folder (or hub id), or pass "
                           "model=...")
    state = state or os.environ.get(STATE_ENV) or None
    context = context or os.environ.get(CONTEXT_ENV) or None
    key = (str(model), state, context, tuple(sorted(options.items())))
    with _loading:
        if key not in _loaded:
            from micro_rm.integrations.trl import MicroRMRewardFunction

            _loaded[key] = MicroRMRewardFunction(str(model), context=context, state=state, **options)
        return _loaded[key]


def per_sample(values: Optional[Sequence[Any]], n: int, name: str) -> list[Any]:
    """``values`` as a list of ``n`` (None → n Nones); a wrong length is an error."""
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise MicroRMError(f"got {len(values)} {name} for {n} samples; give one per sample")
    return values
