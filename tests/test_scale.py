"""Features on disk: fp16 ``.npy`` folders that load memory-mapped, and stage-1 training that
streams them a block at a time (memory proportional to the batch, not the data set)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from micro_rm.errors import MicroRMError
from micro_rm.features.base import PairFeatures
from micro_rm.features.store import FeatureWriter, load_features, read_rows, save_features
from micro_rm.train import stage1
from micro_rm.train.config import Stage1Config
from micro_rm.train.stage1 import fit_stage1


def synthetic(n: int, d: int = 16, seed: int = 0) -> PairFeatures:
    """Pairs whose preference follows one of two directions, chosen by the route vector."""
    rng = np.random.default_rng(seed)
    route = rng.standard_normal((n, d)).astype(np.float32)
    rejected = rng.standard_normal((n, d)).astype(np.float32)
    chosen = rejected + 0.5 * np.sign(route[:, :1]) * np.eye(d, dtype=np.float32)[0]
    return PairFeatures(chosen=chosen, rejected=rejected, route=route,
                        prompts=[f"prompt {i // 3}" for i in range(n)],
                        attributes=["a" if i % 2 else None for i in range(n)],
                        fingerprint={"model": "synthetic"})


def rss_file_kib() -> int:
    """Resident file-backed pages of this process (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_save_and_load_round_trip(tmp_path):
    features = synthetic(50)
    save_features(features, tmp_path / "f")
    mapped = load_features(tmp_path / "f")
    assert all(isinstance(getattr(mapped, k), np.memmap) for k in ("chosen", "rejected", "route"))
    assert mapped.chosen.dtype == np.float16 and len(mapped) == 50
    np.testing.assert_array_equal(mapped.route, features.route.astype(np.float16))
    assert (mapped.prompts, mapped.attributes, mapped.fingerprint) == (
        features.prompts, features.attributes, features.fingerprint)
    in_ram = load_features(tmp_path / "f", mmap=False)
    assert type(in_ram.chosen) is np.ndarray
    save_features(features, tmp_path / "f", dtype="float32")          # replaces its own folder
    np.testing.assert_array_equal(load_features(tmp_path / "f").chosen, features.chosen)


def test_store_refuses_what_it_cannot_read_or_must_not_delete(tmp_path):
    with pytest.raises(MicroRMError, match="is not a features folder"):
        load_features(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(MicroRMError, match="not a micro-rm features folder"):
        save_features(synthetic(5), tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").exists()
    with FeatureWriter(tmp_path / "inf", pairs=2, reward_dim=1, route_dim=1) as writer:
        with pytest.raises(MicroRMError, match="not finite in float16"):
            writer.write(0, np.array([[1e6], [0.0]]), np.zeros((2, 1)), np.zeros((2, 1)))
    assert not list(tmp_path.glob(".inf*")) and not (tmp_path / "inf").exists()


def test_fit_on_memory_mapped_fp16_matches_fit_in_ram(tmp_path):
    features = synthetic(900)
    save_features(features, tmp_path / "f")
    mapped = load_features(tmp_path / "f")
    in_ram = load_features(tmp_path / "f", mmap=False)                   # the same fp16 values
    config = Stage1Config(heads=2, epochs=2, batch_size=64, val_fraction=0.2)
    a, history_a = fit_stage1(in_ram, config, progress=False)
    b, history_b = fit_stage1(mapped, config, progress=False)
    assert history_a["val_loss"] == history_b["val_loss"]
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_fit_reads_a_memory_map_block_by_block(tmp_path, monkeypatch):
    """The float32 copy of the whole file is never made: numpy allocations stay at a few blocks
    (tracemalloc sees every numpy buffer), and each gather reads at most one block of rows."""
    n, d = 80_000, 384                   # float32 copies of chosen, rejected, route: 352 MiB
    config = Stage1Config(heads=2, epochs=1, batch_size=512, val_fraction=0.1)
    fit_stage1(synthetic(100, d), config, progress=False)   # first-use imports are not the data
    save_features(synthetic(n, d), tmp_path / "f")
    mapped = load_features(tmp_path / "f")
    reads = []
    monkeypatch.setattr(stage1, "read_rows",
                        lambda array, rows, **kw: reads.append(len(rows)) or read_rows(array, rows, **kw))
    tracemalloc.start()
    try:
        fit_stage1(mapped, config, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(reads) <= stage1.BLOCK_ROWS and sum(reads) == 3 * n
    full_copy = 3 * n * d * 4            # converting up front (diff and route) would take 2/3 of it
    assert peak < full_copy / 3, f"peak numpy memory {peak / 2**20:.0f} MiB"


def test_read_rows_releases_the_pages_it_mapped(tmp_path):
    rows, d = 40_000, 512                                               # 40 MB of float16
    array = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float16,
                                      shape=(rows, d))
    array[:] = 1.0
    array.flush()
    del array
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    index = np.arange(0, rows, 3)
    before = rss_file_kib()
    out = read_rows(mapped, index)
    released = rss_file_kib() - before
    np.testing.assert_array_equal(out, np.ones((len(index), d), np.float16))
    np.asarray(mapped[index])                                         # plain fancy indexing keeps them
    kept = rss_file_kib() - before
    assert kept > 20_000 and released < 8_000, (kept, released)
