"""Builders on the offline real datasets in ../shared/data (skipped when absent)."""

from __future__ import annotations

from collections import Counter

import pytest

from micro_rm.data.builders import build_pairs
from micro_rm.data.records import normalize_pair, prompt_key
from micro_rm.data.split import select_split

pytestmark = pytest.mark.realdata


def assert_valid(pairs):
    for pair in pairs:
        assert normalize_pair(pair) == pair
    assert len({p["id"] for p in pairs}) == len(pairs)


def test_dsp_builds_every_non_degenerate_pair_and_splits_by_prompt(shared_data):
    pairs = build_pairs("dsp", shared_data / "dsp-domain-specific-preference")
    # 661 prompts x 16 = 10,576, less 144 pairs of identical responses and 4 with an empty one
    assert len(pairs) == 10_428
    assert Counter(p["attribute"] for p in pairs) == {
        "literature": 2615, "entertainment": 2614, "business": 2600, "academy": 2599}
    assert len({p["context"] for p in pairs}) == 4
    assert_valid(pairs)
    train, test = select_split(pairs, "train"), select_split(pairs, "test")
    assert len(train) + len(test) == len(pairs)
    assert not {prompt_key(p) for p in train} & {prompt_key(p) for p in test}
    assert 0.6 < len(train) / len(pairs) < 0.8


def test_dsp_file_and_folder_give_the_same_pairs(shared_data):
    folder = shared_data / "dsp-domain-specific-preference"
    assert build_pairs("dsp", folder / "domain_specific_preference.test.json") == \
        build_pairs("dsp", folder)


def test_hh_rlhf_folder_gives_helpful_and_harmless_conversations(shared_data):
    pairs = build_pairs("hh-rlhf", shared_data / "hh-rlhf")
    # 2352 + 2312 rows, less 8 with an empty final reply
    assert Counter(p["attribute"] for p in pairs) == {"helpful": 2348, "harmless": 2308}
    assert all(p["prompt"][-1]["role"] == "user" for p in pairs)
    assert_valid(pairs)


def test_hh_rlhf_hub_file_matches_the_cleaned_copy(shared_data):
    original = build_pairs("hh-rlhf", shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz")
    cleaned = [p for p in build_pairs("hh-rlhf", shared_data / "hh-rlhf")
               if p["attribute"] == "harmless"]
    assert len(original) == 2308
    assert [(p["prompt"], p["chosen"]) for p in original] == \
        [(p["prompt"], p["chosen"]) for p in cleaned]


def test_topicalchat_pairs_per_attribute(shared_data):
    pairs = build_pairs("topicalchat", shared_data / "topicalchat-usr-multiattr")
    # 60 dialogues x 15 response pairs x 6 attributes = 5400, less 1196 ties
    assert len(pairs) == 4204
    assert Counter(p["attribute"] for p in pairs) == {
        "overall": 834, "engagingness": 763, "naturalness": 743, "coherence": 740,
        "understandability": 606, "groundedness": 518}
    assert len({prompt_key(p) for p in pairs}) == 60
    assert all(p["margin"] > 0 for p in pairs)
    assert_valid(pairs)


def test_pandalm_one_pair_per_annotator(shared_data):
    pairs = build_pairs("pandalm", shared_data / "pandalm-testset")
    # 999 rows x 3 annotators = 2997, less 326 ties and 156 with an empty response
    assert Counter(p["user_id"] for p in pairs) == {
        "annotator1": 850, "annotator2": 831, "annotator3": 834}
    assert all(p["attribute"] == p["user_id"] for p in pairs)
    assert_valid(pairs)


def test_hhh_categories(shared_data):
    pairs = build_pairs("hhh", shared_data / "hhh-alignment")
    assert Counter(p["attribute"] for p in pairs) == {
        "honest": 61, "helpful": 59, "harmless": 58, "other": 43}
    assert_valid(pairs)
