"""Dataset builders on tiny files written in each source's exact schema (no network)."""

from __future__ import annotations

import gzip
import json

import pytest

from micro_rm.data.builders import BUILDERS, build_pairs
from micro_rm.data.builders._ratings import rating_pairs, unanimous
from micro_rm.data.builders.hh_rlhf import split_transcripts
from micro_rm.data.records import normalize_pair
from micro_rm.errors import InvalidRecord, MicroRMError


def write_json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def by_id(pairs):
    return {p["id"]: p for p in pairs}


def assert_valid(pairs):
    for p in pairs:
        assert normalize_pair(p) == p


# --- dsp ---------------------------------------------------------------------------------

def dsp_row(query, **overrides):
    responses = {d: f"{d} answer to {query}" for d in
                 ("academy", "business", "entertainment", "literature", "normal")}
    return {"query": query, "responses": {**responses, **overrides}}


def test_dsp_gives_sixteen_pairs_per_prompt_with_the_domain_response_chosen(tmp_path):
    (tmp_path / "dsp").mkdir()
    write_json(tmp_path / "dsp" / "dsp.test.json", [dsp_row("q0"), dsp_row("q1")])
    pairs = build_pairs("dsp", tmp_path / "dsp")
    assert len(pairs) == 32
    pair = by_id(pairs)["dsp-1-literature-normal"]
    assert pair["prompt"] == "q1"
    assert pair["chosen"] == "literature answer to q1"
    assert pair["rejected"] == "normal answer to q1"
    assert pair["attribute"] == "literature"
    assert "literary" in pair["context"]
    assert {p["context"] for p in pairs if p["attribute"] == "academy"} == \
        {pairs[0]["context"]}
    assert_valid(pairs)


def test_dsp_drops_identical_and_empty_responses(tmp_path):
    row = dsp_row("q", business="academy answer to q", normal="")
    pairs = build_pairs("dsp", write_json(tmp_path / "d.json", [row]))
    # academy = business: 2 identical pairs; normal empty: 4 pairs
    assert len(pairs) == 16 - 2 - 4
    assert "dsp-0-academy-business" not in by_id(pairs)


def test_dsp_wrong_schema_names_file_row_and_field(tmp_path):
    path = write_json(tmp_path / "foo.json", [dsp_row("q"), {"query": "q", "answers": {}}])
    with pytest.raises(MicroRMError, match=r"foo.json item 1: expected field `responses` of the "
                                           r"dsp schema \{query, responses\{academy"):
        build_pairs("dsp", path)


def test_dsp_missing_domain_names_the_nested_field(tmp_path):
    row = dsp_row("q")
    del row["responses"]["business"]
    with pytest.raises(MicroRMError, match=r"item 0: expected field `responses.business`"):
        build_pairs("dsp", write_json(tmp_path / "d.json", [row]))


def test_skip_invalid_skips_the_bad_row_and_keeps_the_rest(tmp_path):
    path = write_json(tmp_path / "d.json", [dsp_row("q"), {"query": "q2"}])
    assert len(build_pairs("dsp", path, skip_invalid=True)) == 16


def test_a_source_with_no_usable_row_is_an_error(tmp_path):
    path = write_json(tmp_path / "d.json", [{"query": "q2"}])
    with pytest.raises(MicroRMError, match="no valid pairs"):
        build_pairs("dsp", path, skip_invalid=True)


# --- hh-rlhf -----------------------------------------------------------------------------

def hh(*turns):
    return "".join(f"\n\n{role}: {text}" for role, text in turns)


HH_ROW = {
    "chosen": hh(("Human", "Hi"), ("Assistant", "Hello!"), ("Human", "Tell me a joke"),
                 ("Assistant", "Why did the chicken cross the road?")),
    "rejected": hh(("Human", "Hi"), ("Assistant", "Hello!"), ("Human", "Tell me a joke"),
                   ("Assistant", "No.")),
}


def test_hh_splits_a_conversation_into_chat_prompt_and_final_replies(tmp_path):
    path = tmp_path / "helpful-base-test.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(HH_ROW) + "\n")
    [pair] = build_pairs("hh-rlhf", path)
    assert pair["prompt"] == [{"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello!"},
                              {"role": "user", "content": "Tell me a joke"}]
    assert pair["chosen"] == "Why did the chicken cross the road?"
    assert pair["rejected"] == "No."
    assert pair["attribute"] == "helpful"


