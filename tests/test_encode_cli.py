"""``micro-rm encode``: fills the cache once, and refuses bad input with exit code 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from micro_rm.cli import main

PAIRS = [
    {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "A dog.", "context": "a painter",
     "attribute": "art"},
    {"prompt": "Name a colour.", "chosen": "Blue, like the sea.", "rejected": "Red.",
     "context": "a sailor", "attribute": "sea"},
    {"prompt": "Say hi.", "chosen": "Hello there!", "rejected": "Go away."},
]
TEXTS = 10  # 5 reward texts; route: 2 prompts, 2 contexts, the empty context (separate layout)


@pytest.fixture(scope="module")
def static_backbone():
    """The static backbone, or a skip when it cannot be built on this machine."""
    try:
        from micro_rm.features.backbones import load_backbone

        return load_backbone("static")
    except Exception as exc:  # missing module, weights or tokenizer: nothing to test against
        pytest.skip(f"static backbone unavailable: {type(exc).__name__}: {exc}")


def write_pairs(path: Path, rows=PAIRS, extra_line: str | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    if extra_line is not None:
        lines.insert(1, extra_line)
    path.write_text("\n".join(lines) + "\n")
    return path


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_encode_twice_encodes_nothing_the_second_time(tmp_path, capsys, static_backbone):
    data = write_pairs(tmp_path / "pairs.jsonl")
    args = ["encode", "--data", str(data), "--backbone", "static", "--json"]
    assert main(args) == 0
    first = last_json(capsys.readouterr().out)
    assert (first["texts"], first["encoded"], first["from_cache"]) == (TEXTS, TEXTS, 0)
    assert first["pairs"] == 3 and first["dim"] == static_backbone.dim
    assert Path(first["cache"]).parent == Path(os.environ["MICRO_RM_CACHE"])
    assert main(args) == 0
    second = last_json(capsys.readouterr().out)
    assert (second["encoded"], second["from_cache"]) == (0, TEXTS)
    assert second["cache"] == first["cache"] and second["seconds"] >= 0


def test_encode_with_cache_option_and_settings(tmp_path, capsys, static_backbone):
    data = write_pairs(tmp_path / "pairs.jsonl")
    cache = tmp_path / "features"
    base = ["encode", "--data", str(data), "--backbone", "static", "--cache", str(cache), "--json"]
    assert main(base + ["--router-input", "prompt"]) == 0
    by_prompt = last_json(capsys.readouterr().out)
    assert by_prompt["texts"] == 8 and Path(by_prompt["cache"]).parent == cache  # 2 prompts + empty context
    assert main(base + ["--context-in-reward", "--storage", "float32"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["storage"] == "float32" and result["context_in_reward"] is True
    assert main(["encode", "--data", str(data), "--backbone", "static", "--cache", str(cache)]) == 0
    assert "10 unique texts" in capsys.readouterr().out


def assert_refused(capsys, args, message: str, cache: Path) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no partial output
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], captured.err
    assert not list(cache.rglob("shard-*"))


def test_missing_file(tmp_path, capsys):
    assert_refused(capsys, ["encode", "--data", str(tmp_path / "nope.jsonl"), "--backbone",
                            "static", "--cache", str(tmp_path / "c")],
                   "nope.jsonl: no such file", tmp_path)


@pytest.mark.parametrize("value", ["0", "-3", "1000001"])
def test_max_length_must_be_in_range(tmp_path, capsys, value):
    data = write_pairs(tmp_path / "pairs.jsonl")
    assert_refused(capsys, ["encode", "--data", str(data), "--backbone", "static",
                            "--max-length", value],
                   f"--max-length must be in [1, 1000000], got {value}", tmp_path)


def test_malformed_json_line(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", extra_line='{"prompt": "x", "chosen": ')
    assert_refused(capsys, ["encode", "--data", str(data), "--backbone", "static"],
                   "pairs.jsonl line 2: malformed JSON", tmp_path)


def test_invalid_record_can_be_skipped(tmp_path, capsys, static_backbone):
    bad = '{"prompt": "x", "chosen": "", "rejected": "y"}'
    data = write_pairs(tmp_path / "pairs.jsonl", extra_line=bad)
    assert_refused(capsys, ["encode", "--data", str(data), "--backbone", "static"],
                   "pairs.jsonl line 2: `chosen` is empty; fix it or pass --skip-invalid", tmp_path)
    assert main(["encode", "--data", str(data), "--backbone", "static", "--skip-invalid",
                 "--json"]) == 0
    assert last_json(capsys.readouterr().out)["pairs"] == 3


def test_bad_router_input(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl")
    assert_refused(capsys, ["encode", "--data", str(data), "--backbone", "static",
                            "--router-input", "user"],
                   "--router-input must be one of context, prompt, got 'user'", tmp_path)


def test_unknown_backbone(tmp_path, capsys):
    pytest.importorskip("micro_rm.features.backbones")
    data = write_pairs(tmp_path / "pairs.jsonl")
    assert_refused(capsys, ["encode", "--data", str(data), "--backbone", "no-such-backbone"],
                   "cannot load backbone 'no-such-backbone'", tmp_path)


def test_cache_folder_of_another_setting(tmp_path, capsys, static_backbone):
    from micro_rm.features.cache import FeatureCache

    data = write_pairs(tmp_path / "pairs.jsonl")
    cache = tmp_path / "features"
    folder = FeatureCache(cache).folder(static_backbone.fingerprint())
    folder.mkdir(parents=True)
    (folder / "fingerprint.json").write_text(json.dumps({"kind": "something else"}))
    assert_refused(capsys, ["encode", "--data", str(data), "--backbone", "static", "--cache",
                            str(cache)],
                   f"cache folder {folder} was written by backbone setting "
                   '{"kind":"something else"}, not {', tmp_path)


def test_encode_out_existing_empty_dir_is_decided_before_encoding(tmp_path, capsys, static_backbone):
    """Bug: `encode --out EXISTING_EMPTY_DIR` passed the early output check and was refused only
    when the features were renamed into place, after all the encoding. One rule decides both, up
    front: an empty folder is accepted, a folder of other files is refused before any encoding."""
    from micro_rm.features.store import load_features

    data = write_pairs(tmp_path / "pairs.jsonl")
    cache = tmp_path / "cache"
    base = ["encode", "--data", str(data), "--backbone", "static", "--cache", str(cache)]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    assert_refused(capsys, base + ["--out", str(notes)],
                   f"{notes} exists and is not a micro-rm features folder; pick another path or delete it", cache)
    assert not cache.exists() and [p.name for p in notes.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(base + ["--out", str(empty), "--json"]) == 0
    assert last_json(capsys.readouterr().out)["features"] == str(empty)
    assert len(load_features(empty)) == 3
