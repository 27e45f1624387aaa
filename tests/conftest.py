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


def _postgres_binaries() -> Path | None:
    """The folder holding initdb / pg_ctl, when PostgreSQL is installed."""
    import glob
    import shutil

    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).parent if found else None


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the state-store tests, started here when PostgreSQL and
    psycopg are installed (``$MICRO_RM_TEST_POSTGRES_URL`` names an existing one instead)."""
    import shutil
    import socket
    import subprocess
    import tempfile

    url = os.environ.get("MICRO_RM_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' to test the PostgreSQL store")
    bindir = _postgres_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb); set MICRO_RM_TEST_POSTGRES_URL to use a server")
    data = Path(tempfile.mkdtemp(prefix="micro-rm-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as `postgres`
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = lambda *args: subprocess.run([*as_user, *map(str, args)], check=True, capture_output=True, timeout=120)
    try:
        run(bindir / "initdb", "-D", data / "db", "-A", "trust", "-U", "postgres", "--no-sync")
        run(bindir / "pg_ctl", "-D", data / "db", "-w", "-l", data / "log",
            "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL: {exc}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request):
    """An empty database on the test server, one per test."""
    import re

    import psycopg

    if os.environ.get("MICRO_RM_TEST_POSTGRES_URL"):
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS meta, users, feedback, api_tokens")
        return postgres_server
    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:40] + f"_{os.getpid()}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"