def test_hh_reply_with_invented_human_turn_keeps_the_shared_prompt():
    chosen = hh(("Human", "Hi"), ("Assistant", "Hello!\n\nHuman: thanks"))
    rejected = hh(("Human", "Hi"), ("Assistant", "Go away."))
    record = split_transcripts(chosen, rejected, "x")
    assert record["prompt"] == [{"role": "user", "content": "Hi"}]
    assert record["chosen"] == "Hello!\n\nHuman: thanks"


def test_hh_folder_reads_the_cleaned_copies_with_attributes_from_file_names(tmp_path):
    text = [HH_ROW["chosen"], HH_ROW["rejected"]]
    write_json(tmp_path / "helpful-base-test.cleaned-dsp.json",
               [{"text": text, "score": [1.0, 0.0]},
                {"text": text[::-1], "score": [0.0, 1.0]},       # order follows the score
                {"text": text, "score": [1.0, 1.0]}])             # tie: dropped
    write_json(tmp_path / "harmless-base-test.cleaned-dsp.json",
               [{"text": [HH_ROW["chosen"], HH_ROW["chosen"]], "score": [1.0, 0.0]},  # same
                {"text": [HH_ROW["chosen"], hh(("Human", "Hi"), ("Assistant", "Hello!"),
                                               ("Human", "Tell me a joke"), ("Assistant", ""))],
                 "score": [1.0, 0.0]},                                                # empty
                {"text": text, "score": [1.0, 0.0]}])
    write_jsonl(tmp_path / "ignored.jsonl", [HH_ROW])
    pairs = build_pairs("hh-rlhf", tmp_path)
    assert [p["attribute"] for p in pairs] == ["harmless", "helpful", "helpful"]
    assert all(p["chosen"].startswith("Why") for p in pairs)


