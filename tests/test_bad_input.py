"""The bad-input catalogue (issue 12): every case is refused the way the contract says.

CLI: exit code 2, exactly one stderr line ``error: …`` naming what is wrong and where, no
traceback, and nothing new on disk (no output, no state file, no temporary file).
HTTP: a 4xx whose ``detail`` is one line naming the field, and no change to any user's state.

The CLI runs in-process (``micro_rm.cli.main``) on the tiny word-vector backbone of
test_train_cli; the service runs on the same backbone through FastAPI's test client.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_train_cli import WordBackbone

from micro_rm.cli import main

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = __import__("torch").cuda.is_available()
ADMIN = "admin-token-for-tests-0123456789"
GOOD = {"prompt": "tell me about topic1", "chosen": "short topic1 answer",
        "rejected": "long detailed thorough topic1 answer", "context": "be brief please"}
GOOD_LINE = json.dumps(GOOD).encode()


# ----- fixtures -------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fake_backbone(monkeypatch):
    import micro_rm.features.backbones as backbones

    monkeypatch.setattr(backbones, "load_backbone", lambda name, **kwargs: WordBackbone())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A K = 2 mixture on the word backbone, trained for one epoch by the CLI itself (the catalogue
    never needs accuracy, only a model whose features match what featurize makes)."""
    import micro_rm.features.backbones as backbones
    from micro_rm.data.readers import write_pairs
    from test_train_cli import _records

    root = tmp_path_factory.mktemp("catalogue")
    write_pairs(_records(40, 0), root / "train.jsonl")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backbones, "load_backbone", lambda name, **kwargs: WordBackbone())
        patch.setenv("MICRO_RM_CACHE", str(root / "cache"))
        assert main(["train", "--data", str(root / "train.jsonl"), "--backbone", "fake-words", "--heads", "2",
                     "--out", str(root / "model"), "--epochs", "1", "--val-fraction", "0"]) == 0
    return root / "model"


def word_model(seed: int = 0):
    """A K = 2 mixture on the word backbone with random heads, built by hand (as test_serve
    does) for the service: the HTTP catalogue never needs accuracy."""
    import torch

    from micro_rm.model import MixtureConfig, MixtureRewardModel

    backbone = WordBackbone()
    torch.manual_seed(seed)
    return MixtureRewardModel(MixtureConfig(
        num_heads=2, reward_dim=backbone.dim, route_dim=backbone.dim, backbone=backbone.fingerprint(),
        feature={"router_input": "context", "context_in_reward": False})).eval()


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots`` with its size and mtime: what a case may not change."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                stat = path.stat()
                out[str(path)] = (stat.st_size if path.is_file() else 0, stat.st_mtime_ns)
    return out


# ----- the CLI catalogue -----------------------------------------------------------------------
@dataclass
class Case:
    """``argv(tmp, model)`` writes what the case needs into ``tmp`` and returns the command line;
    ``message`` is a regex the one error line must match (it names what and where)."""

    id: str
    argv: Callable[[Path, Path], list[str]]
    message: str


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def pairs(tmp: Path, *lines: bytes, name: str = "pairs.jsonl") -> str:
    return write(tmp / name, b"".join(line + b"\n" for line in lines))


