"""The response statistics on real DSP responses: each domain's responses score highest on the
statistic named after its style (skipped without ../shared/data)."""

from __future__ import annotations

import json

import pytest

from micro_rm.heads.stats import STATISTIC_NAMES, response_statistics

pytestmark = pytest.mark.realdata
DOMAINS = ("academy", "business", "entertainment", "literature")


def test_each_dsp_domain_leads_on_its_own_style_statistic(shared_data):
    rows = json.loads((shared_data / "dsp-domain-specific-preference" /
                       "domain_specific_preference.test.json").read_text(encoding="utf-8"))
    means = {}
    for domain in DOMAINS:
        kept = [r for r in rows if r["responses"].get(domain)]
        stats = response_statistics([r["responses"][domain] for r in kept], [r["query"] for r in kept])
        means[domain] = dict(zip(STATISTIC_NAMES, stats.mean(0)))
    leader = {name: max(DOMAINS, key=lambda d: means[d][name]) for name in STATISTIC_NAMES}
    assert leader["imagery"] == "literature"
    assert leader["action"] == "business"
    assert leader["scholarly"] == "academy"
    assert leader["exclamations"] == "entertainment" and leader["questions"] == "entertainment"
    assert min(DOMAINS, key=lambda d: means[d]["sentence_words"]) == "literature"
