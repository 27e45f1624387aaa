"""Shared test settings: never touch the network, keep caches inside the test's tmp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$MICRO_RM_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("MICRO_RM_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The offline real datasets; the test is skipped when they are absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set MICRO_RM_DATA)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test writes features into its own cache unless it asks otherwise."""
    monkeypatch.setenv("MICRO_RM_CACHE", str(tmp_path_factory.mktemp("cache")))