def bad_utf8(tmp: Path, name: str = "pairs.jsonl") -> str:
    return pairs(tmp, GOOD_LINE, b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', name=name)


def record(**fields) -> bytes:
    """A JSON line; string values go through as written, so "\\ud800" stays an escape."""
    return ("{" + ", ".join(f'"{k}": {v if not isinstance(v, str) else chr(34) + v + chr(34)}'
                            for k, v in {**GOOD, **fields}.items()) + "}").encode()


def a_file(tmp: Path, name: str = "plain.txt") -> str:
    return write(tmp / name, "not a folder\n")


def bad_cache(tmp: Path) -> str:
    """A cache whose folder for the word backbone has a fingerprint.json that is not UTF-8."""
    from micro_rm.features.backbones import fingerprint_id

    folder = tmp / "cache" / fingerprint_id(WordBackbone().fingerprint())
    folder.mkdir(parents=True)
    write(folder / "fingerprint.json", b"\xff\xfe{}")
    return str(tmp / "cache")


def bad_model(tmp: Path) -> Path:
    (tmp / "model").mkdir()
    write(tmp / "model" / "config.json", b'{"num_heads": "\xff"}')
    write(tmp / "model" / "model.safetensors", b"")
    return tmp / "model"


def damaged_model(tmp: Path, model: Path, value: float = float("nan"), tensor: str = "heads.weight") -> str:
    """A copy of ``model`` with one parameter set to ``value`` (NaN or ±inf)."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp / "damaged-model"
    shutil.copytree(model, copy)
    tensors = load_file(str(copy / "model.safetensors"))
    tensors[tensor].view(-1)[0] = value
    save_file(tensors, str(copy / "model.safetensors"))
    return str(copy)


def state_db(tmp: Path, model: Path, sql: str | None = None, corrupt: bool = False) -> str:
    """A state file with user ana (one feedback pair, written by `micro-rm feedback`), then
    changed by ``sql`` or with its pages after the first overwritten (``corrupt``)."""
    import sqlite3

    assert main(feedback(tmp, model, pairs(tmp, GOOD_LINE, name="ana.jsonl"))) == 0
    path = tmp / "state.db"
    if sql is not None:
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(sql)
    if corrupt:
        data = path.read_bytes()
        path.write_bytes(data[:4096] + b"\xa5" * (len(data) - 4096))
    return str(path)


NAN_STATE = "UPDATE users SET cumulative_loss = '[NaN, 0.5]' WHERE user_id = 'ana'"
SCHEMA_999 = "UPDATE meta SET value = '999' WHERE key = 'schema_version'"


def score(tmp: Path, model: Path | str, *extra: str, data: str | None = None) -> list[str]:
    return ["score", "--model", str(model), "--data", data or pairs(tmp, GOOD_LINE), "--out", str(tmp / "scores.jsonl"),
            *extra]


def deep_yaml(tmp: Path, block: bool = False) -> str:
    text = ("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 2000))) if block else "a: " + "[" * 100_000
    return write(tmp / "deep.yaml", text)


def train(tmp: Path, data: str, *extra: str) -> list[str]:
    return ["train", "--data", data, "--backbone", "fake-words", "--heads", "2", "--out", str(tmp / "out"),
            "--epochs", "1", *extra]


def evaluate(model: Path, data: str, *extra: str) -> list[str]:
    return ["eval", "--model", str(model), "--data", data, *extra]


def feedback(tmp: Path, model: Path, data: str, *extra: str, user: str = "ana") -> list[str]:
    return ["feedback", "--model", str(model), "--state", str(tmp / "state.db"), "--user", user,
            "--data", data, *extra]


def encode(data: str, *extra: str) -> list[str]:
    return ["encode", "--data", data, "--backbone", "fake-words", *extra]


def build(tmp: Path, source: str, *extra: str, builder: str = "jsonl") -> list[str]:
    return ["data", "build", builder, "--source", source, "--out", str(tmp / "out.jsonl"), *extra]


def serve(model: Path, *extra: str) -> list[str]:
    return ["serve", "--model", str(model), *extra]


UTF8 = r"pairs.jsonl line 2: not valid UTF-8 \(byte 0xe9 at column 16\)"
CLI_CASES = [
    # invalid UTF-8, in every command that reads pairs
    Case("utf8-inspect", lambda t, m: ["data", "inspect", bad_utf8(t)], UTF8),
    Case("utf8-build", lambda t, m: build(t, bad_utf8(t)), UTF8),
    Case("utf8-encode", lambda t, m: encode(bad_utf8(t)), UTF8),
    Case("utf8-train", lambda t, m: train(t, bad_utf8(t)), UTF8),
    Case("utf8-eval", lambda t, m: evaluate(m, bad_utf8(t)), UTF8),
    Case("utf8-feedback", lambda t, m: feedback(t, m, bad_utf8(t)), UTF8),
    Case("utf8-adapt", lambda t, m: ["adapt", "--model", str(m), "--data", bad_utf8(t), "--out",
                                     str(t / "adapted")], UTF8),
    Case("utf8-json-file", lambda t, m: ["data", "inspect", write(t / "p.json", b'[{"prompt": "\xff"}]')],
         r"p.json line 1: not valid UTF-8 \(byte 0xff"),
    Case("utf8-csv", lambda t, m: ["data", "inspect", write(t / "p.csv", b"prompt,chosen,rejected\np,\xfe,b\n")],
         r"p.csv line 2: not valid UTF-8 \(byte 0xfe"),
    Case("utf8-gzip", lambda t, m: ["data", "inspect", write(t / "p.jsonl.gz", gzip.compress(b'{"prompt": "\xff"}\n'))],
         r"p.jsonl.gz line 1: not valid UTF-8"),
    Case("utf8-experiment-config", lambda t, m: ["experiment", write(t / "exp.yaml", b"title: caf\xe9\n"),
                                                 "--out", str(t / "runs")],
         r"exp.yaml line 1: not valid UTF-8"),
    Case("utf8-admin-token-file", lambda t, m: serve(m, "--admin-token-file", write(t / "token", b"\xff" * 20)),
         r"token line 1: not valid UTF-8"),
    # damaged gzip
    Case("gzip-not-gzip", lambda t, m: ["data", "inspect", write(t / "p.jsonl.gz", GOOD_LINE)],
         r"p.jsonl.gz: not a readable gzip file"),
    Case("gzip-truncated", lambda t, m: build(t, write(t / "p.jsonl.gz", gzip.compress(GOOD_LINE * 50)[:40])),
         r"p.jsonl.gz: not a readable gzip file"),
    Case("gzip-train", lambda t, m: train(t, write(t / "p.jsonl.gz", b"\x1f\x8b\x08garbage")),
         r"p.jsonl.gz: not a readable gzip file"),
    # JSON that the parser cannot take
    Case("json-deep-inspect", lambda t, m: ["data", "inspect", pairs(t, GOOD_LINE, b"[" * 100_000)],
         r"pairs.jsonl line 2: JSON nested too deeply"),
    Case("json-deep-train", lambda t, m: train(t, pairs(t, b'{"prompt": ' + b"[" * 100_000)),
         r"pairs.jsonl line 1: JSON nested too deeply"),
    Case("json-huge-integer", lambda t, m: ["data", "inspect", pairs(t, b'{"margin": ' + b"9" * 5000 + b"}")],
         r"pairs.jsonl line 1: unreadable JSON value"),
    Case("json-malformed", lambda t, m: encode(pairs(t, GOOD_LINE, b'{"prompt": ')),
         r"pairs.jsonl line 2: malformed JSON"),
    # records the shared rule refuses
    Case("surrogate-encode", lambda t, m: encode(pairs(t, record(chosen="a\\ud800"))),
         r"pairs.jsonl line 1: `chosen` is not valid Unicode \(a lone surrogate"),
    Case("surrogate-feedback", lambda t, m: feedback(t, m, pairs(t, record(rejected="\\udfff"))),
         r"pairs.jsonl line 1: `rejected` is not valid Unicode"),
    Case("surrogate-role", lambda t, m: build(t, pairs(t, b'{"prompt": [{"role": "\\ud800", "content": "hi"}], '
                                                           b'"chosen": "a", "rejected": "b"}')),
         r"pairs.jsonl line 1: `prompt\[0\].role` is not valid Unicode"),
    Case("surrogate-context", lambda t, m: evaluate(m, pairs(t, record(context="x\\ud83d"))),
         r"pairs.jsonl line 1: `context` is not valid Unicode"),
    Case("chosen-equals-rejected", lambda t, m: build(t, pairs(t, record(rejected=GOOD["chosen"]))),
         r"pairs.jsonl line 1: `chosen` and `rejected` are the same"),
    Case("chosen-equals-rejected-feedback", lambda t, m: feedback(t, m, pairs(t, record(rejected=GOOD["chosen"]))),
         r"pairs.jsonl line 1: `chosen` and `rejected` are the same"),
    Case("margin-nan", lambda t, m: build(t, pairs(t, record(margin="NaN").replace(b'"NaN"', b"NaN"))),
         r"pairs.jsonl line 1: `margin` must be a finite number"),
    Case("empty-chosen", lambda t, m: train(t, pairs(t, record(chosen=" "))), r"pairs.jsonl line 1: `chosen` is empty"),
    # outputs and paths, checked before any work
    Case("cache-is-a-file-encode", lambda t, m: encode(pairs(t, GOOD_LINE), "--cache", a_file(t)),
         r"feature cache \(--cache\) .*plain.txt: is a file"),
    Case("cache-is-a-file-train", lambda t, m: train(t, pairs(t, GOOD_LINE), "--cache", a_file(t)),
         r"feature cache \(--cache\) .*plain.txt: is a file"),
    Case("cache-is-a-file-eval", lambda t, m: evaluate(m, pairs(t, GOOD_LINE), "--cache", a_file(t)),
         r"feature cache \(--cache\) .*plain.txt: is a file"),
    Case("cache-is-a-file-feedback", lambda t, m: feedback(t, m, pairs(t, GOOD_LINE), "--cache", a_file(t)),
         r"feature cache \(--cache\) .*plain.txt: is a file"),
    Case("cache-under-a-file", lambda t, m: encode(pairs(t, GOOD_LINE), "--cache", a_file(t) + "/sub"),
         r"plain.txt is a file, so no folder can be made inside it"),
    Case("cache-fingerprint-invalid-utf8", lambda t, m: encode(pairs(t, GOOD_LINE), "--cache", bad_cache(t)),
         r"fingerprint.json: unreadable"),
    Case("model-config-invalid-utf8", lambda t, m: evaluate(bad_model(t), pairs(t, GOOD_LINE)),
         r"config.json: not valid JSON"),
    Case("eval-report-is-a-file", lambda t, m: evaluate(m, pairs(t, GOOD_LINE), "--report", a_file(t, "report")),
         r"--report .*report: is a file, but a folder is written there"),
    Case("experiment-out-is-a-file", lambda t, m: ["experiment", str(REPO / "configs" / "demo.yaml"), "--out",
                                                   a_file(t, "runs")],
         r"--out .*runs: is a file, but a folder is written there"),
    Case("encode-out-is-a-file", lambda t, m: encode(pairs(t, GOOD_LINE), "--out", a_file(t, "features")),
         r"--out .*features: is a file, but a folder is written there"),
    Case("demo-out-is-a-file", lambda t, m: ["demo", "--out", a_file(t, "demo"), "--backbone", "static"],
         r"--out .*demo: is a file, but a folder is written there"),
    Case("build-out-is-a-folder", lambda t, m: ["data", "build", "jsonl", "--source", pairs(t, GOOD_LINE), "--out",
                                                str(t)], r"--out .*: is a folder, but a file is written there"),
    Case("build-out-under-a-file", lambda t, m: ["data", "build", "jsonl", "--source", pairs(t, GOOD_LINE), "--out",
                                                 a_file(t) + "/out.jsonl"], r"plain.txt is a file"),
    Case("train-out-not-a-model", lambda t, m: ["train", "--data", pairs(t, GOOD_LINE), "--backbone", "fake-words",
                                                "--heads", "2", "--out", a_file(t)],
         r"plain.txt: exists and is not a micro-rm model folder"),
    Case("serve-device-cuda", lambda t, m: serve(m, "--device", "cuda"), r"--device cuda: CUDA is not available"),
    Case("serve-device-unknown", lambda t, m: serve(m, "--device", "gpu"), r"--device 'gpu' is not a device"),
    Case("serve-log-level", lambda t, m: serve(m, "--log-level", "chatty"), r"--log-level 'chatty' is not a log level"),
    Case("serve-cache-is-a-file", lambda t, m: serve(m, "--cache", a_file(t)), r"feature cache \(--cache\) .*is a file"),
    Case("serve-admin-token-missing", lambda t, m: serve(m, "--admin-token-file", str(t / "nope")),
         r"--admin-token-file .*nope: cannot read it"),
    # contract breaks
    Case("feedback-empty-user", lambda t, m: feedback(t, m, pairs(t, GOOD_LINE), user=""),
         r"--user '' is not a valid user id"),
    Case("feedback-bad-user", lambda t, m: feedback(t, m, pairs(t, GOOD_LINE), user="bad id!"),
         r"--user 'bad id!' is not a valid user id"),
    Case("feedback-bad-data-no-state", lambda t, m: feedback(t, m, pairs(t, record(chosen=""))),
         r"pairs.jsonl line 1: `chosen` is empty"),
    Case("feedback-eta-zero", lambda t, m: feedback(t, m, pairs(t, GOOD_LINE), "--eta", "0"),
         r"--eta must be a finite number > 0"),
    Case("synthetic-negative-prompts", lambda t, m: build(t, "n_prompts=-5", builder="synthetic"),
         r"synthetic `n_prompts` must be at least 1, got -5"),
    Case("synthetic-zero-pairs", lambda t, m: build(t, "pairs_per_prompt=0", builder="synthetic"),
         r"synthetic `pairs_per_prompt` must be at least 1"),
    Case("synthetic-nan-beta", lambda t, m: build(t, "beta=nan", builder="synthetic"),
         r"synthetic `beta` must be a finite number"),
    Case("synthetic-unknown-key", lambda t, m: build(t, "prompts=3", builder="synthetic"),
         r"unknown setting 'prompts'"),
    Case("build-unknown-split", lambda t, m: build(t, pairs(t, GOOD_LINE), "--split", "dev"), r"unknown split 'dev'"),
    Case("export-scalar-empty-context", lambda t, m: ["export-scalar", "--model", str(m), "--out", str(t / "s"),
                                                      "--context", ""], r"--context is empty"),
    Case("export-scalar-blank-context", lambda t, m: ["export-scalar", "--model", str(m), "--out", str(t / "s"),
                                                      "--context", "   "], r"--context is empty"),
    Case("adapt-tau-underflow", lambda t, m: ["adapt", "--model", str(m), "--data", pairs(t, GOOD_LINE), "--out",
                                              str(t / "adapted"), "--tau", "1e-300"],
         r"`tau` must be a finite number"),
    Case("adapt-one-fold", lambda t, m: ["adapt", "--model", str(m), "--data", pairs(t, GOOD_LINE), "--out",
                                         str(t / "adapted"), "--folds", "1"],
         r"`folds` must be"),
    Case("encode-batch-size-zero", lambda t, m: encode(pairs(t, GOOD_LINE), "--batch-size", "0"),
         r"--batch-size must be at least 1"),
    Case("encode-router-input", lambda t, m: encode(pairs(t, GOOD_LINE), "--router-input", "both"),
         r"--router-input must be one of"),
    Case("eval-missing-model", lambda t, m: evaluate(t / "nope", pairs(t, GOOD_LINE)), r"nope: no such model folder"),
    Case("user-show-missing-state", lambda t, m: ["user", "show", "ana", "--state", str(t / "none.db")],
         r"state file .*none.db does not exist"),
    Case("missing-data-file", lambda t, m: train(t, str(t / "absent.jsonl")), r"absent.jsonl: no such file or folder"),
    # issue 25, item 4: NaN / Inf parameters are refused at load; so is a user state holding NaN
    Case("model-nan-eval", lambda t, m: evaluate(damaged_model(t, m), pairs(t, GOOD_LINE)),
         r"damaged-model/model.safetensors: tensor `heads.weight` holds 1 NaN or infinite value"),
    Case("model-inf-score", lambda t, m: score(t, damaged_model(t, m, float("inf"))),
         r"damaged-model/model.safetensors: tensor `heads.weight` holds 1 NaN or infinite value"),
    Case("model-nan-export-scalar", lambda t, m: ["export-scalar", "--model", damaged_model(t, m), "--out",
                                                  str(t / "s"), "--weights", "1,1"], r"tensor `heads.weight` holds"),
    Case("model-nan-serve", lambda t, m: serve(damaged_model(t, m)), r"tensor `heads.weight` holds 1 NaN"),
    Case("model-nan-feedback", lambda t, m: feedback(t, damaged_model(t, m), pairs(t, GOOD_LINE)),
         r"tensor `heads.weight` holds 1 NaN"),
    Case("model-nan-heads-mask", lambda t, m: ["heads", "mask", damaged_model(t, m, float("-inf")), "--head", "0",
                                               "--out", str(t / "masked")], r"tensor `heads.weight` holds"),
    Case("state-nan-eval", lambda t, m: evaluate(m, pairs(t, GOOD_LINE), "--state", state_db(t, m, NAN_STATE),
                                                 "--user", "ana"), r"user 'ana' .*state.db.*(non-)?finite"),
    Case("state-nan-score", lambda t, m: score(t, m, "--state", state_db(t, m, NAN_STATE), "--user", "ana"),
         r"user 'ana' .*state.db.*(non-)?finite"),
    # item 5: a damaged or too new state database, in every command that opens it
    *(Case(f"state-{kind}-{name}", lambda t, m, argv=argv, change=change: argv(t, m, state_db(t, m, **change)), message)
      for kind, change, message in [("corrupt", {"corrupt": True}, r"state.db.*(not a readable|malformed)"),
                                    ("version-999", {"sql": SCHEMA_999}, r"state.db.*999")]
      for name, argv in [
          ("eval", lambda t, m, s: evaluate(m, pairs(t, GOOD_LINE), "--state", s, "--user", "ana")),
          ("score", lambda t, m, s: score(t, m, "--state", s, "--user", "ana")),
          ("feedback", lambda t, m, s: feedback(t, m, pairs(t, GOOD_LINE))),
          ("user-show", lambda t, m, s: ["user", "show", "ana", "--state", s]),
          ("user-reset", lambda t, m, s: ["user", "reset", "ana", "--state", s]),
      ]),
    # regression: a sqlite:/// URL skipped the readers' "no such state file" check, so score and eval
    # created an empty state file they only meant to read
    *(Case(f"state-url-missing-{name}", lambda t, m, argv=argv: argv(t, m, f"sqlite:///{t / 'none.db'}"),
           rf"--state sqlite:///.*none.db: no such state file; {name} reads a user's state")
      for name, argv in [
          ("eval", lambda t, m, s: evaluate(m, pairs(t, GOOD_LINE), "--state", s, "--user", "ana")),
          ("score", lambda t, m, s: score(t, m, "--state", s, "--user", "ana")),
      ]),
    # item 6: an output that is one of the command's inputs
    Case("score-out-is-data", lambda t, m: score(t, m, data=pairs(t, GOOD_LINE, name="scores.jsonl")),
         r"--out .*scores.jsonl: is the --data input"),
    Case("score-out-is-state", lambda t, m: ["score", "--model", str(m), "--data", pairs(t, GOOD_LINE), "--out",
                                             state_db(t, m), "--state", f"sqlite:///{t / 'state.db'}", "--user", "ana"],
         r"--out .*state.db: is the --state input"),
    # regression: suggest --out overwrote its own --data and --state
    Case("suggest-out-is-data", lambda t, m: ["suggest", "--model", str(m), "--user", "ana", "--data",
                                              pairs(t, GOOD_LINE), "--out", str(t / "pairs.jsonl")],
         r"--out .*pairs.jsonl: is the --data input"),
    Case("suggest-out-is-state", lambda t, m: ["suggest", "--model", str(m), "--user", "ana", "--data",
                                               pairs(t, GOOD_LINE), "--state", state_db(t, m), "--out",
                                               str(t / "state.db")], r"--out .*state.db: is the --state input"),
    Case("suggest-device-cuda-7", lambda t, m: ["suggest", "--model", str(m), "--user", "ana", "--data",
                                                pairs(t, GOOD_LINE), "--device", "cuda:77"],
         r"--device cuda:77: (CUDA is not available|this machine has \d+ CUDA device)"),
    Case("build-out-is-source", lambda t, m: ["data", "build", "jsonl", "--source", pairs(t, GOOD_LINE), "--out",
                                              str(t / "pairs.jsonl")], r"--out .*pairs.jsonl: is the --source input"),
    Case("adapt-out-is-model", lambda t, m: ["adapt", "--model", str(m), "--data", pairs(t, GOOD_LINE), "--out", str(m)],
         r"--out .*model: is the --model input"),
    Case("mask-out-is-model", lambda t, m: ["heads", "mask", str(m), "--head", "0", "--out", str(m)],
         r"--out .*model: is the MODEL input"),
    Case("export-scalar-out-is-model", lambda t, m: ["export-scalar", "--model", str(m), "--out", str(m), "--weights",
                                                     "1,1"], r"--out .*model: is the --model input"),
    Case("train-out-holds-data", lambda t, m: train(t, pairs(t, GOOD_LINE, name="model.jsonl"), "--cache",
                                                    str(t / "out")), r"--out .*out: is the --cache input"),
    Case("encode-out-is-cache", lambda t, m: encode(pairs(t, GOOD_LINE), "--cache", str(t / "c"), "--out", str(t / "c")),
         r"--out .*: is the --cache input"),
    Case("eval-report-is-model", lambda t, m: evaluate(m, pairs(t, GOOD_LINE), "--report", str(m)),
         r"--report .*model: is the --model input"),
    Case("feedback-state-is-data", lambda t, m: ["feedback", "--model", str(m), "--state", pairs(t, GOOD_LINE),
                                                 "--user", "ana", "--data", str(t / "pairs.jsonl")],
         r"--state .*pairs.jsonl: is the --data input"),
    Case("audit-out-is-data", lambda t, m: ["heads", "audit", str(m), "--data", pairs(t, GOOD_LINE), "--out",
                                            str(t / "pairs.jsonl")], r"--out .*pairs.jsonl: is the --data input"),
    Case("experiment-out-is-cache", lambda t, m: ["experiment", str(REPO / "configs" / "demo.yaml"), "--out",
                                                  str(t / "c"), "--cache", str(t / "c")], r"--out .*c: is the --cache input"),
    # item 6: devices
    Case("encode-device-cuda-7", lambda t, m: encode(pairs(t, GOOD_LINE), "--device", "cuda:77"),
         r"--device cuda:77: (CUDA is not available|this machine has \d+ CUDA device)"),
    Case("train-device-cuda-7", lambda t, m: train(t, pairs(t, GOOD_LINE), "--device", "cuda:77"),
         r"--device cuda:77: (CUDA is not available|this machine has \d+ CUDA device)"),
    Case("score-device-cuda-7", lambda t, m: score(t, m, "--device", "cuda:77"),
         r"--device cuda:77: (CUDA is not available|this machine has \d+ CUDA device)"),
    *([Case("encode-device-cuda-absent", lambda t, m: encode(pairs(t, GOOD_LINE), "--device", "cuda"),
            r"--device cuda: CUDA is not available on this machine; use --device cpu"),
       Case("score-device-cuda-absent", lambda t, m: score(t, m, "--device", "cuda"),
            r"--device cuda: CUDA is not available on this machine")] if not HAS_CUDA else []),
    Case("serve-state-corrupt", lambda t, m: serve(m, "--state", state_db(t, m, corrupt=True)),
         r"state.db.*(not a readable|malformed)"),
    Case("train-device-unknown", lambda t, m: train(t, pairs(t, GOOD_LINE), "--device", "gpu"),
         r"--device 'gpu' is not a device; use cpu, cuda, cuda:N or mps"),
    # item 6: YAML depth, numeric ranges
    Case("experiment-yaml-deep-flow", lambda t, m: ["experiment", deep_yaml(t), "--out", str(t / "runs")],
         r"deep.yaml line 1: nested more than 32 levels"),
    Case("experiment-yaml-deep-block", lambda t, m: ["experiment", deep_yaml(t, block=True), "--out", str(t / "runs")],
         r"deep.yaml line 3\d: nested more than 32 levels"),
    Case("train-max-heads", lambda t, m: train(t, pairs(t, GOOD_LINE), "--heads", "auto", "--max-heads", "100000"),
         r"--max-heads must be in \[1, 64\], got 100000"),
    Case("train-max-length", lambda t, m: train(t, pairs(t, GOOD_LINE), "--max-length", "0"),
         r"--max-length must be in \[1, 1000000\], got 0"),
    Case("encode-max-length", lambda t, m: encode(pairs(t, GOOD_LINE), "--max-length", str(10 ** 12)),
         r"--max-length must be in \[1, 1000000\]"),
    Case("encode-batch-size-huge", lambda t, m: encode(pairs(t, GOOD_LINE), "--batch-size", str(10 ** 9)),
         r"--batch-size must be in \[1, 65536\]"),
    Case("encode-tokens-per-batch-huge", lambda t, m: encode(pairs(t, GOOD_LINE), "--tokens-per-batch", str(10 ** 15)),
         r"--tokens-per-batch must be in \[1, "),
    Case("merge-epochs-huge", lambda t, m: ["heads", "merge", str(m), "--data", pairs(t, GOOD_LINE), "--out",
                                            str(t / "merged"), "--epochs", str(10 ** 9)], r"--epochs must be in \[1, 10000\]"),
    Case("merge-min-agreement", lambda t, m: ["heads", "merge", str(m), "--data", pairs(t, GOOD_LINE), "--out",
                                              str(t / "merged"), "--min-agreement", "2"],
         r"--min-agreement must be in \[0.5, 1\], got 2"),
    Case("demo-prompts-huge", lambda t, m: ["demo", "--out", str(t / "demo"), "--prompts", str(10 ** 9)],
         r"--prompts must be at most 100000, got 1000000000"),
    Case("eval-eta-nan", lambda t, m: evaluate(m, pairs(t, GOOD_LINE), "--eta", "nan"), r"--eta must be a finite number > 0"),
    # item 6: a hint names only flags the command has
    Case("hint-train", lambda t, m: train(t, pairs(t, record(chosen=" "))), r"`chosen` is empty; fix it$"),
    Case("hint-eval", lambda t, m: evaluate(m, pairs(t, record(chosen=""))), r"`chosen` is empty; fix it$"),
    Case("hint-feedback", lambda t, m: feedback(t, m, pairs(t, record(rejected=""))), r"`rejected` is empty; fix it$"),
    Case("hint-adapt", lambda t, m: ["adapt", "--model", str(m), "--data", pairs(t, b'{"prompt": "p", "chosen": "a"}'),
                                     "--out", str(t / "adapted")], r"missing field `rejected`; fix it$"),
    Case("hint-heads", lambda t, m: ["heads", str(m), "--data", pairs(t, record(chosen="")), "--report", str(t / "r")],
         r"`chosen` is empty; fix it$"),
    Case("hint-encode-has-the-flag", lambda t, m: encode(pairs(t, record(chosen=""))),
         r"`chosen` is empty; fix it or pass --skip-invalid$"),
    Case("hint-experiment-names-its-config-key",
         lambda t, m: ["experiment", write(t / "exp.yaml", "data: {builder: jsonl, source: %s}\n"
                                           % pairs(t, record(chosen=""))), "--out", str(t / "runs")],
         r"`chosen` is empty; fix it or set `skip_invalid: true` in the config's data section$"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, model_dir, capsys):
    work = tmp_path / "work"
    work.mkdir()
    argv = case.argv(work, model_dir)
    before = tree(work, model_dir.parent)
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code == 2, (code, out.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err[-2000:]
    assert "Traceback" not in out.err + out.out
    assert re.search(case.message, lines[0]), lines[0]
    assert tree(work, model_dir.parent) == before, "the failed command changed files on disk"


def test_the_catalogue_covers_every_case_of_the_issue():
    """Issue 12 asks for at least 60 cases across the CLI and the HTTP API."""
    assert len(CLI_CASES) + len(HTTP_CASES) >= 60
    assert len({c.id for c in CLI_CASES}) == len(CLI_CASES)


# ----- the HTTP catalogue ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A service on the word model, with users ana (one feedback pair) and bo."""
    from micro_rm.serve.app import create_app
    from micro_rm.scoring.engine import RewardScorer
    from micro_rm.serve.settings import ServeSettings

    root = tmp_path_factory.mktemp("http-catalogue")
    settings = ServeSettings(model="unused", state=f"sqlite:///{root / 'state.db'}", admin_token=ADMIN,
                             cache_dir=str(root / "features"), max_texts=8, max_text_chars=200,
                             max_body_bytes=20_000)
    with TestClient(create_app(settings, scorer=RewardScorer(word_model(), WordBackbone()))) as client:
        tokens = {}
        for user in ("ana", "bo"):
            tokens[user] = client.post("/users", json={"user_id": user}, headers=_bearer(ADMIN)).json()["token"]
        assert client.post("/feedback", json=GOOD, headers=_bearer(tokens["ana"])).status_code == 200
        client.tokens = tokens
        yield client


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Call:
    """One request: ``as_`` is whose token (admin, ana, bo, none, wrong); ``raw`` sends bytes."""

    id: str
    method: str
    path: str
    status: int
    message: str
    body: object = None
    raw: bytes | None = None
    as_: str = "admin"
    headers: dict | None = None


SURROGATE_ROLE = b'[{"role": "\\ud800", "content": "hi"}]'
HTTP_CASES = [
    Call("score-surrogate-role", "POST", "/score", 422, r"`prompt\[0\]\.role` is not valid Unicode",
         raw=b'{"prompt": ' + SURROGATE_ROLE + b', "responses": ["a"]}'),
    Call("score-surrogate-content", "POST", "/score", 422, r"`responses\[0\]` is not valid Unicode",
         raw=b'{"prompt": "p", "responses": ["\\udc00"]}'),
    Call("compare-surrogate", "POST", "/compare", 422, r"`b` is not valid Unicode",
         raw=b'{"prompt": "p", "a": "x", "b": "\\ud800"}'),
    Call("feedback-surrogate-role", "POST", "/feedback", 422, r"feedback: `prompt\[0\]\.role` is not valid Unicode",
         raw=b'{"user_id": "ana", "prompt": ' + SURROGATE_ROLE + b', "chosen": "a", "rejected": "b"}'),
    Call("feedback-chosen-equals-rejected", "POST", "/feedback", 422,
         r"feedback: `chosen` and `rejected` are the same", body={**GOOD, "rejected": GOOD["chosen"]}, as_="ana"),
    Call("feedback-empty-chosen", "POST", "/feedback", 422, r"feedback: `chosen` is empty",
         body={**GOOD, "chosen": "  "}, as_="ana"),
    Call("feedback-list-item", "POST", "/feedback", 422, r"feedback\[1\]: `rejected` is empty",
         body=[GOOD, {**GOOD, "rejected": ""}], as_="ana"),
    Call("feedback-empty-list", "POST", "/feedback", 422, r"no feedback pairs", body=[], as_="ana"),
    Call("feedback-missing-field", "POST", "/feedback", 422, r"^body\.chosen: Field required",
         body={"prompt": "p", "rejected": "b"}, as_="ana"),
    Call("feedback-unknown-field", "POST", "/feedback", 422, r"^body\.margin: Extra inputs",
         body={**GOOD, "margin": 1}, as_="ana"),
    Call("feedback-admin-without-user", "POST", "/feedback", 422, r"`user_id` is required with the admin token",
         body=GOOD),
    Call("feedback-too-many", "POST", "/feedback", 413, r"9 texts in one request; the limit is 8", body=[GOOD] * 9,
         as_="ana"),
    Call("feedback-other-user", "POST", "/feedback", 403, r"belongs to user 'bo'", body={**GOOD, "user_id": "ana"},
         as_="bo"),
    Call("feedback-bad-idempotency-key", "POST", "/feedback", 422, r"Idempotency-Key must be 1-255 visible ASCII",
         body=GOOD, as_="ana", headers={"Idempotency-Key": "x" * 300}),
    Call("score-text-too-long", "POST", "/score", 422, r"`responses\[0\]` has 201 characters; the limit is 200",
         body={"prompt": "p", "responses": ["x" * 201]}),
    Call("score-body-too-large", "POST", "/score", 413, r"request body larger than 20000 bytes",
         raw=b'{"prompt": "' + b"x" * 30_000 + b'"}'),
    Call("score-bad-content-length", "POST", "/score", 400, r"invalid Content-Length", raw=b"{}",
         headers={"Content-Length": "lots"}),
    Call("score-not-json", "POST", "/score", 422, r"body\.1: JSON decode error", raw=b"{not json"),
    Call("score-deep-json", "POST", "/score", 400, r"request body: not readable JSON", raw=b"[" * 19_000),
    Call("score-invalid-utf8", "POST", "/score", 400, r"request body: not readable JSON",
         raw=b'{"prompt": "\xff"}'),
    Call("score-empty-context", "POST", "/score", 422, r"body\.context: String should have at least 1 character",
         body={"prompt": "p", "responses": ["a"], "context": ""}),
    Call("score-empty-user-id", "POST", "/score", 422, r"body\.user_id: String should match pattern",
         body={"prompt": "p", "responses": ["a"], "user_id": ""}),
    Call("score-no-token", "POST", "/score", 401, r"missing bearer token", body={"prompt": "p", "responses": ["a"]},
         as_="none"),
    Call("score-wrong-token", "POST", "/score", 401, r"invalid bearer token", body={"prompt": "p", "responses": ["a"]},
         as_="wrong"),
    Call("get-reward-unsplittable", "POST", "/get_reward", 422, r"query\[0\] does not contain the separator",
         body={"query": ["no separator here"], "separator": "<|assistant|>"}),
    Call("get-reward-surrogate-prompt", "POST", "/get_reward", 422, r"`prompts\[0\]` is not valid Unicode",
         raw=b'{"query": ["hi there"], "prompts": ["\\ud800"]}'),
    Call("get-reward-too-many", "POST", "/get_reward", 413, r"9 texts in one request; the limit is 8 \(--max-texts\)",
         body={"query": ["a b"] * 9, "prompts": ["a"] * 9}),
    Call("get-reward-long-context", "POST", "/get_reward", 422, r"`context\[0\]` has 201 characters; the limit is 200",
         body={"query": ["a b"], "prompts": ["a"], "context": "x" * 201}),
    Call("users-create-existing", "POST", "/users", 409, r"user 'ana' already exists", body={"user_id": "ana"}),
    Call("users-create-bad-id", "POST", "/users", 422, r"body\.user_id: String should match pattern",
         body={"user_id": "bad id!"}),
    Call("users-create-needs-admin", "POST", "/users", 403, r"this needs the admin token", body={"user_id": "cy"},
         as_="bo"),
    Call("users-rotate-unknown", "POST", "/users/nobody/token", 404, r"unknown user 'nobody': it has no token"),
    Call("users-get-unknown", "GET", "/users/nobody", 404, r"unknown user 'nobody'"),
    Call("users-delete-unknown", "DELETE", "/users/nobody", 404, r"unknown user 'nobody'"),
    Call("users-read-other", "GET", "/users/ana", 403, r"belongs to user 'bo'", as_="bo"),
]


@pytest.mark.parametrize("call", HTTP_CASES, ids=[c.id for c in HTTP_CASES])
def test_http_bad_input_is_one_line_4xx_and_changes_nothing(call, client):
    from micro_rm.serve.deps import get_store

    store = client.app.state.store
    before = {u: (store.get(u).num_feedback, store.feedback_count(u)) for u in store.list_users()}
    tokens = {"admin": ADMIN, "none": None, "wrong": "mrm_not-a-token", **client.tokens}
    headers = {**(_bearer(tokens[call.as_]) if tokens[call.as_] else {}), **(call.headers or {})}
    if call.raw is not None:
        response = client.request(call.method, call.path, content=call.raw,
                                  headers={"Content-Type": "application/json", **headers})
    else:
        response = client.request(call.method, call.path, json=call.body, headers=headers)
    assert response.status_code == call.status, response.text
    body = response.json()
    line = body["message"] if isinstance(body["detail"], list) else body["detail"]
    assert isinstance(line, str) and "\n" not in line and "Traceback" not in response.text
    assert re.search(call.message, line), line
    assert {u: (store.get(u).num_feedback, store.feedback_count(u)) for u in store.list_users()} == before
    assert get_store not in client.app.dependency_overrides


def test_feedback_with_bad_data_creates_no_state_file(tmp_path, model_dir, capsys):
    """Issue 12, item 6: bad data used to create (and bind to the model) a new state database."""
    data = pairs(tmp_path, record(chosen=""))
    assert main(feedback(tmp_path, model_dir, data)) == 2
    assert not (tmp_path / "state.db").exists()
    assert main(feedback(tmp_path, model_dir, pairs(tmp_path, GOOD_LINE))) == 0
    assert (tmp_path / "state.db").exists()


def test_json_output_is_strict_json(tmp_path, capsys):
    """Issue 12, item 6: ``--json`` printed a bare NaN, which strict parsers reject."""
    from micro_rm.cli.app import emit

    emit({"nll": float("nan"), "per_attribute": {"a": float("inf")}, "n": np.float64("nan")}, True, "")
    line = capsys.readouterr().out.strip()
    assert json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name}")) == {
        "nll": None, "per_attribute": {"a": None}, "n": None}


