"""Pair records → :class:`PairFeatures`: the three vectors a MiCRo model reads per pair.

``chosen`` and ``rejected`` are the backbone's vectors of (prompt, response), with the context
before the prompt only under ``context_in_reward``; ``route`` is what the router reads, in one of
three layouts (``context_encoding``; why: docs/personalization.md):

- ``clauses`` (default): [emb(prompt); emb(context)], emb(context) the normalised mean of the unit
  vectors of the sentence and of each of its clauses (:func:`context_views`). Width 2d.
- ``separate``: [emb(prompt); emb(context)], the context encoded as a sentence of its own (a system
  message for chat backbones). Width 2d. A pair without a context (or ``router_input="prompt"``)
  gets zeros for emb(context) in both layouts: "nothing known about this user".
- ``joint``: emb(context ⊕ prompt) as one text (the paper's). Width d.

All items of all roles go through one cache call, so a prompt or a context shared by many pairs is
encoded once.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from functools import lru_cache
from typing import Any, Optional, Sequence

import numpy as np

from micro_rm.data.records import prompt_key
from micro_rm.errors import MicroRMError
from micro_rm.features.base import Backbone, FeatureSettings, Item, PairFeatures
from micro_rm.features.cache import EncodeStats, FeatureCache
from micro_rm.features.store import FeatureWriter, load_features

CLAUSE_BREAK = re.compile(r"[.,;:!?]")
NO_CONTEXT = ""  # the context item of a record without one (encoded, then zeroed by ``route_matrix``)
OUT_CHUNK = 16_384  # pairs looked up and written at once by ``featurize(..., out=...)``


@lru_cache(maxsize=65_536)
def context_views(context: str) -> tuple[str, ...]:
    """The sentences whose vectors make emb(context) under ``clauses``: the context itself, then
    each distinct clause of two words or more that is not the whole context.

    >>> context_views("I am a researcher; answer rigorously, please.")
    ('I am a researcher; answer rigorously, please.', 'I am a researcher', 'answer rigorously')
    >>> context_views("Be brief.")
    ('Be brief.',)
    """
    whole = CLAUSE_BREAK.sub(" ", context).split()
    clauses = (c.strip() for c in CLAUSE_BREAK.split(context))
    return tuple(dict.fromkeys([context] + [c for c in clauses if len(c.split()) >= 2 and c.split() != whole]))


def route_items(backbone: Backbone, prompt: Any, context: Optional[str], *,
                context_encoding: str = "clauses") -> list[Item]:
    """The router's items of one prompt: [prompt, context] (``separate``), [prompt, each of
    :func:`context_views`] (``clauses``) or [context ⊕ prompt] (``joint``).

    >>> route_items(backbone, "Hi", "Be brief.")                  # doctest: +SKIP
    [('Hi', None), ('Be brief.', None)]
    """
    if context_encoding == "joint":
        return [backbone.route_item(prompt, context)]
    views = context_views(context) if context and context_encoding == "clauses" else [context or NO_CONTEXT]
    # A context sentence alone: the backbone's optional ``context_item``, else the plain sentence.
    context_item = getattr(backbone, "context_item", lambda sentence: (sentence, None))
    return [backbone.route_item(prompt, None)] + [context_item(v) for v in views]


def route_item_counts(contexts: Sequence[Optional[str]], context_encoding: str) -> np.ndarray:
    """How many route items :func:`route_items` makes for each pair, from its context alone.

    >>> route_item_counts(["Be brief, in plain words.", None], "clauses").tolist()
    [4, 2]
    """
    if context_encoding != "clauses":
        return np.full(len(contexts), 1 if context_encoding == "joint" else 2, dtype=np.int64)
    return np.array([1 + (len(context_views(c)) if c else 1) for c in contexts], dtype=np.int64)


def route_matrix(vectors: np.ndarray, contexts: Sequence[Optional[str]], context_dim: int,
                 context_encoding: str = "clauses") -> np.ndarray:
    """The route features [N, d_r] from the vectors of N pairs' route items (in the order of
    :func:`route_items`, pair after pair).

    >>> route_matrix(np.ones((4, 2)), ["Be brief.", None], context_dim=2, context_encoding="separate").tolist()
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if context_encoding != "clauses":
        route = vectors.reshape(len(contexts), -1).copy()
        if context_dim:
            route[[not c for c in contexts], -context_dim:] = 0.0
        return route
    if not len(contexts):
        return np.zeros((0, vectors.shape[1] + context_dim), dtype=np.float32)
    counts = route_item_counts(contexts, context_encoding)
    if int(counts.sum()) != len(vectors):
        raise MicroRMError(f"route_matrix: {len(vectors)} vectors for {len(contexts)} pairs' route "
                           f"items, expected {int(counts.sum())}")
    views = counts - 1                                                       # context views per pair
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])                    # each pair's prompt row
    rest = np.ones(len(vectors), dtype=bool)
    rest[first] = False
    unit = vectors[rest] / np.maximum(np.linalg.norm(vectors[rest], axis=1, keepdims=True), 1e-12)
    mean = np.add.reduceat(unit, np.concatenate([[0], np.cumsum(views)[:-1]]), axis=0) / views[:, None]
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    mean[[not c for c in contexts]] = 0.0
    return np.concatenate([vectors[first], mean], axis=1).astype(np.float32)


