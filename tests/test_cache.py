"""The feature cache and pair featurisation, with a fake deterministic backbone."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pytest

from micro_rm.data.records import render_text
from micro_rm.errors import MicroRMError
from micro_rm.features.cache import FeatureCache
from micro_rm.features.featurize import featurize
from micro_rm.features.shards import item_keys

TESTS = Path(__file__).resolve().parent


class FakeBackbone:
    """Vectors from a hash of the item; records every batch it encodes."""

    name = "fake"

    def __init__(self, dim: int = 8, seed: int = 0, sleep: float = 0.0):
        self.dim = dim
        self.seed = seed
        self.sleep = sleep
        self.batches: list[list[tuple[str, Optional[str]]]] = []

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "fake", "dim": self.dim, "seed": self.seed,
                "spec": {"name": "fake", "dim": self.dim, "seed": self.seed}}

    def reward_item(self, prompt, response, context=None):
        first = render_text(prompt) if context is None else f"{context}\n\n{render_text(prompt)}"
        return (first, render_text(response))

    def route_item(self, prompt, context=None):
        text = render_text(prompt)
        return (text if context is None else f"{context}\n\n{text}", None)

    def token_lengths(self, items: Sequence[tuple[str, Optional[str]]]) -> list[int]:
        return [len(a.split()) + len((b or "").split()) for a, b in items]

    def encode(self, items):
        self.batches.append(list(items))
        if self.sleep:
            time.sleep(self.sleep)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for i, item in enumerate(items):
            digest = hashlib.sha256(json.dumps([self.seed, *item]).encode()).digest()
            seed = int.from_bytes(digest[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out

    def encoded_items(self) -> list:
        return [item for batch in self.batches for item in batch]


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


ITEMS = [(words(n % 7 + 1, f"t{n}"), None if n % 3 else words(n % 5 + 1)) for n in range(30)]


def test_duplicates_are_encoded_once_and_share_a_vector(tmp_path):
    backbone = FakeBackbone()
    items = ITEMS[:5] + ITEMS[:5] + [ITEMS[2]]
    vectors, stats = FeatureCache(tmp_path).get_or_encode(items, backbone, progress=False)
    assert vectors.shape == (11, 8) and vectors.dtype == np.float32
    assert sorted(backbone.encoded_items()) == sorted(ITEMS[:5])
    assert (stats.texts, stats.encoded, stats.from_cache) == (5, 5, 0)
    np.testing.assert_array_equal(vectors[:5], vectors[5:10])
    np.testing.assert_array_equal(vectors[10], vectors[2])


def test_second_call_encodes_nothing_and_returns_the_same_vectors(tmp_path):
    first, _ = FeatureCache(tmp_path).get_or_encode(ITEMS, FakeBackbone(), progress=False)
    backbone = FakeBackbone()
    second, stats = FeatureCache(tmp_path).get_or_encode(ITEMS, backbone, progress=False)
    assert (stats.encoded, stats.from_cache) == (0, len(ITEMS))
    assert backbone.batches == []
    np.testing.assert_array_equal(first, second)


def test_partly_cached_call_encodes_only_the_new_items(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.get_or_encode(ITEMS[:10], FakeBackbone(), progress=False)
    backbone = FakeBackbone()
    vectors, stats = cache.get_or_encode(ITEMS, backbone, progress=False)
    assert (stats.encoded, stats.from_cache) == (20, 10)
    assert sorted(backbone.encoded_items()) == sorted(ITEMS[10:])
    fresh, _ = FeatureCache(tmp_path / "fresh").get_or_encode(ITEMS, FakeBackbone(), progress=False)
    np.testing.assert_array_equal(vectors, fresh)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_vectors_round_trip(tmp_path, dtype):
    exact = FakeBackbone().encode(ITEMS)
    cache = FeatureCache(tmp_path, dtype=dtype, shard_size=7)  # several shards
    fresh, _ = cache.get_or_encode(ITEMS, FakeBackbone(), progress=False)
    cached, stats = FeatureCache(tmp_path, dtype=dtype).get_or_encode(ITEMS, FakeBackbone(),
                                                                      progress=False)
    assert stats.encoded == 0
    np.testing.assert_array_equal(fresh, cached)  # fresh and cached calls agree exactly
    if dtype == "float32":
        np.testing.assert_array_equal(cached, exact)
    else:
        np.testing.assert_allclose(cached, exact, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(cached, exact.astype(np.float16).astype(np.float32))


def test_batches_are_length_sorted_longest_first(tmp_path):
    backbone = FakeBackbone()
    FeatureCache(tmp_path).get_or_encode(ITEMS, backbone, batch_size=4, progress=False)
    assert [len(b) for b in backbone.batches] == [4] * 7 + [2]
    lengths = backbone.token_lengths(backbone.encoded_items())
    assert lengths == sorted(lengths, reverse=True)


def test_shards_are_flushed_every_shard_size_items(tmp_path):
    cache = FeatureCache(tmp_path, shard_size=8)
    cache.get_or_encode(ITEMS, FakeBackbone(), batch_size=4, progress=False)
    shards = list(cache.folder(FakeBackbone().fingerprint()).glob("shard-*.safetensors"))
    assert len(shards) == 4  # 8 + 8 + 8 + 6


def test_folder_written_by_another_setting_is_refused(tmp_path):
    backbone = FakeBackbone()
    cache = FeatureCache(tmp_path)
    folder = cache.folder(backbone.fingerprint())
    folder.mkdir(parents=True)
    (folder / "fingerprint.json").write_text(json.dumps({"model": "other"}))
    with pytest.raises(MicroRMError, match=r"cache folder .* was written by backbone setting "
                                           r"\{\"model\":\"other\"\}, not \{.*\"seed\":0"):
        cache.get_or_encode(ITEMS, backbone, progress=False)
    assert not list(folder.glob("shard-*"))


def test_missing_items_without_encoding_is_an_error(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.get_or_encode(ITEMS[:10], FakeBackbone(), progress=False)
    backbone = FakeBackbone()
    with pytest.raises(MicroRMError, match=r"20 of 30 texts are not in the cache at .*; run "
                                           r"`micro-rm encode --data FILE --backbone NAME` first"):
        cache.get_or_encode(ITEMS, backbone, progress=False, allow_encode=False)
    assert backbone.batches == []
    vectors, stats = cache.get_or_encode(ITEMS[:10], backbone, progress=False, allow_encode=False)
    assert stats.from_cache == 10 and vectors.shape == (10, 8)


def test_reading_an_empty_cache_creates_nothing(tmp_path):
    with pytest.raises(MicroRMError, match="30 of 30 texts are not in the cache"):
        FeatureCache(tmp_path / "c").get_or_encode(ITEMS, FakeBackbone(), progress=False,
                                                   allow_encode=False)
    assert not (tmp_path / "c").exists()


def test_stray_temp_files_are_ignored(tmp_path):
    cache = FeatureCache(tmp_path)
    first, _ = cache.get_or_encode(ITEMS, FakeBackbone(), progress=False)
    folder = cache.folder(FakeBackbone().fingerprint())
    (folder / ".shard-dead.safetensors.abc123.tmp").write_bytes(b"\x00garbage")
    old = folder / ".shard-older.safetensors.def456.tmp"
    old.write_bytes(b"\x00garbage")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    vectors, stats = FeatureCache(tmp_path).get_or_encode(ITEMS, FakeBackbone(), progress=False)
    assert stats.encoded == 0
    np.testing.assert_array_equal(vectors, first)
    assert not old.exists()  # a day-old temp file belonged to a dead writer


def test_damaged_shard_names_the_file(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.get_or_encode(ITEMS, FakeBackbone(), progress=False)
    folder = cache.folder(FakeBackbone().fingerprint())
    (folder / "shard-0-0-bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(MicroRMError, match="shard-0-0-bad.safetensors: unreadable feature shard"):
        FeatureCache(tmp_path).get_or_encode(ITEMS, FakeBackbone(), progress=False)


def test_two_settings_in_one_root_do_not_share_vectors(tmp_path):
    cache = FeatureCache(tmp_path)
    a, _ = cache.get_or_encode(ITEMS, FakeBackbone(seed=0), progress=False)
    b, stats = cache.get_or_encode(ITEMS, FakeBackbone(seed=1), progress=False)
    assert stats.encoded == len(ITEMS)
    assert not np.allclose(a, b)
    folders = {cache.folder(FakeBackbone(seed=s).fingerprint()) for s in (0, 1)}
    assert len(folders) == 2
    again, stats = FeatureCache(tmp_path).get_or_encode(ITEMS, FakeBackbone(seed=0), progress=False)
    assert stats.encoded == 0
    np.testing.assert_array_equal(again, a)


def test_keys_depend_on_fingerprint_and_both_parts_of_the_item():
    keys = item_keys({"m": 1}, [("a", "b"), ("a", None), ("a b", None), ("a", "b")])
    assert keys.shape == (4, 32) and keys.dtype == np.uint8
    assert len({k.tobytes() for k in keys}) == 3
    assert not np.array_equal(item_keys({"m": 2}, [("a", "b")])[0], keys[0])


def test_default_root_is_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MICRO_RM_CACHE", str(tmp_path / "env"))
    assert FeatureCache().root == tmp_path / "env"


def test_bad_storage_dtype():
    with pytest.raises(MicroRMError,
                       match=r"cache storage dtype \(--storage\) must be one of float16, float32"):
        FeatureCache(dtype="int8")


def test_float16_overflow_asks_for_float32_storage(tmp_path):
    class Loud(FakeBackbone):
        def encode(self, items):
            return super().encode(items) * 1e6

    with pytest.raises(MicroRMError,
                       match="non-finite vectors in float16 storage; pass --storage float32"):
        FeatureCache(tmp_path).get_or_encode(ITEMS, Loud(), progress=False)
    vectors, _ = FeatureCache(tmp_path, dtype="float32").get_or_encode(ITEMS, Loud(), progress=False)
    assert np.isfinite(vectors).all()


# --- featurize -------------------------------------------------------------------------------

RECORDS = [
    {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "A dog.", "context": "a painter",
     "attribute": "art"},
    {"prompt": "Name a colour.", "chosen": "Blue, like the sea.", "rejected": "Red.",
     "context": "a sailor", "attribute": "sea"},
    {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "Go away."},
]


def test_featurize_aligns_rows_with_records(tmp_path):
    backbone = FakeBackbone()
    features, stats = featurize(RECORDS, backbone, FeatureCache(tmp_path), progress=False)
    assert len(features) == 3 and features.route.shape == (3, 16) and features.context_dim == 8
    assert features.prompts == ["Name a colour.", "Name a colour.", "user: Hi"]
    assert features.attributes == ["art", "sea", None]
    assert features.fingerprint == backbone.fingerprint()
    # ("Name a colour.", "Red.") is chosen in pair 0 and rejected in pair 1: one text, one vector
    np.testing.assert_array_equal(features.chosen[0], features.rejected[1])
    # 5 reward texts; route: 2 prompts, 2 contexts and the empty context
    assert stats.texts == 10 and stats.encoded == 10
    prompt, context = backbone.encode([("Name a colour.", None), ("a painter", None)])
    unit = context / np.linalg.norm(context)                       # one view: the unit sentence vector
    np.testing.assert_allclose(features.route[0], np.concatenate([prompt, unit]), atol=1e-2)
    np.testing.assert_array_equal(features.route[0, :8], features.route[1, :8])  # same prompt
    assert not np.allclose(features.route[0], features.route[1])  # the context changes the route
    assert not features.route[2, 8:].any()                         # no context: zeros


def test_clauses_encoding_pools_the_unit_vectors_of_the_sentence_and_its_clauses(tmp_path):
    backbone = FakeBackbone()
    record = {**RECORDS[0], "context": "I paint landscapes; I sail boats, daily."}
    features, _ = featurize([record], backbone, FeatureCache(tmp_path), progress=False)
    views = backbone.encode([(v, None) for v in ("I paint landscapes; I sail boats, daily.",
                                                 "I paint landscapes", "I sail boats")])
    mean = (views / np.linalg.norm(views, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(features.route[0, 8:], mean / np.linalg.norm(mean), atol=1e-2)
    whole, _ = featurize([record], backbone, FeatureCache(tmp_path), context_encoding="separate", progress=False)
    assert whole.context_encoding == "separate" and features.context_encoding == "clauses"
    assert not np.allclose(whole.route[0, 8:], features.route[0, 8:], atol=1e-2)


def test_featurize_joint_layout_reads_context_and_prompt_as_one_text(tmp_path):
    backbone = FakeBackbone()
    features, _ = featurize(RECORDS, backbone, FeatureCache(tmp_path), context_encoding="joint",
                            progress=False)
    assert features.route.shape == (3, 8) and features.context_dim == 0
    expected = backbone.encode([("a painter\n\nName a colour.", None)])[0]
    np.testing.assert_allclose(features.route[0], expected, atol=1e-2)


def test_featurize_out_folder_keeps_the_route_layout(tmp_path):
    backbone = FakeBackbone()
    in_ram, _ = featurize(RECORDS, backbone, FeatureCache(tmp_path / "c"), progress=False)
    on_disk, _ = featurize(RECORDS, backbone, FeatureCache(tmp_path / "c"), progress=False,
                           out=tmp_path / "f")
    assert on_disk.context_dim == in_ram.context_dim == 8
    np.testing.assert_allclose(np.asarray(on_disk.route, dtype=np.float32), in_ram.route, atol=1e-2)


def test_features_carry_the_settings_they_were_built_with_into_a_folder_and_a_model(tmp_path):
    from micro_rm.features.base import FeatureSettings
    from micro_rm.features.store import load_features, save_features
    from micro_rm.train.config import Stage1Config
    from micro_rm.train.stage1 import fit_stage1

    settings = FeatureSettings(router_input="prompt", context_in_reward=True, context_encoding="separate")
    features, _ = featurize(RECORDS, FakeBackbone(), FeatureCache(tmp_path / "c"), progress=False,
                            router_input="prompt", context_in_reward=True, context_encoding="separate")
    written, _ = featurize(RECORDS, FakeBackbone(), FeatureCache(tmp_path / "c"), progress=False,
                           router_input="prompt", context_in_reward=True, context_encoding="separate",
                           out=tmp_path / "f")
    save_features(features.subset([0, 1]), tmp_path / "g")
    assert features.settings == written.settings == load_features(tmp_path / "g").settings == settings
    model, _ = fit_stage1(features, Stage1Config(heads=2, epochs=1), progress=False)
    assert model.config.feature_settings() == settings
    assert model.config.feature == {"router_input": "prompt", "context_in_reward": True}


def test_featurize_router_input_prompt_and_context_in_reward(tmp_path):
    backbone = FakeBackbone()
    cache = FeatureCache(tmp_path)
    plain, _ = featurize(RECORDS, backbone, cache, router_input="prompt", progress=False)
    np.testing.assert_array_equal(plain.route[0], plain.route[1])
    with_context, _ = featurize(RECORDS, backbone, cache, context_in_reward=True, progress=False)
    assert not np.allclose(with_context.chosen[0], plain.chosen[0])
    np.testing.assert_array_equal(with_context.chosen[2], plain.chosen[2])  # no context: same


def test_featurize_encodes_all_roles_in_one_sorted_pass(tmp_path):
    backbone = FakeBackbone()
    featurize(RECORDS, backbone, FeatureCache(tmp_path), progress=False)
    lengths = backbone.token_lengths(backbone.encoded_items())
    assert lengths == sorted(lengths, reverse=True)


def test_featurize_rejects_unknown_router_input(tmp_path):
    with pytest.raises(MicroRMError,
                       match="`router_input` must be one of context, prompt, got 'user'"):
        featurize(RECORDS, FakeBackbone(), FeatureCache(tmp_path), router_input="user")


# --- a killed run ----------------------------------------------------------------------------

KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_cache import FakeBackbone, ITEMS
from micro_rm.features.cache import FeatureCache

cache = FeatureCache({root!r}, shard_size=4)
cache.get_or_encode(ITEMS, FakeBackbone(sleep=0.15), batch_size=2, progress=False)
print("finished")
"""


