"""Domain-Specific Preference (Cheng et al. 2023), built the way MiCRo builds RPR: under domain D
the response written for D beats the other four (three domains and the "normal" answer), 16 pairs
per prompt. Pairs with identical or empty responses are dropped and counted.
"""

from __future__ import annotations

from typing import Any

from micro_rm.data.builders._common import PairSink, need, source_rows

DOMAINS = ("academy", "business", "entertainment", "literature")
RESPONSES = (*DOMAINS, "normal")
SCHEMA = "dsp schema {query, responses{academy, business, entertainment, literature, normal}}"

CONTEXTS = {
    "academy": "I am a researcher; answer in a rigorous academic style, with precise terminology "
               "and structured, well-sourced reasoning.",
    "business": "I am a business professional; answer concisely and practically, focused on "
                "costs, benefits, strategy and actionable next steps.",
    "entertainment": "I want to be entertained; answer in a fun, lively and playful way, with "
                     "humour and vivid examples.",
    "literature": "I love literature; answer in an expressive, literary style, with rich imagery "
                  "and elegant, artful language.",
}


def build(source: str, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """Pairs from the DSP json file, or a folder holding it.

    >>> pairs = build("../shared/data/dsp-domain-specific-preference")  # doctest: +SKIP
    >>> len(pairs), pairs[0]["attribute"], pairs[0]["id"]  # doctest: +SKIP
    (10428, 'academy', 'dsp-0-academy-business')
    """
    sink = PairSink(source, skip_invalid)
    for i, (where, row) in enumerate(source_rows(source, "*.json")):
        with sink.row():
            query = need(row, "query", where, SCHEMA)
            answers = need(row, "responses", where, SCHEMA)
            texts = {k: need(answers, k, where, SCHEMA, prefix="responses.") for k in RESPONSES}
            for domain in DOMAINS:
                for other in RESPONSES:
                    if other != domain:
                        sink.add({"prompt": query, "chosen": texts[domain],
                                  "rejected": texts[other], "attribute": domain,
                                  "context": CONTEXTS[domain],
                                  "id": f"dsp-{i}-{domain}-{other}"},
                                 where, drop_degenerate=True)
    return sink.finish()