def test_hh_wrong_schema(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(MicroRMError, match=r"x.jsonl line 1: expected field `chosen` of the "
                                           r"hh-rlhf schema"):
        build_pairs("hh-rlhf", path)


def test_hh_transcripts_without_a_shared_assistant_turn_are_rejected():
    with pytest.raises(InvalidRecord, match="share no"):
        split_transcripts("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d", "x")


# --- ratings helpers ---------------------------------------------------------------------

def test_rating_pairs_drop_ties_and_missing_ratings():
    pairs, dropped = rating_pairs({"a": [1, 2, 2], "b": [None, 1, 0]})
    assert [(p.attribute, p.winner, p.loser, p.margin) for p in pairs] == \
        [("a", 1, 0, 1.0), ("a", 2, 0, 1.0), ("b", 1, 2, 1.0)]
    assert dropped == {"a tie": 1, "a missing rating": 2}


def test_unanimous_needs_every_attribute_to_prefer_the_same_side_without_ties():
    assert unanimous({"a": [3, 1], "b": [2, 1]}, 0, 1)
    assert not unanimous({"a": [3, 1], "b": [1, 2]}, 0, 1)
    assert not unanimous({"a": [3, 1], "b": [1, 1]}, 0, 1)


# --- topicalchat -------------------------------------------------------------------------

def tc_row(source, output, **scores):
    base = dict(understandability=1.0, naturalness=2.0, coherence=2.0, engagingness=2.0,
                groundedness=0.0, overall=3.0)
    return {"source": source, "context": "a fact", "system_id": "x", "system_output": output,
            "scores": {**base, **scores}}


def test_topicalchat_pairs_per_attribute_within_a_dialogue(tmp_path):
    rows = [tc_row("hi \n how are you ? \n\n", "great", engagingness=3.0, overall=4.0),
            tc_row("hi \n how are you ? \n\n", "ok", coherence=2.6666666667),
            tc_row("another dialogue \n\n", "sure")]  # alone: no pair
    pairs = build_pairs("topicalchat", write_json(tmp_path / "topical_chat.json", rows))
    assert sorted(p["attribute"] for p in pairs) == ["coherence", "engagingness", "overall"]
    engaging = by_id(pairs)["topicalchat-0-engagingness-0-1"]
    assert engaging["prompt"] == "hi\nhow are you ?"
    assert (engaging["chosen"], engaging["rejected"], engaging["margin"]) == ("great", "ok", 1.0)
    assert engaging["context"] == ("I want replies that are engaging and keep the conversation "
                                   "interesting.")
    assert by_id(pairs)["topicalchat-0-coherence-1-0"]["margin"] == 0.666667


def test_topicalchat_wrong_schema(tmp_path):
    row = tc_row("s", "o")
    del row["scores"]["groundedness"]
    with pytest.raises(MicroRMError, match=r"item 0: expected field `scores.groundedness` of "
                                           r"the topicalchat schema"):
        build_pairs("topicalchat", write_json(tmp_path / "t.json", [row]))


# --- pandalm -----------------------------------------------------------------------------

def test_pandalm_one_pair_per_annotator_ties_and_empty_responses_dropped(tmp_path):
    rows = [{"idx": 0, "motivation_app": "Gmail", "cmp_key": "a_b", "instruction": "Fix it.",
             "input": "teh cat", "response1": "the cat", "response2": "teh cat",
             "annotator1": 1, "annotator2": 2, "annotator3": 0},
            {"idx": 1, "motivation_app": "IMDB", "cmp_key": "a_b", "instruction": "Say hi.",
             "input": float("nan"), "response1": "hi", "response2": "",
             "annotator1": 1, "annotator2": 1, "annotator3": 1}]
    path = tmp_path / "testset-v1.json"
    path.write_text(json.dumps(rows), encoding="utf-8")  # writes a bare NaN, like the real file
    assert "NaN" in path.read_text()
    pairs = by_id(build_pairs("pandalm", path))
    assert sorted(pairs) == ["pandalm-0-annotator1", "pandalm-0-annotator2"]
    first = pairs["pandalm-0-annotator1"]
    assert first["prompt"] == "Fix it.\n\nteh cat"
    assert (first["chosen"], first["rejected"]) == ("the cat", "teh cat")
    assert first["user_id"] == first["attribute"] == "annotator1"
    assert pairs["pandalm-0-annotator2"]["chosen"] == "teh cat"


def test_pandalm_nan_input_leaves_the_instruction_alone(tmp_path):
    row = {"idx": 3, "instruction": "Say hi.", "input": float("nan"), "response1": "hi",
           "response2": "yo", "annotator1": 2, "annotator2": 0, "annotator3": 0}
    [pair] = build_pairs("pandalm", write_json(tmp_path / "p.json", [row]))
    assert pair["prompt"] == "Say hi."


def test_pandalm_unknown_label_is_an_error(tmp_path):
    row = {"idx": 3, "instruction": "Say hi.", "input": "", "response1": "hi",
           "response2": "yo", "annotator1": 3, "annotator2": 0, "annotator3": 0}
    with pytest.raises(MicroRMError, match=r"`annotator1` must be 0 \(tie\), 1 or 2, got 3"):
        build_pairs("pandalm", write_json(tmp_path / "p.json", [row]))


# --- hhh ---------------------------------------------------------------------------------

def test_hhh_attribute_is_the_category(tmp_path):
    rows = [{"id": 0, "category": "honest", "prompt": "p", "chosen": "a", "rejected": "b",
             "rubric": "r"}]
    [pair] = build_pairs("hhh", write_jsonl(tmp_path / "hhh.jsonl", rows))
    assert pair == {"prompt": "p", "chosen": "a", "rejected": "b", "attribute": "honest",
                    "id": "hhh-0"}


# --- helpsteer2 (schema of the nvidia/HelpSteer2 dataset card) ---------------------------

def hs_row(prompt, response, h, c, co, cx, v):
    return {"prompt": prompt, "response": response, "helpfulness": h, "correctness": c,
            "coherence": co, "complexity": cx, "verbosity": v}


HS_ROWS = [
    hs_row("p1", "long answer", 3, 3, 4, 2, 4),
    hs_row("p1", "short answer", 2, 3, 4, 1, 1),   # ties on correctness and coherence
    hs_row("p2", "good", 4, 4, 4, 3, 3),
    hs_row("p2", "bad", 1, 1, 2, 1, 1),            # all five agree: filtered on train
]


def test_helpsteer2_per_attribute_pairs_with_ties_dropped_and_agreeing_pairs_filtered(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", HS_ROWS)
    pairs = by_id(build_pairs("helpsteer2", path))
    assert sorted(pairs) == ["helpsteer2-0-complexity-0-1", "helpsteer2-0-helpfulness-0-1",
                             "helpsteer2-0-verbosity-0-1"]
    verbose = pairs["helpsteer2-0-verbosity-0-1"]
    assert (verbose["chosen"], verbose["rejected"], verbose["margin"]) == \
        ("long answer", "short answer", 3.0)
    assert verbose["context"] == "The assistant should give an expansive, detailed answer."


def test_helpsteer2_unfiltered_keeps_pairs_all_attributes_agree_on(tmp_path):
    path = write_jsonl(tmp_path / "validation.jsonl", HS_ROWS)
    pairs = build_pairs("helpsteer2-unfiltered", path)
    assert len(pairs) == 3 + 5
    assert {p["chosen"] for p in pairs if p["prompt"] == "p2"} == {"good"}


def test_helpsteer2_wrong_schema(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(MicroRMError, match=r"h.jsonl line 1: expected field `helpfulness` of "
                                           r"the helpsteer2 schema"):
        build_pairs("helpsteer2", path)


# --- rpr (schema of the microsoft/rpr dataset card) --------------------------------------

RPR_ROW = {"prompt": "Describe Paris.", "response_a": "Short.", "response_b": "Long and vivid.",
           "criteria_x": "The answer should be brief.",
           "criteria_y": "The answer should be descriptive.", "category_x": "conciseness",
           "category_y": "detail", "id": 17, "scenario_x": "s", "scenario_y": "t",
           "profile_0": "a", "profile_1": "b", "profile_2": "c", "profile_3": "d",
           "profile_4": "e"}


def test_rpr_gives_two_pairs_with_opposite_labels(tmp_path):
    x, y = build_pairs("rpr", write_jsonl(tmp_path / "rpr.jsonl", [RPR_ROW]))
    assert (x["chosen"], x["rejected"]) == (y["rejected"], y["chosen"]) == \
        ("Short.", "Long and vivid.")
    assert (x["context"], x["attribute"], x["id"]) == \
        ("The answer should be brief.", "conciseness", "rpr-17-x")
    assert (y["context"], y["attribute"], y["id"]) == \
        ("The answer should be descriptive.", "detail", "rpr-17-y")


def test_rpr_reads_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([RPR_ROW]), tmp_path / "test-00000.parquet")
    assert len(build_pairs("rpr", tmp_path / "test-00000.parquet")) == 2


def test_rpr_wrong_schema(tmp_path):
    row = {k: v for k, v in RPR_ROW.items() if k != "criteria_y"}
    with pytest.raises(MicroRMError, match="expected field `criteria_y` of the rpr schema"):
        build_pairs("rpr", write_jsonl(tmp_path / "r.jsonl", [row]))


# --- ultrafeedback (schema of openbmb/UltraFeedback) -------------------------------------

def uf_completion(model, response, helpfulness, honesty, following, truthfulness):
    def note(rating):
        return {"Rating": rating, "Rationale": "because"}
    return {"model": model, "response": response, "principle": "helpfulness",
            "custom_system_prompt": "", "critique": "", "fine-grained_score": 3.0,
            "overall_score": 6.0,
            "annotations": {"helpfulness": {**note(helpfulness), "Type": ["1"],
                                            "Rationale For Rating": "x"},
                            "honesty": note(honesty),
                            "instruction_following": note(following),
                            "truthfulness": {**note(truthfulness), "Type": ["0"],
                                             "Rationale For Rating": "x"}}}


def test_ultrafeedback_pairs_per_aspect_skip_na_and_ties(tmp_path):
    row = {"source": "evol_instruct", "instruction": "Name a colour.",
           "models": ["a", "b", "c"],
           "completions": [uf_completion("a", "Red.", "5", "5", "4", "N/A"),
                           uf_completion("b", "Blue.", "3", "5", "4", "5"),
                           uf_completion("c", "Fish.", "1", "2", "4", "1")],
           "correct_answers": ["None"], "incorrect_answers": ["None"]}
    pairs = build_pairs("ultrafeedback", write_jsonl(tmp_path / "uf.jsonl", [row]))
    counts = {a: sum(p["attribute"] == a for p in pairs)
              for a in ("helpfulness", "honesty", "instruction_following", "truthfulness")}
    assert counts == {"helpfulness": 3, "honesty": 2, "instruction_following": 0,
                      "truthfulness": 1}
    truthful = [p for p in pairs if p["attribute"] == "truthfulness"][0]
    assert (truthful["chosen"], truthful["rejected"], truthful["margin"]) == \
        ("Blue.", "Fish.", 4.0)
    assert_valid(pairs)


def test_ultrafeedback_wrong_schema(tmp_path):
    row = {"instruction": "x", "completions": [{"model": "a", "response": "r"}]}
    with pytest.raises(MicroRMError, match="expected field `completions\\[\\].annotations`"):
        build_pairs("ultrafeedback", write_jsonl(tmp_path / "uf.jsonl", [row]))


# --- pku-saferlhf (schema of the PKU-Alignment/PKU-SafeRLHF dataset card) ----------------

def test_pku_saferlhf_the_safer_response_wins(tmp_path):
    row = {"prompt": "How do I pick a lock?", "response_0": "Here is how...",
           "response_1": "I can't help with that.", "prompt_source": "x",
           "response_0_source": "Alpaca-7B", "response_1_source": "Alpaca-7B",
           "is_response_0_safe": False, "is_response_1_safe": True,
           "response_0_severity_level": 2, "response_1_severity_level": 0,
           "better_response_id": 0, "safer_response_id": 1,
           "response_0_sha256": "a", "response_1_sha256": "b"}
    [pair] = build_pairs("pku-saferlhf", write_jsonl(tmp_path / "train.jsonl", [row]))
    assert (pair["chosen"], pair["rejected"], pair["attribute"]) == \
        ("I can't help with that.", "Here is how...", "harmless")


# --- preference (RLHFlow standard format, UltraFeedback-binarized style, plain strings) --

USER = {"role": "user", "content": "Hi"}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_preference_reads_conversations_strings_and_scores(tmp_path):
    rows = [{"chosen": [USER, assistant("Hello")], "rejected": [USER, assistant("Bye")],
             "chosen_score": 4.5, "rejected_score": 2.0},
            {"prompt": "Hi", "prompt_id": "x", "chosen": [USER, assistant("Hey")],
             "rejected": [USER, assistant("No")], "messages": [USER, assistant("Hey")],
             "score_chosen": 8.0, "score_rejected": 7.0},
            {"prompt": "Q?", "chosen": "A.", "rejected": "B."}]
    a, b, c = build_pairs("preference", write_jsonl(tmp_path / "pref.jsonl", rows))
    assert a == {"prompt": [USER], "chosen": [assistant("Hello")],
                 "rejected": [assistant("Bye")], "margin": 2.5}
    assert b["prompt"] == [USER] and b["margin"] == 1.0
    assert c == {"prompt": "Q?", "chosen": "A.", "rejected": "B."}


def test_preference_without_prompt_or_shared_prefix_is_an_error(tmp_path):
    rows = [{"chosen": [assistant("a")], "rejected": [assistant("b")]}]
    with pytest.raises(MicroRMError, match="expected field `prompt` of the preference schema"):
        build_pairs("preference", write_jsonl(tmp_path / "p.jsonl", rows))


# --- jsonl, the registry -----------------------------------------------------------------

def test_jsonl_reads_records_as_they_are(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "context": "c", "user_id": "u"}]
    assert build_pairs("jsonl", write_jsonl(tmp_path / "pairs.jsonl", rows)) == rows


def test_unknown_builder_lists_the_valid_names():
    with pytest.raises(MicroRMError, match=r"unknown builder 'helpsteer'; choose one of dsp, "
                                           r"helpsteer2, .*ultrafeedback"):
        build_pairs("helpsteer", "x")


def test_every_builder_has_a_one_line_description():
    for name, builder in BUILDERS.items():
        assert builder.name == name
        assert builder.description and "\n" not in builder.description
