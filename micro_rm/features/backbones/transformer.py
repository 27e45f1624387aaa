"""A Hugging Face model as a frozen backbone: encoders, causal LMs, sequence-classification RMs.

Encoders are mean-pooled; decoders give the hidden state of the last real token, found from the
attention mask, never from the pad id (many decoders pad with EOS). Position ids come from the
mask too, so left and right padding give the same vectors.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, Optional, Sequence

import numpy as np
import torch

from micro_rm.data.records import Text
from micro_rm.errors import MicroRMError
from micro_rm.features.base import Item, check_device
from micro_rm.features.backbones.items import (ChatFormatter, pair_reward_item, pair_route_item,
                                               tokenize_items)

# Tried in order when a tokenizer has no pad token, before falling back to EOS.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]")
# An arbitrary hub model's own limit may be 128K tokens; this keeps a CPU run finite.
MAX_LENGTH_CAP = 1024


def detect_pooling(config: Any) -> str:
    """``"last"`` for decoders (a causal LM that is not also a masked LM), else ``"mean"``."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    if any(arch.endswith("ForCausalLM") for arch in (config.architectures or [])):
        return "last"
    model_type = config.model_type
    causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return "last" if causal and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "mean"


def ensure_pad_token(tokenizer: Any) -> None:
    """Give a tokenizer without a pad token one from its vocabulary: a pad token, else UNK, else
    EOS (safe because pooling reads the mask)."""
    if tokenizer.pad_token is not None:
        return
    vocab = tokenizer.get_vocab()
    candidates = [*PAD_CANDIDATES, tokenizer.unk_token]
    pad = next((tok for tok in candidates if tok is not None and tok in vocab
                and tok != tokenizer.eos_token), tokenizer.eos_token)
    if pad is None:
        raise MicroRMError(f"tokenizer {tokenizer.name_or_path!r} has no pad, unk or eos token; "
                           "pick another backbone")
    tokenizer.pad_token = pad


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Mean over attended positions, or the hidden state at the last one: hidden [B, L, d],
    mask [B, L] of 0/1 → [B, d] float32."""
    hidden = hidden.float()
    if how == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)                     # [B, L, 1]
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    positions = torch.arange(mask.shape[1], device=mask.device)            # [L]
    last = (mask * positions).argmax(dim=1)                               # [B], any padding side
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pad_batch(encodings: list[dict[str, list[int]]], pad_id: int,
              side: str) -> dict[str, torch.Tensor]:
    """Stack unpadded encodings into tensors with an attention mask, padding on ``side``."""
    width = max(len(e["input_ids"]) for e in encodings)
    batch: dict[str, torch.Tensor] = {}
    for key in (*encodings[0].keys(), "attention_mask"):
        fill = pad_id if key == "input_ids" else 0
        rows = []
        for e in encodings:
            values = e[key] if key != "attention_mask" else [1] * len(e["input_ids"])
            padding = [fill] * (width - len(values))
            rows.append(padding + values if side == "left" else values + padding)
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


class TransformerBackbone:
    """A frozen ``transformers.AutoModel`` with its tokenizer; see :func:`load_transformer`."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, pooling: str, max_length: int,
                 dtype: str, device: str, batch_size: int, identity: dict[str, Any]):
        self.model, self.tokenizer = model, tokenizer
        self.name, self.pooling, self.max_length = name, pooling, max_length
        self.dtype, self.device, self.batch_size = dtype, device, batch_size
        self.dim = model.config.get_text_config().hidden_size
        self.identity = identity
        self.chat = ChatFormatter(tokenizer) if tokenizer.chat_template else None
        accepted = inspect.signature(model.forward).parameters
        self._inputs = set(accepted) & {"input_ids", "attention_mask", "token_type_ids", "position_ids"}
        # Last-token pooling must keep the end of the text, so truncation cuts the start.
        tokenizer.truncation_side = "left" if pooling == "last" else "right"

    def fingerprint(self) -> dict[str, Any]:
        template = self.tokenizer.chat_template
        return {"kind": "transformer",
                "spec": {"name": self.name, "max_length": self.max_length, "dtype": self.dtype,
                         "pooling": self.pooling},
                **self.identity, "pooling": self.pooling, "max_length": self.max_length, "dtype": self.dtype,
                "format": "chat" if self.chat else "pair",
                "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
                "truncation": f"longest_first/{self.tokenizer.truncation_side}", "normalize": False}

    def reward_item(self, prompt: Text, response: Text, context: Optional[str] = None) -> Item:
        if self.chat:
            return self.chat.reward_item(prompt, response, context)
        return pair_reward_item(prompt, response, context)

    def context_item(self, context: str) -> Item:
        return self.chat.context_item(context) if self.chat else (context, None)

    def route_item(self, prompt: Text, context: Optional[str] = None) -> Item:
        return self.chat.route_item(prompt, context) if self.chat else pair_route_item(prompt, context)

    def _tokenize(self, items: Sequence[Item]) -> list[dict[str, list[int]]]:
        # Chat items already hold the template's special tokens as text.
        return tokenize_items(self.tokenizer, items, max_length=self.max_length,
                              add_special_tokens=self.chat is None)

    def token_lengths(self, items: Sequence[Item]) -> list[int]:
        return [len(e["input_ids"]) for e in self._tokenize(items)]

    @torch.inference_mode()
    def _encode_batch(self, items: Sequence[Item]) -> np.ndarray:
        batch = pad_batch(self._tokenize(items), self.tokenizer.pad_token_id,
                          self.tokenizer.padding_side)
        batch["position_ids"] = (batch["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)   # any padding side
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in self._inputs}
        hidden = self.model(**inputs).last_hidden_state
        return pool(hidden, inputs["attention_mask"], self.pooling).cpu().numpy()

    def encode(self, items: Sequence[Item]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([self._encode_batch(items[i:i + self.batch_size])
                               for i in range(0, len(items), self.batch_size)])


def load_transformer(source: str, *, name: str, identity: dict[str, Any],
                     max_length: Optional[int], dtype: str, device: str, pooling: str,
                     batch_size: int) -> TransformerBackbone:
    """Load ``source`` (a folder or hub id) frozen; sequence-classification checkpoints load as
    their base model. ``identity`` names the weights in the fingerprint; ``max_length=None`` takes
    the model's limit, at most 1024."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from micro_rm.progress import silence_transformers_bars
    check_device(device)
    silence_transformers_bars()
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.is_fast:
        raise MicroRMError(f"backbone {name!r} has no fast tokenizer (tokenizer.json); "
                           "micro-rm needs one for length-sorted batching")
    ensure_pad_token(tokenizer)
    model = AutoModel.from_pretrained(source, dtype=getattr(torch, dtype)).to(device).eval()
    model.requires_grad_(False)
    if max_length is None:
        max_length = min(tokenizer.model_max_length, MAX_LENGTH_CAP,
                         getattr(config.get_text_config(), "max_position_embeddings", MAX_LENGTH_CAP))
    return TransformerBackbone(
        model, tokenizer, name=name, max_length=max_length, dtype=dtype, device=device,
        batch_size=batch_size, identity=identity,
        pooling=detect_pooling(config) if pooling == "auto" else pooling)
