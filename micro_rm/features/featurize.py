"""Pair records → :class:`PairFeatures`: the three vectors a MiCRo model reads per pair.

For each pair: ``chosen`` and ``rejected`` are the backbone's vectors of (prompt, response), with
the context prepended to the prompt only under ``context_in_reward``; ``route`` is the vector of
(context ⊕ prompt), or of the prompt alone (``router_input="prompt"``, or a record without a
context). All items of all three roles go through one cache call, so a prompt shared by many
pairs is encoded once and batches are length-sorted across roles.
"""

from __future__ import annotations

from typing import Any, Sequence

from micro_rm.data.records import prompt_key
from micro_rm.errors import MicroRMError
from micro_rm.features.base import Backbone, Item, PairFeatures
from micro_rm.features.cache import EncodeStats, FeatureCache

ROUTER_INPUTS = ("context", "prompt")


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


def featurize(records: Sequence[dict[str, Any]], backbone: Backbone, cache: FeatureCache, *,
              router_input: str = "context", context_in_reward: bool = False,
              batch_size: int = 32, progress: bool = True, allow_encode: bool = True
              ) -> tuple[PairFeatures, EncodeStats]:
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
    progress : show a progress bar while encoding.
    allow_encode : when false, a text missing from the cache is an error instead of encoded.

    Examples
    --------
    >>> records = build_pairs("dsp", "../shared/data/dsp-domain-specific-preference")  # doctest: +SKIP
    >>> backbone = load_backbone("default")                                 # doctest: +SKIP
    >>> features, stats = featurize(records, backbone, FeatureCache())     # doctest: +SKIP
    >>> features.chosen.shape, stats.texts                                  # doctest: +SKIP
    ((10428, 384), 5883)
    """
    if router_input not in ROUTER_INPUTS:
        raise MicroRMError(f"router_input must be one of {', '.join(ROUTER_INPUTS)}, "
                           f"got {router_input!r}")
    if not records:
        raise MicroRMError("no pair records to featurize")
    n = len(records)
    triples = [pair_items(r, backbone, router_input=router_input,
                          context_in_reward=context_in_reward) for r in records]
    items = [t[0] for t in triples] + [t[1] for t in triples] + [t[2] for t in triples]
    vectors, stats = cache.get_or_encode(items, backbone, batch_size=batch_size,
                                         progress=progress, allow_encode=allow_encode)
    features = PairFeatures(
        chosen=vectors[:n], rejected=vectors[n:2 * n], route=vectors[2 * n:],
        prompts=[prompt_key(r) for r in records],
        attributes=[r.get("attribute") for r in records],
        fingerprint=backbone.fingerprint(),
    )
    return features, stats
