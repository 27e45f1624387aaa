"""The service's feature path (:class:`micro_rm.scoring.features.FeatureStore`): new vectors are
answered rounded as the disk cache stores them and written by a background thread; a fresh answer,
a cached one and the feature cache's own read-back are bit-identical, and a failing write fails
no request."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any, Optional, Sequence

import numpy as np
import pytest

from micro_rm.features.cache import FeatureCache
from micro_rm.scoring.features import FeatureStore


class FakeBackbone:
    """Vectors from a hash of the item (not float16-representable); records every batch."""

    name = "fake"
    dim = 6

    def __init__(self):
        self.batches: list[list[tuple[str, Optional[str]]]] = []

    def fingerprint(self) -> dict[str, Any]:
        return {"model": "fake", "dim": self.dim}

    def token_lengths(self, items: Sequence[tuple[str, Optional[str]]]) -> list[int]:
        return [len(a.split()) + len((b or "").split()) for a, b in items]

    def encode(self, items):
        self.batches.append(list(items))
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for i, item in enumerate(items):
            digest = hashlib.sha256(json.dumps(list(item)).encode()).digest()
            out[i] = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(self.dim)
        return out


ITEMS = [("why is the sea salty", "rivers carry minerals"), ("why is the sea salty", None),
         ("one two three four five", "six"), ("short", None)]


class BlockedCache(FeatureCache):
    """A feature cache whose writes wait for ``release`` (or fail with ``error``)."""

    def __init__(self, root, error: Optional[Exception] = None, **kwargs):
        super().__init__(root, **kwargs)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.error = error
        self.writes = 0

    def write(self, fingerprint, keys, vectors):
        self.entered.set()
        self.release.wait()
        self.writes += 1
        if self.error is not None:
            raise self.error
        return super().write(fingerprint, keys, vectors)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_fresh_cached_and_read_back_vectors_are_bit_identical(tmp_path, dtype):
    backbone = FakeBackbone()
    # today's route: encode, write a shard, read the vectors back
    read_back, _ = FeatureCache(tmp_path / "old", dtype).get_or_encode(ITEMS, backbone, progress=False)
    assert np.array_equal(read_back, backbone.encode(ITEMS).astype(dtype).astype(np.float32))

    store = FeatureStore(backbone, FeatureCache(tmp_path / "new", dtype), lru_items=0)
    fresh = store.vectors(ITEMS)
    store.close()
    assert store.stats["encoded"] == 4 and store.stats["disk_cache_written"] == 4
    restarted = FeatureStore(backbone, FeatureCache(tmp_path / "new", dtype))
    cached = restarted.vectors(ITEMS)
    assert restarted.stats["from_disk_cache"] == 4 and restarted.stats["encoded"] == 0
    assert fresh.dtype == cached.dtype == np.float32
    assert fresh.tobytes() == read_back.tobytes() == cached.tobytes()


def test_the_backbone_sees_the_batches_the_cache_plans(tmp_path):
    """Longest first, ``batch_size`` per batch, as ``get_or_encode`` encodes them."""
    old, new = FakeBackbone(), FakeBackbone()
    FeatureCache(tmp_path / "old").get_or_encode(ITEMS, old, batch_size=3, progress=False)
    store = FeatureStore(new, FeatureCache(tmp_path / "new"), batch_size=3)
    store.vectors(ITEMS)
    store.close()
    assert new.batches == old.batches


def test_vectors_waiting_for_the_disk_are_not_encoded_again(tmp_path):
    backbone = FakeBackbone()
    cache = BlockedCache(tmp_path)
    store = FeatureStore(backbone, cache, lru_items=0)
    first = store.vectors(ITEMS)
    encoded = len(backbone.batches)
    again = store.vectors(ITEMS)              # the write has not happened yet
    assert len(backbone.batches) == encoded and cache.writes == 0
    assert again.tobytes() == first.tobytes()
    cache.release.set()
    store.close()
    assert cache.writes == 1 and store.stats["disk_cache_written"] == 4


def test_the_writer_waits_for_a_full_shard(tmp_path):
    cache = BlockedCache(tmp_path, shard_size=3)
    cache.release.set()
    store = FeatureStore(FakeBackbone(), cache)
    store.vectors(ITEMS[:2])
    assert not cache.entered.is_set()         # 2 < shard_size: nothing written yet
    store.vectors(ITEMS[2:])
    assert cache.entered.wait(timeout=600)    # 4 >= shard_size: written without close (no hang)
    store.close()
    assert cache.writes == 1 and store.stats["disk_cache_written"] == 4


def test_close_writes_what_is_queued(tmp_path):
    cache = FeatureCache(tmp_path)            # shard_size 2048, flush_seconds 60
    store = FeatureStore(FakeBackbone(), cache)
    for item in ITEMS:
        store.vectors([item])
    store.close()
    assert len(list(cache.folder(FakeBackbone().fingerprint()).glob("shard-*.safetensors"))) == 1


def test_new_vectors_queued_during_a_write_go_into_one_next_shard(tmp_path):
    cache = BlockedCache(tmp_path, shard_size=1)
    store = FeatureStore(FakeBackbone(), cache, lru_items=0)
    store.vectors(ITEMS[:1])
    cache.entered.wait()                      # the first shard's write waits for release ...
    for item in ITEMS[1:]:
        store.vectors([item])                 # ... while the other three queue up
    cache.release.set()
    store.close()
    assert cache.writes == 2
    assert len(list(cache.folder(FakeBackbone().fingerprint()).glob("shard-*.safetensors"))) == 2


def test_a_failing_write_fails_no_request_and_is_logged_once(tmp_path, caplog):
    backbone = FakeBackbone()
    cache = BlockedCache(tmp_path, error=OSError(28, "No space left on device"))
    cache.release.set()
    store = FeatureStore(backbone, cache)
    with caplog.at_level(logging.WARNING, logger="micro_rm.features.cache"):
        first = store.vectors(ITEMS[:2])
        store.close()
        second = store.vectors(ITEMS[2:])
        store.close()
    expected = backbone.encode(ITEMS).astype(np.float16).astype(np.float32)
    assert np.concatenate([first, second]).tobytes() == expected.tobytes()
    assert store.stats["disk_cache_write_failures"] == 4 and store.stats["disk_cache_written"] == 0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert "disk_cache_write_failures" in warnings[0]


def test_without_a_disk_cache_vectors_are_the_backbones(tmp_path):
    backbone = FakeBackbone()
    store = FeatureStore(backbone, None)
    assert store.vectors(ITEMS).tobytes() == backbone.encode(ITEMS).tobytes()
    store.close()
    assert "disk_cache_written" not in store.stats
