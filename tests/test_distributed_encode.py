"""``micro-rm encode`` under ``torchrun --nproc_per_node=2`` (CPU, gloo): the same cache as one
process, shards reused on restart, one JSON line from rank 0; and the pieces it is built from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from micro_rm.cli import main
from micro_rm.errors import MicroRMError
from micro_rm.features.batching import plan_batches
from micro_rm.features.cache import FeatureCache
from micro_rm.features.distributed import launch_env
from micro_rm.features.featurize import record_items
from micro_rm.features.shards import item_keys

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def static_backbone():
    try:
        from micro_rm.features.backbones import load_backbone

        return load_backbone("static")
    except Exception as exc:  # missing weights or tokenizer: nothing to test against
        pytest.skip(f"static backbone unavailable: {type(exc).__name__}: {exc}")


def pair_file(path: Path, n: int = 120) -> Path:
    """Pairs of varied lengths, with shared prompts and some without context."""
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(300)]
    text = lambda k: " ".join(rng.choice(words, rng.integers(1, k)))  # noqa: E731
    prompts = [text(40) for _ in range(n // 3)]
    with path.open("w") as fh:
        for i in range(n):
            record = {"prompt": prompts[i % len(prompts)], "chosen": text(90), "rejected": text(90)}
            if i % 2:
                record["context"] = text(12)
            fh.write(json.dumps(record) + "\n")
    return path


def torchrun(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MICRO_RM_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--standalone", "-m", "micro_rm.cli", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def cached(cache: Path, items, backbone) -> tuple[np.ndarray, np.ndarray]:
    """Every stored key (sorted) and the vectors of ``items``, read from the cache."""
    from safetensors import safe_open

    folder = FeatureCache(cache).folder(backbone.fingerprint())
    keys = []
    for shard in folder.glob("shard-*.safetensors"):
        with safe_open(str(shard), framework="numpy") as fh:
            keys.append(fh.get_tensor("keys"))
    keys = np.concatenate(keys)
    keys = keys[np.lexsort(keys.T[::-1])]
    vectors, _ = FeatureCache(cache).get_or_encode(items, backbone, progress=False,
                                                   allow_encode=False)
    return keys, vectors


def test_two_processes_give_exactly_the_one_process_cache_and_resume(tmp_path, capsys,
                                                                     static_backbone):
    from micro_rm.data.readers import read_pairs

    data = pair_file(tmp_path / "pairs.jsonl")
    records = read_pairs(str(data))
    items = record_items(records, static_backbone)
    unique = len(set(items))
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["encode", "--data", str(data), "--backbone", "static", "--json", "--batch-size", "8"]

    assert main([*args, "--cache", str(one)]) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert single["encoded"] == unique and single["ranks"] == 1

    # A earlier run (or a killed rank) left some shards: they are reused, not encoded again.
    FeatureCache(two).fill(items[:40], static_backbone, progress=False)
    prefilled = len(set(items[:40]))
    first = torchrun([*args, "--cache", str(two)], two)
    lines = first.stdout.strip().splitlines()
    assert len(lines) == 1, first.stdout            # rank 0 prints, rank 1 prints nothing
    result = json.loads(lines[0])
    assert (result["texts"], result["encoded"], result["from_cache"], result["ranks"]) == (
        unique, unique - prefilled, prefilled, 2)
    folder = FeatureCache(two).folder(static_backbone.fingerprint())
    pids = {shard.name.split("-")[2] for shard in folder.glob("shard-*.safetensors")}
    assert len(pids) == 3                            # the prefill and both ranks wrote shards

    keys_one, vectors_one = cached(one, items, static_backbone)
    keys_two, vectors_two = cached(two, items, static_backbone)
    np.testing.assert_array_equal(keys_two, keys_one)   # same index: every key once
    np.testing.assert_array_equal(vectors_two, vectors_one)

    again = json.loads(torchrun([*args, "--cache", str(two)], two).stdout.strip())
    assert (again["encoded"], again["from_cache"]) == (0, unique)


def test_plan_batches_by_count_and_by_tokens():
    lengths = [9, 50, 30, 50, 40, 12]
    assert [b.tolist() for b in plan_batches(lengths, batch_size=4)] == [[1, 3, 4, 2], [5, 0]]
    batches = plan_batches(lengths, tokens_per_batch=100)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 2], [5, 0]]
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in batches)
    assert [b.tolist() for b in plan_batches([300, 2], tokens_per_batch=100)] == [[0], [1]]


def test_plan_batches_pads_no_item_to_more_than_twice_its_length():
    # one service micro-batch: 5 queries' prompt + response items (100 tokens), then their prompts
    assert [b.tolist() for b in plan_batches([100] * 5 + [40] * 5, batch_size=8)] == [[0, 1, 2, 3, 4],
                                                                                      [5, 6, 7, 8, 9]]
    lengths = np.random.default_rng(0).integers(1, 512, size=300)
    batches = plan_batches(lengths, batch_size=32)
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    assert all(2 * lengths[b].min() >= lengths[b].max() for b in batches)
    # each extra cut halves the longest length: at most log2(longest / shortest) of them
    assert len(batches) <= 300 // 32 + 1 + np.log2(lengths.max() / lengths.min())


def test_tokens_per_batch_gives_the_same_vectors(tmp_path, static_backbone):
    items = record_items([{"prompt": "Hi " * i, "chosen": "yes " * (i + 1), "rejected": "no"}
                          for i in range(1, 30)], static_backbone)
    by_count, _ = FeatureCache(tmp_path / "a").get_or_encode(items, static_backbone, progress=False)
    by_tokens, stats = FeatureCache(tmp_path / "b").get_or_encode(
        items, static_backbone, tokens_per_batch=64, progress=False)
    np.testing.assert_array_equal(by_tokens, by_count)
    with pytest.raises(MicroRMError, match="--tokens-per-batch must be at least 1"):
        FeatureCache(tmp_path).fill(items, static_backbone, tokens_per_batch=0)


def test_fill_returns_counts_without_vectors(tmp_path, static_backbone):
    items = record_items([{"prompt": "Say hi.", "chosen": "Hello!", "rejected": "Go."}] * 3,
                         static_backbone)
    cache = FeatureCache(tmp_path)
    stats = cache.fill(items, static_backbone, progress=False)
    # 2 reward texts; route: the prompt and the empty context (separate layout)
    assert (stats.texts, stats.encoded, stats.from_cache, stats.ranks) == (4, 4, 0, 1)
    assert cache.fill(items, static_backbone, progress=False).encoded == 0
    keys = item_keys(static_backbone.fingerprint(), list(dict.fromkeys(items)))
    found, _ = cache.lookup(keys, static_backbone.fingerprint(), static_backbone.dim)
    assert found.all()


def test_launch_env_reads_the_launcher_variables():
    assert launch_env({}) is None
    assert launch_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert launch_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(MicroRMError, match="RANK=4 is outside 0..3"):
        launch_env({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(MicroRMError, match="must be integers"):
        launch_env({"WORLD_SIZE": "two"})


def test_encode_out_writes_memory_mapped_features(tmp_path, capsys, static_backbone):
    from micro_rm.data.readers import read_pairs
    from micro_rm.features.featurize import featurize
    from micro_rm.features.store import load_features

    data = pair_file(tmp_path / "pairs.jsonl", n=30)
    out = tmp_path / "features"
    assert main(["encode", "--data", str(data), "--backbone", "static", "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["features"] == str(out)
    mapped = load_features(out)
    assert isinstance(mapped.chosen, np.memmap) and mapped.chosen.dtype == np.float16
    in_ram, _ = featurize(read_pairs(str(data)), static_backbone,
                          FeatureCache(tmp_path / "cache"), progress=False, allow_encode=False)
    for name in ("chosen", "rejected", "route"):
        np.testing.assert_array_equal(getattr(mapped, name), getattr(in_ram, name))
    assert mapped.prompts == in_ram.prompts and mapped.fingerprint == in_ram.fingerprint


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "micro_rm.cli", "encode", "--help"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and "--tokens-per-batch" in done.stdout


def test_encode_out_records_the_context_encoding_and_refuses_an_unknown_one(tmp_path, capsys):
    from micro_rm.features.store import load_features

    data = pair_file(tmp_path / "pairs.jsonl", n=12)
    out = tmp_path / "features"
    assert main(["encode", "--data", str(data), "--backbone", "static", "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "--context-encoding", "separate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["context_encoding"] == "separate"
    assert load_features(out).context_encoding == "separate"
    assert main(["encode", "--data", str(data), "--backbone", "static", "--out", str(tmp_path / "other"),
                 "--cache", str(tmp_path / "cache"), "--context-encoding", "pooled"]) == 2
    assert "--context-encoding must be one of clauses, separate, joint" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()

