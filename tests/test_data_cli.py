"""``micro-rm data build / list / inspect`` through ``cli.main``."""

from __future__ import annotations

import json

import pytest

from micro_rm.cli import main


def last_json_line(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.realdata
def test_build_dsp_writes_every_pair(shared_data, tmp_path, capsys):
    out = tmp_path / "dsp.jsonl"
    code = main(["data", "build", "dsp", "--source",
                 str(shared_data / "dsp-domain-specific-preference"), "--out", str(out),
                 "--split", "all", "--json"])
    assert code == 0
    result = last_json_line(capsys)
    assert result["pairs"] == 10_428
    assert sum(1 for _ in out.open()) == 10_428


def test_build_a_split_of_a_small_file(tmp_path, capsys):
    rows = [{"prompt": f"question {i}", "chosen": "a", "rejected": "b"} for i in range(40)]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = {}
    for split in ("train", "test"):
        assert main(["data", "build", "jsonl", "--source", str(source), "--out",
                     str(tmp_path / f"{split}.jsonl"), "--split", split, "--json"]) == 0
        counts[split] = last_json_line(capsys)["pairs"]
    assert counts["train"] + counts["test"] == 40 and counts["test"] > 0


def test_unknown_builder_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    code = main(["data", "build", "nope", "--source", str(tmp_path), "--out", str(out)])
    assert code == 2
    assert not out.exists()
    assert "unknown builder 'nope'; choose one of dsp" in capsys.readouterr().err


def test_wrong_schema_exits_2_with_the_place(tmp_path, capsys):
    source = tmp_path / "foo.json"
    source.write_text(json.dumps([{"query": "q"}]))
    out = tmp_path / "x.jsonl"
    assert main(["data", "build", "dsp", "--source", str(source), "--out", str(out)]) == 2
    assert "foo.json item 0: expected field `responses`" in capsys.readouterr().err
    assert not out.exists()


def test_list_shows_every_builder(capsys):
    assert main(["data", "list", "--json"]) == 0
    names = set(last_json_line(capsys)["builders"])
    assert {"dsp", "hh-rlhf", "helpsteer2", "rpr", "jsonl"} <= names


def test_inspect_reports_counts_and_problems(tmp_path, capsys):
    rows = [{"prompt": "p1", "chosen": "good", "rejected": "bad", "attribute": "helpful",
             "user_id": "u1"},
            {"prompt": "p1", "chosen": "good", "rejected": "bad", "attribute": "helpful",
             "user_id": "u2"},
            {"prompt": "p2", "chosen": "same", "rejected": "same", "context": "be brief"},
            {"prompt": "p3", "chosen": "", "rejected": "x"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "inspect", str(path), "--json"]) == 0
    summary = last_json_line(capsys)
    assert (summary["rows"], summary["pairs"], summary["prompts"]) == (4, 2, 1)
    assert summary["attributes"] == {"helpful": 2}
    assert summary["users"]["distinct"] == 2
    assert summary["contexts"]["top"][0] == ["(none)", 2]
    assert (summary["duplicates"], summary["identical"]) == (1, 1)
    assert summary["lengths"]["chosen"] == {"min": 4, "median": 4, "max": 4}
    assert summary["problems"]["count"] == 2
    assert "pairs.jsonl line 3: `chosen` and `rejected` are the same" in summary["problems"]["first"][0]
    assert "pairs.jsonl line 4: `chosen` is empty" in summary["problems"]["first"][1]
    # issue 25: inspect has no --skip-invalid, so its problems do not advise it
    assert not any("--skip-invalid" in p for p in summary["problems"]["first"])

    assert main(["data", "inspect", str(path)]) == 0
    report = capsys.readouterr().out
    assert "2 pairs from 4 rows, 1 prompts" in report
    assert "problems: 2" in report