# ----- issue 25, item 6: full disks and read-only folders leave nothing behind ----------------
PROGRESS = re.compile(r"^[\w :(),=-]+: +(\d+%\||\d+\w+ \[)")   # a tqdm bar: "encoding:  40%|██  | 2/5 [..."
LIMITED = """
import resource, sys
sys.path.insert(0, {tests!r})
import micro_rm.features.backbones as backbones
from test_train_cli import WordBackbone
backbones.load_backbone = lambda name, **kwargs: WordBackbone()
from micro_rm.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.exit(main(sys.argv[1:]))
"""


def writers(tmp: Path, model: Path) -> dict[str, list[str]]:
    """Every command that writes a model, features or scores, on the catalogue's warm cache."""
    data = str(model.parent / "train.jsonl")
    return {
        "train": ["train", "--data", data, "--backbone", "fake-words", "--heads", "2", "--out", str(tmp / "out"),
                  "--epochs", "1"],
        "encode": ["encode", "--data", data, "--backbone", "fake-words", "--out", str(tmp / "out")],
        "adapt": ["adapt", "--model", str(model), "--data", data, "--out", str(tmp / "out"), "--budget", "4"],
        "heads-mask": ["heads", "mask", str(model), "--head", "0", "--out", str(tmp / "out")],
        "export-scalar": ["export-scalar", "--model", str(model), "--out", str(tmp / "out"), "--weights", "1,1"],
        "score": ["score", "--model", str(model), "--data", data, "--out", str(tmp / "out")],
        "data-build": ["data", "build", "jsonl", "--source", data, "--out", str(tmp / "out")],
    }