def record_items(records: Sequence[dict[str, Any]], backbone: Backbone, *,
                 router_input: str = "context", context_in_reward: bool = False,
                 context_encoding: str = "clauses") -> list[Item]:
    """The items of all pairs: N chosen, then N rejected, then the route items of each pair."""
    settings = FeatureSettings(router_input, context_in_reward, context_encoding)   # checks the values
    contexts = route_contexts(records, router_input)
    reward_context = [r.get("context") if context_in_reward else None for r in records]
    return ([backbone.reward_item(r["prompt"], r["chosen"], c) for r, c in zip(records, reward_context)]
            + [backbone.reward_item(r["prompt"], r["rejected"], c) for r, c in zip(records, reward_context)]
            + [item for r, c in zip(records, contexts)
               for item in route_items(backbone, r["prompt"], c, context_encoding=settings.context_encoding)])


def route_contexts(records: Sequence[dict[str, Any]], router_input: str) -> list[Optional[str]]:
    """The context each record's router reads: its own, or none under ``router_input="prompt"``."""
    return [r.get("context") if router_input == "context" else None for r in records]


def featurize(records: Sequence[dict[str, Any]], backbone: Backbone, cache: FeatureCache, *,
              router_input: str = "context", context_in_reward: bool = False,
              context_encoding: str = "clauses", batch_size: int = 32, tokens_per_batch: Optional[int] = None,
              progress: bool = True, allow_encode: bool = True,
              out: Optional[str | os.PathLike] = None) -> tuple[PairFeatures, EncodeStats]:
    """Features of normalised pair records, built with the given
    :class:`~micro_rm.features.base.FeatureSettings`; batching options as in
    :func:`~micro_rm.features.batching.plan_batches`. With ``out`` the features are written to
    that folder (:mod:`micro_rm.features.store`) and come back memory-mapped, with memory bounded
    by a chunk of pairs; without it they are float32 in RAM.

    >>> records = build_pairs("dsp", "../shared/data/dsp-domain-specific-preference")  # doctest: +SKIP
    >>> backbone = load_backbone("default")                                 # doctest: +SKIP
    >>> features, stats = featurize(records, backbone, FeatureCache())     # doctest: +SKIP
    >>> features.chosen.shape, stats.texts                                  # doctest: +SKIP
    ((10428, 384), 5883)
    """
    if not records:
        raise MicroRMError("no pair records to featurize")
    settings = FeatureSettings(router_input, context_in_reward, context_encoding)   # checks the values
    n = len(records)
    items = record_items(records, backbone, **asdict(settings))
    context_dim = 0 if context_encoding == "joint" else backbone.dim   # width of emb(context) in ``route``
    if out is not None:
        stats = cache.fill(items, backbone, batch_size=batch_size, tokens_per_batch=tokens_per_batch,
                           progress=progress, allow_encode=allow_encode)
        return _write_features(records, items, backbone, cache, out, settings, context_dim), stats
    vectors, stats = cache.get_or_encode(items, backbone, batch_size=batch_size, tokens_per_batch=tokens_per_batch,
                                         progress=progress, allow_encode=allow_encode)
    route = route_matrix(vectors[2 * n:], route_contexts(records, router_input), context_dim, context_encoding)
    return PairFeatures(
        chosen=vectors[:n], rejected=vectors[n:2 * n],
        route=route.astype(cache.dtype).astype(np.float32),    # pooled in float32; stored like ``out``
        prompts=[prompt_key(r) for r in records], attributes=[r.get("attribute") for r in records],
        fingerprint=backbone.fingerprint(), context_dim=context_dim, **asdict(settings),
    ), stats


def _write_features(records: Sequence[dict[str, Any]], items: list[Item], backbone: Backbone, cache: FeatureCache,
                    out: str | os.PathLike, settings: FeatureSettings, context_dim: int) -> PairFeatures:
    """Copy the cached vectors of ``items`` into a features folder, ``OUT_CHUNK`` pairs at a time."""
    n, encoding = len(records), settings.context_encoding
    contexts = route_contexts(records, settings.router_input)
    ends = 2 * n + np.cumsum(route_item_counts(contexts, encoding))   # each pair's route items end
    starts = np.concatenate([[2 * n], ends[:-1]])
    with FeatureWriter(out, pairs=n, reward_dim=backbone.dim, route_dim=backbone.dim + context_dim,
                       fingerprint=backbone.fingerprint(), dtype=cache.dtype, context_dim=context_dim,
                       settings=settings) as writer:
        for start in range(0, n, OUT_CHUNK):
            stop = min(start + OUT_CHUNK, n)
            chunk = items[start:stop] + items[n + start:n + stop] + items[starts[start]:ends[stop - 1]]
            vectors, _ = cache.get_or_encode(chunk, backbone, progress=False, allow_encode=False)
            m = stop - start
            writer.write(start, vectors[:m], vectors[m:2 * m],
                         route_matrix(vectors[2 * m:], contexts[start:stop], context_dim, encoding))
        writer.close([prompt_key(r) for r in records], [r.get("attribute") for r in records])
    return load_features(out)