def test_killed_run_keeps_finished_shards_and_resumes(tmp_path):
    from safetensors import safe_open

    clean, _ = FeatureCache(tmp_path / "clean").get_or_encode(ITEMS, FakeBackbone(), progress=False)
    root = tmp_path / "killed"
    folder = FeatureCache(root).folder(FakeBackbone().fingerprint())
    script = tmp_path / "encode.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT.format(tests=str(TESTS), root=str(root))))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(folder.glob("shard-*.safetensors")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard appeared within 60 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    shards = sorted(folder.glob("shard-*.safetensors"))
    stored = 0
    for shard in shards:  # every shard that exists is whole
        with safe_open(str(shard), framework="numpy") as fh:
            keys, vectors = fh.get_tensor("keys"), fh.get_tensor("vectors")
        assert keys.shape == (len(vectors), 32) and len(vectors) in (2, 4)
        assert np.isfinite(vectors).all()
        stored += len(vectors)
    assert 0 < stored < len(ITEMS)

    backbone = FakeBackbone()
    resumed, stats = FeatureCache(root).get_or_encode(ITEMS, backbone, progress=False)
    assert (stats.from_cache, stats.encoded) == (stored, len(ITEMS) - stored)
    assert len(backbone.encoded_items()) == len(ITEMS) - stored
    np.testing.assert_array_equal(resumed, clean)


def test_two_writers_in_one_folder_see_each_others_shards(tmp_path):
    first, second = FeatureCache(tmp_path), FeatureCache(tmp_path)
    second.get_or_encode(ITEMS[:3], FakeBackbone(), progress=False)  # opens the folder early
    first.get_or_encode(ITEMS[:20], FakeBackbone(), progress=False)
    backbone = FakeBackbone()
    _, stats = second.get_or_encode(ITEMS, backbone, progress=False)
    assert (stats.from_cache, stats.encoded) == (20, 10)
