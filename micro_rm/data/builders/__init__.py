"""Dataset builders: turn a raw dataset (a file, a folder or a Hugging Face hub id) into pair
records, one module per dataset family, chosen by exact name from ``BUILDERS``.

>>> sorted(BUILDERS)[:3]
['dsp', 'helpsteer2', 'helpsteer2-unfiltered']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from micro_rm.data import synthetic
from micro_rm.data.builders import (dsp, helpsteer2, hh_rlhf, hhh, pandalm, pku_saferlhf, preference,
                                    rpr, topicalchat, ultrafeedback)
from micro_rm.data.readers import read_pairs
from micro_rm.errors import MicroRMError


@dataclass(frozen=True)
class Builder:
    """A named builder: ``build(source, skip_invalid)`` returns validated pair records."""

    name: str
    description: str
    build: Callable[[str, bool], list[dict[str, Any]]]


BUILDERS: dict[str, Builder] = {b.name: b for b in (
    Builder("dsp", "Domain-Specific Preference: 4 domains, the domain's response wins (RPR "
                   "analogue), 16 pairs per prompt", dsp.build),
    Builder("hh-rlhf", "Anthropic HH-RLHF transcripts (helpful / harmless), chat prompt + final "
                       "replies", hh_rlhf.build),
    Builder("topicalchat", "USR Topical-Chat ratings: per-attribute pairs within a dialogue "
                           "(HelpSteer2 analogue)", topicalchat.build),
    Builder("pandalm", "PandaLM test set: one pair per annotator (user_id), ties dropped",
            pandalm.build),
    Builder("hhh", "HHH alignment: helpful / honest / harmless / other pairs", hhh.build),
    Builder("helpsteer2", "nvidia/HelpSteer2: per-attribute pairs, pairs all five attributes "
                          "agree on dropped (train filter)", helpsteer2.build),
    Builder("helpsteer2-unfiltered", "nvidia/HelpSteer2: per-attribute pairs, no agreement "
                                     "filter (for evaluation)",
            partial(helpsteer2.build, filter_agreeing=False)),
    Builder("rpr", "microsoft/rpr: two pairs per row with opposite labels under criteria x / y",
            rpr.build),
    Builder("ultrafeedback", "openbmb/UltraFeedback: per-aspect pairs of completions",
            ultrafeedback.build),
    Builder("pku-saferlhf", "PKU-Alignment/PKU-SafeRLHF: the safer response wins (harmless)",
            pku_saferlhf.build),
    Builder("preference", "any chosen/rejected dataset, e.g. hendrydong/preference_700K",
            preference.build),
    Builder("jsonl", "a pair file already in the micro-rm record schema", read_pairs),
    Builder("synthetic", "built-in synthetic text with 4 known user groups (no download); source = "
                         "key=value,… settings, e.g. n_prompts=100,responses_per_prompt=8",
            synthetic.build),
)}


def build_pairs(name: str, source: str | os.PathLike,
                skip_invalid: bool = False) -> list[dict[str, Any]]:
    """Build validated pair records from ``source`` with the builder called ``name``.

    >>> len(build_pairs("dsp", "../shared/data/dsp-domain-specific-preference"))  # doctest: +SKIP
    10428
    """
    if name not in BUILDERS:
        raise MicroRMError(f"unknown builder {name!r}; choose one of {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name].build(str(source), skip_invalid)


__all__ = ["BUILDERS", "Builder", "build_pairs"]
