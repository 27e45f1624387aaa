"""Pair records → :class:`PairFeatures`: the three vectors a MiCRo model reads per pair.

For each pair: ``chosen`` and ``rejected`` are the backbone's vectors of (prompt, response), with
the context prepended to the prompt only under ``context_in_reward``; ``route`` is the vector of
(context ⊕ prompt), or of the prompt alone (``router_input="prompt"``, or a record without a
context). All items of all three roles go through one cache call, so a prompt shared by many
pairs is encoded once and batches are length-sorted across roles.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from micro_rm.data.records import prompt_key
from micro_rm.errors import MicroRMError
from micro_rm.features.base import Backbone, Item, PairFeatures
from micro_rm.features.cache import EncodeStats, FeatureCache
from micro_rm.features.store import FeatureWriter, load_features

ROUTER_INPUTS = ("context", "prompt")
OUT_CHUNK = 16_384  # pairs looked up and written at once by ``featurize(..., out=...)``


def pair_items(record: dict[str, Any], backbone: Backbone, *, router_input: str = "context",
               context_in_reward: bool = False) -> tuple[Item, Item, Item]:
    """The (chosen, rejected, route) items of one normalised record.

    >>> pair_items({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.",
    ...             "context": "a polite user"}, backbone)          # doctest: +SKIP
    (('Hi', 'Hello!'), ('Hi', 'Go away.'), ('a polite user\\n\\nHi', None))
    """
    context = record.get("context")
    reward_context = context if context_in_reward else None
    return (
        backbone.reward_item(record["prompt"], record["chosen"], reward_context),
        backbone.reward_item(record["prompt"], record["rejected"], reward_context),
        backbone.route_item(record["prompt"], context if router_input == "context" else None),
    )


def record_items(records: Sequence[dict[str, Any]], backbone: Backbone, *,
                 router_input: str = "context", context_in_reward: bool = False) -> list[Item]:
    """The items of all pairs, role by role: N chosen, then N rejected, then N route items
    (one list, so that one cache call deduplicates and length-sorts across roles)."""
    if router_input not in ROUTER_INPUTS:
        raise MicroRMError(f"router_input must be one of {', '.join(ROUTER_INPUTS)}, "
                           f"got {router_input!r}")
    triples = [pair_items(r, backbone, router_input=router_input,
                          context_in_reward=context_in_reward) for r in records]
    return [t[0] for t in triples] + [t[1] for t in triples] + [t[2] for t in triples]


def featurize(records: Sequence[dict[str, Any]], backbone: Backbone, cache: FeatureCache, *,
              router_input: str = "context", context_in_reward: bool = False,
              batch_size: int = 32, tokens_per_batch: Optional[int] = None,
              progress: bool = True, allow_encode: bool = True,
              out: Optional[str | os.PathLike] = None) -> tuple[PairFeatures, EncodeStats]:
    """Features of normalised pair records (see :func:`micro_rm.data.records.normalize_pair`).

    Parameters
    ----------
    records : pair records, e.g. from :func:`micro_rm.data.readers.read_pairs`.
    backbone : the frozen feature extractor.
    cache : where vectors are looked up and new ones stored.
    router_input : ``"context"`` (the router reads context ⊕ prompt) or ``"prompt"``.
    context_in_reward : prepend the context to the prompt of the reward items too (the paper's
        RPR setting); say which one an experiment used.
    batch_size : texts per backbone call.
    tokens_per_batch : instead of ``batch_size``, fill each backbone call up to this many padded
        tokens (GPU runs; see :func:`micro_rm.features.cache.plan_batches`).
    progress : show a progress bar while encoding.
    allow_encode : when false, a text missing from the cache is an error instead of encoded.
    out : write the features into this folder as fp16 ``.npy`` files (see
        :mod:`micro_rm.features.store`) and return them memory-mapped; memory stays bounded by
        a chunk of pairs, however many there are. Without ``out`` the arrays are float32 in RAM.

    Examples
    --------
    >>> records = build_pairs("dsp", "../shared/data/dsp-domain-specific-preference")  # doctest: +SKIP
    >>> backbone = load_backbone("default")                                 # doctest: +SKIP
    >>> features, stats = featurize(records, backbone, FeatureCache())     # doctest: +SKIP
    >>> features.chosen.shape, stats.texts                                  # doctest: +SKIP
    ((10428, 384), 5883)
    """
    if not records:
        raise MicroRMError("no pair records to featurize")
    n = len(records)
    items = record_items(records, backbone, router_input=router_input,
                         context_in_reward=context_in_reward)
    if out is not None:
        stats = cache.fill(items, backbone, batch_size=batch_size,
                           tokens_per_batch=tokens_per_batch, progress=progress,
                           allow_encode=allow_encode)
        return _write_features(records, items, backbone, cache, out), stats
    vectors, stats = cache.get_or_encode(items, backbone, batch_size=batch_size,
                                         tokens_per_batch=tokens_per_batch,
                                         progress=progress, allow_encode=allow_encode)
    features = PairFeatures(
        chosen=vectors[:n], rejected=vectors[n:2 * n], route=vectors[2 * n:],
        prompts=[prompt_key(r) for r in records],
        attributes=[r.get("attribute") for r in records],
        fingerprint=backbone.fingerprint(),
    )
    return features, stats


def _write_features(records: Sequence[dict[str, Any]], items: list[Item], backbone: Backbone,
                    cache: FeatureCache, out: str | os.PathLike) -> PairFeatures:
    """Copy the (cached) vectors of ``items`` into a features folder, ``OUT_CHUNK`` pairs at a
    time, in the storage dtype of the cache."""
    n = len(records)
    fingerprint = backbone.fingerprint()
    with FeatureWriter(out, pairs=n, reward_dim=backbone.dim, route_dim=backbone.dim,
                       fingerprint=fingerprint, dtype=cache.dtype) as writer:
        for start in range(0, n, OUT_CHUNK):
            rows = range(start, min(start + OUT_CHUNK, n))
            chunk = [items[role * n + i] for role in range(3) for i in rows]
            vectors, _ = cache.get_or_encode(chunk, backbone, progress=False, allow_encode=False)
            chosen, rejected, route = np.split(vectors, 3)
            writer.write(start, chosen, rejected, route)
        writer.close([prompt_key(r) for r in records], [r.get("attribute") for r in records])
    return load_features(out)
