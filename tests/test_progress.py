"""One switch silences every progress bar: the global `--quiet` flag or `TQDM_DISABLE=1`; results
and errors still print, and a bar is back on the next command without the flag."""

from __future__ import annotations

import json

import pytest

from micro_rm.cli.app import main
from micro_rm.progress import progress_bar

PAIRS = [{"prompt": "Name a colour.", "chosen": "Red.", "rejected": "A dog.", "context": "a painter"},
         {"prompt": "Say hi.", "chosen": "Hello there!", "rejected": "Go away."}]


def test_bar_is_shown_unless_disabled(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress_bar(range(2)).disable
    assert progress_bar(range(2), enabled=False).disable


@pytest.mark.parametrize("value, hidden", [("1", True), ("true", True), ("0", False), ("", False)])
def test_tqdm_disable_hides_every_bar(monkeypatch, value, hidden):
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert progress_bar(range(2)).disable is hidden


@pytest.fixture
def pairs(tmp_path):
    try:
        from micro_rm.features.backbones import load_backbone

        load_backbone("static")
    except Exception as exc:  # missing wheel or tokenizer: nothing to encode with
        pytest.skip(f"static backbone unavailable: {type(exc).__name__}: {exc}")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return path


def encode(pairs, cache, *flags) -> int:
    code = main([*flags, "encode", "--data", str(pairs), "--backbone", "static", "--cache", str(cache)])
    return code


def test_quiet_flag_and_tqdm_disable_silence_the_cli(pairs, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert encode(pairs, tmp_path / "shown") == 0
    assert "encoding" in capsys.readouterr().err
    assert encode(pairs, tmp_path / "quiet", "--quiet") == 0
    out = capsys.readouterr()
    assert "encoding" not in out.err and "encoded" in out.out         # the result still prints
    assert encode(pairs, tmp_path / "again") == 0                      # --quiet does not outlive its command
    assert "encoding" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert encode(pairs, tmp_path / "env") == 0
    assert "encoding" not in capsys.readouterr().err


def test_quiet_is_documented_in_the_main_help(capsys):
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--quiet" in help_text and "TQDM_DISABLE" in help_text
