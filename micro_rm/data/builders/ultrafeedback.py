"""UltraFeedback (openbmb/UltraFeedback): four GPT-4 ratings per completion (``SCHEMA``; a
``Rating`` is a string such as "4" or "N/A"); per aspect, the higher-rated of two completions wins.
"""

from __future__ import annotations

from typing import Any, Optional

from micro_rm.data.builders._common import PairSink, need
from micro_rm.data.builders._ratings import add_rated_pairs
from micro_rm.data.readers import read_rows

SCHEMA = ("ultrafeedback schema {instruction, completions: [{response, annotations: "
          "{helpfulness, honesty, instruction_following, truthfulness: {Rating}}}]}")

CONTEXTS = {
    "helpfulness": "I want an informative, helpful answer that fully meets my needs.",
    "honesty": "I want an honest answer that says when it is uncertain instead of sounding "
               "overconfident.",
    "instruction_following": "I want an answer that follows my instructions exactly, respecting "
                             "every constraint I set.",
    "truthfulness": "I want a truthful answer with no made-up or misleading facts.",
}
ATTRIBUTES = tuple(CONTEXTS)


def _rating(annotations: Any, attribute: str) -> Optional[float]:
    """The numeric rating of one aspect; None for "N/A" or a missing annotation."""
    value = (annotations.get(attribute) or {}).get("Rating") if isinstance(annotations, dict) \
        else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def build(source: str, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """Pairs of completions per instruction and aspect (ties and N/A dropped); attribute = the
    aspect, margin = the rating gap."""
    sink = PairSink(source, skip_invalid)
    for i, (where, row) in enumerate(read_rows(source)):
        with sink.row():
            instruction = need(row, "instruction", where, SCHEMA)
            rated = []
            for c in need(row, "completions", where, SCHEMA):
                response = need(c, "response", where, SCHEMA, prefix="completions[].")
                annotations = need(c, "annotations", where, SCHEMA, prefix="completions[].")
                rated.append((where, response, {a: _rating(annotations, a) for a in ATTRIBUTES}))
            add_rated_pairs(sink, instruction, rated, CONTEXTS, f"ultrafeedback-{i}")
    return sink.finish()
