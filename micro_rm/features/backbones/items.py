"""How (prompt, response, context) becomes an item, and how items become token ids.

- **pair** (encoders, the static backbone): ``(prompt, response)`` as a text pair; router items
  are ``(prompt, None)``.
- **chat** (decoders with a chat template): the template is applied here, so the strings carry
  the special tokens. A reward item is still split in two, ``(prompt, the rest)``, so that
  ``longest_first`` truncation protects the response.

In both formats the context goes before the prompt.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from micro_rm.data.records import Message, Text, render_text
from micro_rm.features.base import Item


def with_context(text: str, context: Optional[str]) -> str:
    """``context`` and ``text`` separated by a blank line, or ``text`` alone.

    >>> with_context("How do I sort a list?", "The user is a beginner.")
    'The user is a beginner.\\n\\nHow do I sort a list?'
    """
    return f"{context}\n\n{text}" if context else text


def pair_reward_item(prompt: Text, response: Text, context: Optional[str] = None) -> Item:
    """The text pair (context ⊕ prompt, response).

    >>> pair_reward_item("Hi", "Hello!")
    ('Hi', 'Hello!')
    """
    return with_context(render_text(prompt), context), render_text(response)


def pair_route_item(prompt: Text, context: Optional[str] = None) -> Item:
    """The single text context ⊕ prompt.

    >>> pair_route_item("Hi", "Be brief.")
    ('Be brief.\\n\\nHi', None)
    """
    return with_context(render_text(prompt), context), None


def as_messages(text: Text, role: str) -> list[Message]:
    """A string becomes one message with ``role``; a message list is copied."""
    return [{"role": role, "content": text}] if isinstance(text, str) else list(text)


class ChatFormatter:
    """Applies a tokenizer's chat template. The context becomes a system message, or a prefix of
    the first user turn for templates that refuse a system role (Gemma's)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.system_role = self._accepts_system_role()

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _accepts_system_role(self) -> bool:
        from jinja2.exceptions import TemplateError
        try:
            self._render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                         add_generation_prompt=True)
        except TemplateError:
            return False
        return True

    def _prompt_messages(self, prompt: Text, context: Optional[str]) -> list[Message]:
        messages = as_messages(prompt, "user")
        if not context:
            return messages
        if self.system_role:
            if messages and messages[0]["role"] == "system":
                merged = with_context(messages[0]["content"], context)
                return [{"role": "system", "content": merged}, *messages[1:]]
            return [{"role": "system", "content": context}, *messages]
        first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), 0)
        messages[first_user] = {**messages[first_user],
                                "content": with_context(messages[first_user]["content"], context)}
        return messages

    def reward_item(self, prompt: Text, response: Text, context: Optional[str] = None) -> Item:
        """``(prompt turn up to the assistant header, response turn)``; the whole conversation
        as one string when the template renders the prompt differently inside it."""
        messages = self._prompt_messages(prompt, context)
        head = self._render(messages, add_generation_prompt=True)
        full = self._render(messages + as_messages(response, "assistant"),
                            add_generation_prompt=False)
        if full.startswith(head) and len(full) > len(head):
            return head, full[len(head):]
        return full, None

    def context_item(self, context: str) -> Item:
        """The context alone, in the message the reward items carry it in; the plain sentence if
        the template refuses a conversation of one message."""
        from jinja2.exceptions import TemplateError
        role = "system" if self.system_role else "user"
        try:
            return self._render([{"role": role, "content": context}], add_generation_prompt=False), None
        except TemplateError:
            return context, None

    def route_item(self, prompt: Text, context: Optional[str] = None) -> Item:
        """The prompt up to the assistant header: the paper's "end of the prompt"."""
        return self._render(self._prompt_messages(prompt, context), add_generation_prompt=True), None


def tokenize_items(tokenizer: Any, items: Sequence[Item], *, max_length: int,
                   add_special_tokens: bool) -> list[dict[str, list[int]]]:
    """Token ids (and token type ids) of each item, unpadded, truncated ``longest_first`` to
    ``max_length``. Pairs and single texts go in two calls: a tokenizer batch cannot mix them."""
    out: list[dict[str, list[int]]] = [{} for _ in items]
    for is_pair in (True, False):
        index = [i for i, (_, second) in enumerate(items) if (second is not None) == is_pair]
        if not index:
            continue
        encoded = tokenizer(
            [items[i][0] for i in index],
            [items[i][1] for i in index] if is_pair else None,
            add_special_tokens=add_special_tokens, truncation="longest_first",
            max_length=max_length, return_attention_mask=False)
        for row, i in enumerate(index):
            out[i] = {key: values[row] for key, values in encoded.items()}
    return out
