"""The pair record: validation messages, the implicit-prompt rule, and the canonical split."""

from __future__ import annotations

import json

import pytest

from micro_rm.data.readers import read_pairs, read_rows, write_pairs
from micro_rm.data.records import normalize_pair, render_text
from micro_rm.data.split import prompt_bucket, select_split, split_of
from micro_rm.errors import InvalidRecord, MicroRMError

USER = {"role": "user", "content": "Hi"}


def test_normalize_keeps_known_fields_and_drops_the_rest():
    rec = normalize_pair({"prompt": "p", "chosen": "a", "rejected": "b", "context": "c",
                          "attribute": "x", "user_id": "u", "margin": 2, "id": 7, "extra": 1})
    assert rec == {"prompt": "p", "chosen": "a", "rejected": "b", "context": "c",
                   "attribute": "x", "user_id": "u", "id": "7", "margin": 2.0}


def test_conversational_pairs_take_the_shared_prefix_as_prompt():
    rec = normalize_pair({"chosen": [USER, {"role": "assistant", "content": "Hello"}],
                          "rejected": [USER, {"role": "assistant", "content": "Bye"}]})
    assert rec["prompt"] == [USER]
    assert rec["chosen"] == [{"role": "assistant", "content": "Hello"}]


@pytest.mark.parametrize("record, message", [
    ({"prompt": "p", "rejected": "b"}, "missing field `chosen`"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "`chosen` is empty"),
    ({"prompt": "p", "chosen": "a", "rejected": 3}, "`rejected` must be a string"),
    ({"chosen": "a", "rejected": "b"}, "missing field `prompt`"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "context": 5}, "`context` must be a string"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "x"}, "`margin` must be a number"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, r"`prompt\[0\]` is not a chat message"),
    ({"chosen": [USER], "rejected": [USER]}, "`chosen` is an empty message list"),
])
def test_bad_records_name_the_field(record, message):
    with pytest.raises(InvalidRecord, match=message):
        normalize_pair(record, "f.jsonl line 3")


def test_error_names_the_place():
    with pytest.raises(InvalidRecord, match=r"^f.jsonl line 3: "):
        normalize_pair({"prompt": "p", "chosen": "", "rejected": "b"}, "f.jsonl line 3")


def test_render_text_flattens_messages():
    assert render_text("x") == "x"
    assert render_text([USER, {"role": "assistant", "content": "Yo"}]) == "user: Hi\nassistant: Yo"


def test_split_is_by_prompt_hash_and_deterministic():
    assert prompt_bucket("abc") == int(__import__("hashlib").sha256(b"abc").hexdigest()[:8], 16) % 10
    records = [{"prompt": f"prompt {i}", "chosen": "a", "rejected": "b"} for i in range(200)]
    records += [{"prompt": f"prompt {i}", "chosen": "c", "rejected": "d"} for i in range(200)]
    train, test = select_split(records, "train"), select_split(records, "test")
    assert len(train) + len(test) == len(records)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in test})
    assert 0.55 < len(train) / len(records) < 0.85
    assert all(split_of(r) == "train" for r in train)
    with pytest.raises(MicroRMError, match="unknown split 'dev'"):
        select_split(records, "dev")


@pytest.fixture
def pairs():
    return [{"prompt": "p1", "chosen": "a", "rejected": "b", "attribute": "x"},
            {"prompt": "p2", "chosen": "c", "rejected": "d"}]


def test_every_file_format_reads_the_same_records(tmp_path, pairs):
    import pandas as pd

    write_pairs(pairs, tmp_path / "p.jsonl")
    (tmp_path / "p.json").write_text(json.dumps(pairs))
    pd.DataFrame(pairs).to_parquet(tmp_path / "p.parquet")
    pd.DataFrame(pairs).to_csv(tmp_path / "p.csv", index=False)
    expected = [normalize_pair(p) for p in pairs]
    for name in ("p.jsonl", "p.json", "p.parquet", "p.csv"):
        assert read_pairs(tmp_path / name) == expected, name


def test_local_hf_dataset_folder(tmp_path, pairs):
    import datasets

    datasets.Dataset.from_list(pairs).save_to_disk(str(tmp_path / "ds"))
    got = read_pairs(tmp_path / "ds")
    assert [r["chosen"] for r in got] == ["a", "c"]


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": oops}\n')
    with pytest.raises(MicroRMError, match=r"bad.jsonl line 2: malformed JSON"):
        read_pairs(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(MicroRMError, match="no such file or folder"):
        list(read_rows(tmp_path / "nope.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(MicroRMError, match="unknown format"):
        list(read_rows(tmp_path / "x.txt"))


def test_skip_invalid_counts_and_keeps_the_good(tmp_path, caplog):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": ""}\n')
    with pytest.raises(InvalidRecord, match="line 2"):
        read_pairs(path)
    assert len(read_pairs(path, skip_invalid=True)) == 1
    assert "skipped 1 invalid record(s) of 2" in caplog.text


def test_write_pairs_is_atomic(tmp_path):
    def records():
        yield {"prompt": "p", "chosen": "a", "rejected": "b"}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_pairs(records(), tmp_path / "out.jsonl")
    assert list(tmp_path.iterdir()) == []