@pytest.mark.parametrize("command", list(writers(Path("t"), Path("m/model"))))
def test_disk_full_is_exit_1_with_one_line_and_no_partial_output(command, tmp_path, model_dir):
    """A 1000-byte file size limit (RLIMIT_FSIZE) fails every writer halfway: one line, exit 1,
    and neither the output nor a temporary file beside it is left."""
    import subprocess
    import sys

    argv = writers(tmp_path, model_dir)[command]
    env = {**os.environ, "MICRO_RM_CACHE": str(model_dir.parent / "cache"), "TQDM_DISABLE": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    before = tree(model_dir.parent)
    code = LIMITED.format(tests=str(REPO / "tests"), limit=1000)
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                            timeout=300)
    # the work before the write shows its progress bars and warnings; the failure is one line
    lines = [line for line in re.split(r"[\r\n]", result.stderr) if line.strip()
             and not PROGRESS.search(line) and not line.startswith("WARNING")]
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(lines) == 1 and re.match(r"error: --out .*/out: File too large \(the disk or the file size limit "
                                        r"is full\); nothing was kept", lines[0]), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a partial output or temporary file was left"
    assert tree(model_dir.parent) == before


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made unwritable: chmod for a user, the immutable attribute for root (whom
    permissions do not stop); skips where neither works."""
    import subprocess

    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable:
            folder.chmod(0o755)
            pytest.skip("cannot make a folder read-only here (root without chattr)")
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.mark.parametrize("command", [*writers(Path("t"), Path("m/model")), "experiment", "eval-report"])
def test_read_only_output_folder_is_exit_2_with_one_line(command, tmp_path, model_dir, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    argv = {**writers(locked, model_dir),
            "experiment": ["experiment", str(REPO / "configs" / "demo.yaml"), "--out", str(locked / "out")],
            "eval-report": evaluate(model_dir, str(model_dir.parent / "train.jsonl"), "--report",
                                    str(locked / "out"))}[command]
    before = tree(model_dir.parent)
    with read_only(locked):
        capsys.readouterr()
        code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert re.match(r"error: --(out|report) .*locked/out: .*locked is not writable", lines[0]), lines[0]
    assert list(locked.iterdir()) == [] and tree(model_dir.parent) == before
