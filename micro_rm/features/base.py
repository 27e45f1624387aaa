"""Contracts shared by backbones, the feature cache and everything that trains on features.

An *item* is what a backbone encodes into one vector, already formatted: a text pair
``(first, second)`` or ``(text, None)``. The cache keys on ``(backbone fingerprint, item)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Optional, Protocol, Sequence

import numpy as np
from pydantic import Field

from micro_rm.data.records import Text
from micro_rm.errors import MicroRMError
from micro_rm.schema import choice, config_class

Item = tuple[str, Optional[str]]
ROUTER_INPUTS = ("context", "prompt")                  # what the router reads (micro_rm.features.featurize)
CONTEXT_ENCODINGS = ("clauses", "separate", "joint")   # route layouts (micro_rm.features.featurize)
STORAGE_DTYPES = ("float16", "float32")                # precisions of the cache and of features folders


def recorded_encoding(context_encoding: str, context_dim: int) -> str:
    """The route layout of features or a model, also for those saved before its name was
    recorded (``""``): whole-sentence contexts (``separate``) with a context width, else ``joint``."""
    return context_encoding or ("separate" if context_dim else "joint")


def check_device(device: str) -> str:
    """``device`` if torch can use it here; a missing GPU is one line, not a crash at load.

    >>> check_device("cpu")
    'cpu'
    """
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise MicroRMError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps")
    if device == "cpu":
        return device
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MicroRMError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise MicroRMError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                               "device(s), numbered from 0")
    elif not torch.backends.mps.is_available():
        raise MicroRMError("--device mps: Apple's MPS is not available on this machine; use --device cpu")
    return device


@config_class
class FeatureSettings:
    """How pair records become features, beside the backbone's fingerprint. ``featurize`` stamps
    them on its features, ``fit_stage1`` records them in the model's config, and every reader of a
    model builds its features with them.

    >>> FeatureSettings(context_in_reward=True).record()
    {'router_input': 'context', 'context_in_reward': True}
    """

    router_input: choice(ROUTER_INPUTS, "What the router reads: context (context + prompt; the RPR protocol) "
                         "or prompt (the HelpSteer2 protocol).") = "context"
    context_in_reward: Annotated[bool, Field(strict=True, description=(
        "Prepend the context to the prompt of the reward features too (the paper's RPR setting)."))] = False
    context_encoding: choice(CONTEXT_ENCODINGS, "Router input layout: clauses (the prompt's and the context's "
                             "embeddings side by side, the context's pooled over its clauses; prototype routing "
                             "that generalises to new phrasings), separate (the same with the context's sentence "
                             "embedding alone) or joint (one embedding of context ⊕ prompt through the MLP, the "
                             "paper's).") = "clauses"

    @classmethod
    def from_options(cls, router_input: str, context_in_reward: bool, context_encoding: str) -> "FeatureSettings":
        """The settings of the command-line options; a bad value names its option (``--router-input``)."""
        return cls._named(lambda name: "--" + name.replace("_", "-"), router_input=router_input,
                          context_in_reward=context_in_reward, context_encoding=context_encoding)

    @classmethod
    def from_record(cls, feature: dict[str, Any], context_encoding: str) -> "FeatureSettings":
        """The settings a model config recorded (``feature``, and its resolved ``context_encoding``);
        ``{}`` (configs saved before they were) reads as the defaults."""
        unknown = sorted(set(feature) - {"router_input", "context_in_reward"})
        if unknown:
            raise MicroRMError(f"`feature` has unknown setting(s) {', '.join(map(repr, unknown))}; "
                               "known: router_input, context_in_reward")
        return cls._named(lambda name: f"`{name}`" if name == "context_encoding" else f"`feature.{name}`",
                          **feature, context_encoding=context_encoding)

    @classmethod
    def _named(cls, spell: Any, **values: Any) -> "FeatureSettings":
        """``cls(**values)``; a refused value is named as ``spell(field name)``."""
        try:
            return cls(**values)
        except MicroRMError as exc:
            name, rest = str(exc).split(" ", 1)
            raise MicroRMError(f"{spell(name.strip('`'))} {rest}") from None

    def record(self) -> dict[str, Any]:
        """What a model config's ``feature`` holds (the route layout has a field of its own)."""
        return {"router_input": self.router_input, "context_in_reward": self.context_in_reward}


class Backbone(Protocol):
    """A frozen feature extractor."""

    name: str
    dim: int

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the vectors (weights, pooling, max_length, ...), as JSON."""

    def reward_item(self, prompt: Text, response: Text, context: Optional[str] = None) -> Item:
        """The item whose vector a reward head reads (``context`` only under ``--context-in-reward``)."""

    def route_item(self, prompt: Text, context: Optional[str] = None) -> Item:
        """The router's item of the prompt (context ⊕ prompt in the ``joint`` layout)."""

    # Optional: ``context_item(context) -> Item``, the context sentence on its own (the
    # ``separate`` route layout); backbones without it encode the plain sentence.

    def token_lengths(self, items: Sequence[Item]) -> list[int]:
        """Token count of each item (for length-sorted batching)."""

    def encode(self, items: Sequence[Item]) -> np.ndarray:
        """Vectors for one batch of items, float32 ``[len(items), dim]``."""


@dataclass
class PairFeatures:
    """Features of N preference pairs, row by row; arrays may be memory-mapped float16."""

    chosen: np.ndarray                      # [N, d]   reward features of (prompt, chosen)
    rejected: np.ndarray                    # [N, d]   reward features of (prompt, rejected)
    route: np.ndarray                       # [N, d_r] router features (micro_rm.features.featurize)
    prompts: list[str]                      # [N] prompt keys, for validation splits by prompt
    attributes: list[Optional[str]] = field(default_factory=list)  # [N] for per-attribute reports
    fingerprint: dict[str, Any] = field(default_factory=dict)      # backbone that made them
    context_dim: int = 0                    # width of emb(context) at the end of ``route``; 0: joint layout
    context_encoding: str = ""              # route layout (featurize.CONTEXT_ENCODINGS); "" = from context_dim
    router_input: str = "context"           # the rest of the FeatureSettings they were built with
    context_in_reward: bool = False

    def __post_init__(self) -> None:
        self.context_encoding = recorded_encoding(self.context_encoding, self.context_dim)

    @property
    def settings(self) -> FeatureSettings:
        """The feature settings these features were built with (set by ``featurize``)."""
        return FeatureSettings(self.router_input, self.context_in_reward, self.context_encoding)

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, index: Sequence[int] | np.ndarray) -> "PairFeatures":
        """Rows ``index`` (materialised in RAM)."""
        index = np.asarray(index, dtype=np.int64)
        return replace(self, chosen=np.asarray(self.chosen[index]), rejected=np.asarray(self.rejected[index]),
                       route=np.asarray(self.route[index]), prompts=[self.prompts[i] for i in index],
                       attributes=[self.attributes[i] for i in index] if self.attributes else [])
