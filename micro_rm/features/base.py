"""Contracts shared by backbones, the feature cache and everything that trains on features.

An *item* is what a backbone encodes into one vector: a pair of strings ``(first, second)``
(encoders: prompt and response as a text pair) or ``(text, None)`` (router inputs, decoders
after the chat template). Items are already formatted; the cache keys on
``(backbone fingerprint, item)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from micro_rm.data.records import Text

Item = tuple[str, Optional[str]]
CONTEXT_ENCODINGS = ("clauses", "separate", "joint")   # route layouts (micro_rm.features.featurize)
STORAGE_DTYPES = ("float16", "float32")                # precisions of the cache and of features folders


def recorded_encoding(context_encoding: str, context_dim: int) -> str:
    """The route layout of features or a model, also for those saved before its name was
    recorded (``""``): whole-sentence contexts (``separate``) with a context width, else ``joint``."""
    return context_encoding or ("separate" if context_dim else "joint")


class Backbone(Protocol):
    """A frozen feature extractor."""

    name: str
    dim: int

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the vectors: model id/path, weights hash or revision, pooling,
        max_length, chat template, normalisation. JSON-serialisable."""
        ...

    def reward_item(self, prompt: Text, response: Text, context: Optional[str] = None) -> Item:
        """The item whose vector a reward head reads. ``context`` is prepended to the prompt
        only when the user asks for ``--context-in-reward``."""
        ...

    def route_item(self, prompt: Text, context: Optional[str] = None) -> Item:
        """The item of the prompt (context ⊕ prompt in the ``joint`` route layout) at the
        router's input."""
        ...

    # Optional: ``context_item(context) -> Item``, the context sentence on its own (the
    # ``separate`` route layout); backbones without it encode the plain sentence.

    def token_lengths(self, items: Sequence[Item]) -> list[int]:
        """Token count of each item (for length-sorted batching)."""
        ...

    def encode(self, items: Sequence[Item]) -> np.ndarray:
        """Vectors for one batch of items, float32 ``[len(items), dim]``."""
        ...


@dataclass
class PairFeatures:
    """Cached features of N preference pairs, aligned row by row with the pair records.

    Arrays may be memory-mapped float16; consumers cast per batch.
    """

    chosen: np.ndarray                      # [N, d]   reward features of (prompt, chosen)
    rejected: np.ndarray                    # [N, d]   reward features of (prompt, rejected)
    route: np.ndarray                       # [N, d_r] router features (micro_rm.features.featurize)
    prompts: list[str]                      # [N] prompt keys, for validation splits by prompt
    attributes: list[Optional[str]] = field(default_factory=list)  # [N] for per-attribute reports
    fingerprint: dict[str, Any] = field(default_factory=dict)      # backbone that made them
    context_dim: int = 0                    # width of emb(context) at the end of ``route``; 0: joint layout
    context_encoding: str = ""              # route layout (featurize.CONTEXT_ENCODINGS); "" = from context_dim

    def __post_init__(self) -> None:
        self.context_encoding = recorded_encoding(self.context_encoding, self.context_dim)

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, index: Sequence[int] | np.ndarray) -> "PairFeatures":
        """Rows ``index`` (materialised in RAM)."""
        index = np.asarray(index, dtype=np.int64)
        return PairFeatures(
            chosen=np.asarray(self.chosen[index]), rejected=np.asarray(self.rejected[index]),
            route=np.asarray(self.route[index]),
            prompts=[self.prompts[i] for i in index],
            attributes=[self.attributes[i] for i in index] if self.attributes else [],
            fingerprint=self.fingerprint, context_dim=self.context_dim,
            context_encoding=self.context_encoding,
        )
