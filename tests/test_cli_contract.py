"""What every command promises: help without torch, bad input as one line with exit 2 and no
half-written output."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from micro_rm.cli import main

GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}


def test_help_never_imports_torch():
    """`micro-rm --help` and every `<cmd> --help` must stay fast: no torch import."""
    code = (
        "import sys, contextlib, io\n"
        "from micro_rm.cli import main\n"
        "from micro_rm.cli.app import app, _register_commands\n"
        "_register_commands()\n"
        "import typer.main\n"
        "group = typer.main.get_command(app)\n"
        "names = [[n] for n in group.commands]\n"
        "names += [[g, n] for g, c in group.commands.items() for n in getattr(c, 'commands', {})]\n"
        "for argv in [[]] + names:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main([*argv, '--help']) == 0, argv\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 5


def _lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name, rows, message", [
    ("malformed.jsonl", [GOOD, '{"prompt": "p", "chosen": '], r"malformed.jsonl line 2: malformed JSON"),
    ("missing.jsonl", [GOOD, {"prompt": "p", "rejected": "b"}], r"missing.jsonl line 2: missing field `chosen`"),
    ("empty.jsonl", [{"prompt": "p", "chosen": "", "rejected": "b"}], r"empty.jsonl line 1: `chosen` is empty"),
    ("nonstr.jsonl", [{"prompt": "p", "chosen": "a", "rejected": 7}], r"nonstr.jsonl line 1: `rejected` must be"),
])
def test_bad_pair_file_exits_2_with_one_line_and_no_output(tmp_path, capsys, name, rows, message):
    source = _lines(tmp_path / name, rows)
    out = tmp_path / "out.jsonl"
    assert main(["data", "build", "jsonl", "--source", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("source, message", [
    ("nope.jsonl", "no such file or folder"),
    ("data.txt", "unknown format"),
])
def test_missing_file_and_unknown_format(tmp_path, capsys, source, message):
    (tmp_path / "data.txt").write_text("x")
    out = tmp_path / "out.jsonl"
    assert main(["data", "build", "jsonl", "--source", str(tmp_path / source), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_claim_bad_input_is_exit_code_2_from_the_real_process(tmp_path):
    """README: "answers bad input with one line on stderr and exit code 2, writing nothing".
    The catalogue (test_bad_input) calls ``main``; this runs the installed entry point's code
    path (``python -m micro_rm`` → ``sys.exit(main())``), so the process exit status is what a
    shell sees."""
    assert "one line on stderr and exit code 2, writing nothing" in " ".join(README.split())
    source = _lines(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "", "rejected": "b"}])
    for argv in (["data", "build", "jsonl", "--source", str(source), "--out", str(tmp_path / "out.jsonl")],
                 ["train", "--data", str(source), "--backbone", "static", "--heads", "auto", "--max-heads", "100000",
                  "--out", str(tmp_path / "model")]):
        result = subprocess.run([sys.executable, "-m", "micro_rm", *argv], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
