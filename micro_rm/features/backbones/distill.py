"""Distil a transformer encoder into a static token-embedding table (the model2vec recipe).

1. Each vocabulary token ``t`` is encoded alone as ``[CLS] t [SEP]``; its vector is the output at
   ``t`` (the mean over non-special tokens, the pool the static backbone applies).
2. PCA to ``dim`` dimensions, fitted on the tokens that occur in text, signs fixed.
3. SIF weighting ``a / (a + p(r))`` with Zipf ``p(r) ∝ 1/r``, the vocabulary order standing in for
   the frequency rank (WordPiece vocabularies are roughly in frequency order), so frequent tokens
   weigh less in a mean. ``a``: BENCHMARKS.md, "The static backbone's SIF weight".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from micro_rm.progress import progress_bar

SIF_A = 3e-6


def regular_token_ids(tokenizer: Any) -> np.ndarray:
    """Ids of the tokens that can appear in tokenized text, in vocabulary order."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    unused = {i for tok, i in vocab.items() if tok.startswith("[unused") and tok.endswith("]")}
    return np.array(sorted(set(vocab.values()) - special - unused))


@torch.inference_mode()
def embed_vocabulary(model: Any, tokenizer: Any, batch_size: int = 2048) -> np.ndarray:
    """The encoder's output for each token id in context ``[CLS] t [SEP]``: [V, hidden] float32."""
    size = len(tokenizer)
    out = np.zeros((size, model.config.hidden_size), dtype=np.float32)
    for start in progress_bar(range(0, size, batch_size), desc="distilling static backbone", unit="batch"):
        ids = torch.arange(start, min(start + batch_size, size))
        input_ids = torch.stack([torch.full_like(ids, tokenizer.cls_token_id), ids,
                                 torch.full_like(ids, tokenizer.sep_token_id)], dim=1)  # [b, 3]
        mask = torch.ones_like(input_ids)
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        out[start:start + len(ids)] = hidden[:, 1].float().numpy()
    return out


def pca(vectors: np.ndarray, fit_rows: np.ndarray, dim: int) -> np.ndarray:
    """Project all ``vectors`` on the top ``dim`` principal axes of ``vectors[fit_rows]``, each
    signed so that its largest loading is positive (SVD signs are arbitrary)."""
    fit = vectors[fit_rows].astype(np.float64)
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    axes = vt[:dim]                                                         # [dim, hidden]
    axes *= np.sign(axes[np.arange(dim), np.abs(axes).argmax(axis=1)])[:, None]
    return ((vectors - mean) @ axes.T).astype(np.float32)


def sif_weights(size: int, ranked_ids: np.ndarray, a: float = SIF_A) -> np.ndarray:
    """``a / (a + p(r))`` with Zipf ``p(r) ∝ 1/r`` for the token of rank ``r`` (order of
    ``ranked_ids``); 0 for tokens that never occur in text."""
    inverse_rank = 1.0 / np.arange(1, len(ranked_ids) + 1)
    probability = inverse_rank / inverse_rank.sum()
    weights = np.zeros(size, dtype=np.float32)
    weights[ranked_ids] = a / (a + probability)
    return weights


def distill_static(model: Any, tokenizer: Any, dim: int = 256) -> np.ndarray:
    """The static table ``[vocab size, dim]`` float32 for ``model`` (see the module docstring)."""
    regular = regular_token_ids(tokenizer)
    vectors = pca(embed_vocabulary(model, tokenizer), regular, dim)
    return vectors * sif_weights(len(vectors), regular)[:, None]
