"""HelpSteer2 (nvidia/HelpSteer2): per-attribute pairs, as in the MiCRo paper's HelpSteer2 runs.
Ratings are ints 0-4; the responses to one prompt sit in consecutive rows.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

from micro_rm.data.builders._common import PairSink, need
from micro_rm.data.builders._ratings import add_rated_pairs
from micro_rm.data.readers import read_rows

SCHEMA = ("helpsteer2 schema {prompt, response, helpfulness, correctness, coherence, complexity, "
          "verbosity}")

CONTEXTS = {
    "helpfulness": "The assistant should give a helpful answer that fully addresses what I asked.",
    "correctness": "The assistant should give a correct answer, with all the relevant facts and "
                   "no errors.",
    "coherence": "The assistant should give a clear, consistent and logically coherent answer.",
    "complexity": "The assistant should give a sophisticated answer that shows deep expertise.",
    "verbosity": "The assistant should give an expansive, detailed answer.",
}
ATTRIBUTES = tuple(CONTEXTS)


def build(source: str, skip_invalid: bool = False,
          filter_agreeing: bool = True) -> list[dict[str, Any]]:
    """Per prompt and attribute, each two responses whose ratings differ make a pair (margin = the
    rating gap). ``filter_agreeing`` (the paper's train filter) drops a response pair that all five
    attributes agree on, as it teaches every head the same thing (evaluation data: builder
    ``helpsteer2-unfiltered``)."""
    sink = PairSink(source, skip_invalid)
    rows = []  # (prompt, (where, response, ratings))
    for where, row in read_rows(source):
        with sink.row():
            rows.append((need(row, "prompt", where, SCHEMA),
                         (where, need(row, "response", where, SCHEMA),
                          {a: float(need(row, a, where, SCHEMA)) for a in ATTRIBUTES})))
    for k, (prompt, group) in enumerate(groupby(rows, key=lambda r: r[0])):
        add_rated_pairs(sink, prompt, [rated for _, rated in group], CONTEXTS, f"helpsteer2-{k}",
                        drop_unanimous=filter_agreeing)
    return sink.finish()
