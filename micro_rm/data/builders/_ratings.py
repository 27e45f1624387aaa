"""Pairs from per-attribute ratings (HelpSteer2, TopicalChat, UltraFeedback): within one prompt,
every two responses whose ratings on an attribute differ make one pair for that attribute."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from typing import Mapping, Optional, Sequence

from micro_rm.data.builders._common import PairSink
from micro_rm.data.records import Text

Ratings = Mapping[str, Sequence[Optional[float]]]  # attribute -> one rating per response
RatedResponse = tuple[str, Text, Mapping[str, Optional[float]]]  # (where, response, attribute -> rating)


@dataclass(frozen=True)
class RatedPair:
    """Response ``winner`` beats response ``loser`` on ``attribute`` by ``margin`` rating points."""

    attribute: str
    winner: int
    loser: int
    margin: float


def rating_pairs(ratings: Ratings) -> tuple[list[RatedPair], Counter[str]]:
    """Every strictly ordered pair of responses per attribute, and the counts of what was left out
    (ties, and pairs where a rating is missing).

    >>> pairs, dropped = rating_pairs({"verbosity": [1, 3, 3]})
    >>> [(p.winner, p.loser, p.margin) for p in pairs], dict(dropped)
    ([(1, 0, 2.0), (2, 0, 2.0)], {'a tie': 1})
    """
    pairs: list[RatedPair] = []
    dropped: Counter[str] = Counter()
    for attribute, values in ratings.items():
        for i, j in combinations(range(len(values)), 2):
            a, b = values[i], values[j]
            if a is None or b is None:
                dropped["a missing rating"] += 1
            elif a == b:
                dropped["a tie"] += 1
            else:
                winner, loser = (i, j) if a > b else (j, i)
                # rounded: mean ratings such as 2.3333333333 leave float noise in the gap
                pairs.append(RatedPair(attribute, winner, loser, round(float(abs(a - b)), 6)))
    return pairs, dropped


def unanimous(ratings: Ratings, i: int, j: int) -> bool:
    """True when every attribute strictly prefers the same one of responses ``i`` and ``j``.

    >>> unanimous({"a": [3, 1], "b": [4, 2]}, 0, 1), unanimous({"a": [3, 1], "b": [2, 2]}, 0, 1)
    (True, False)
    """
    signs = set()
    for values in ratings.values():
        if values[i] is None or values[j] is None:
            return False
        signs.add((values[i] > values[j]) - (values[i] < values[j]))
    return len(signs) == 1 and 0 not in signs


def add_rated_pairs(sink: PairSink, prompt: Text, responses: Sequence[RatedResponse],
                    contexts: Mapping[str, str], id_prefix: str, drop_unanimous: bool = False) -> None:
    """Add the pairs of :func:`rating_pairs` over the attributes of ``contexts`` to ``sink``, each
    with its attribute's context sentence and its margin. ``drop_unanimous`` drops the pairs every
    attribute agrees on (the HelpSteer2 train filter)."""
    ratings = {a: [rating[a] for *_, rating in responses] for a in contexts}
    pairs, dropped = rating_pairs(ratings)
    sink.dropped.update(dropped)
    for pair in pairs:
        if drop_unanimous and unanimous(ratings, pair.winner, pair.loser):
            sink.dropped["all five attributes agreeing"] += 1
            continue
        (where, chosen, _), (_, rejected, _) = responses[pair.winner], responses[pair.loser]
        sink.add({"prompt": prompt, "chosen": chosen, "rejected": rejected, "attribute": pair.attribute,
                  "context": contexts[pair.attribute], "margin": pair.margin,
                  "id": f"{id_prefix}-{pair.attribute}-{pair.winner}-{pair.loser}"}, where, drop_degenerate=True)
