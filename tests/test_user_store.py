"""The per-user state store: atomic feedback batches under concurrent writers, and its errors."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from micro_rm.errors import MicroRMError
from micro_rm.online import UserState, UserStore, open_store

K = 3
MODEL = "fp-test"
TESTS = Path(__file__).resolve().parent


def _losses(worker: int, step: int) -> np.ndarray:
    """The known losses [2, K] that ``worker`` sends at ``step``."""
    return np.random.default_rng([worker, step]).uniform(size=(2, K))


def _user(worker: int, step: int) -> str:
    return f"user{(worker + step) % 2}"  # every worker writes both rows: maximal contention


def _run_worker(db: str, worker: int, steps: int, go: str) -> None:
    """Child process: wait for the start signal, then send ``steps`` feedback batches."""
    store = open_store(db, MODEL, K)
    Path(f"{go}.ready{worker}").touch()
    while not Path(go).exists():
        time.sleep(0.001)
    for step in range(steps):
        store.apply_feedback(_user(worker, step), _losses(worker, step), [{"worker": worker, "step": step}] * 2)


def _python(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r}); {code}",
                             *map(str, args)])


def _sequential(tmp_path: Path, workers: int, steps: int) -> UserStore:
    store = UserStore(tmp_path / "sequential.db", MODEL, K)
    for worker in range(workers):
        for step in range(steps):
            store.apply_feedback(_user(worker, step), _losses(worker, step))
    return store


def _assert_same_states(store: UserStore, reference: UserStore) -> None:
    assert store.list_users() == reference.list_users()
    for user in reference.list_users():
        got, want = store.get(user), reference.get(user)
        assert got.num_feedback == want.num_feedback
        np.testing.assert_allclose(got.cumulative_loss, want.cumulative_loss, rtol=0, atol=1e-9)


def _assert_consistent(db: Path) -> None:
    """Readable, and every user's S_u and count equal what its feedback rows add up to."""
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    users = conn.execute("SELECT user_id, cumulative_loss, num_feedback FROM users").fetchall()
    total = 0
    for user, loss_json, count in users:
        rows = conn.execute("SELECT losses FROM feedback WHERE user_id = ?", (user,)).fetchall()
        assert len(rows) == count
        summed = np.sum([json.loads(r[0]) for r in rows], axis=0) if rows else np.zeros(K)
        np.testing.assert_allclose(json.loads(loss_json), summed, rtol=0, atol=1e-9)
        total += count
    assert conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == total
    conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request, tmp_path: Path) -> str:
    """A fresh store location for each engine (PostgreSQL: an empty database, see conftest)."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return request.getfixturevalue("postgres_url")


def test_feedback_round_trip_is_exact(db):
    store = open_store(f"sqlite:///{db}", MODEL, K)
    losses = np.array([[0.1, 0.2, 0.3], [1 / 3, 2 / 7, 1e-17]])
    state = store.apply_feedback("ana", losses, [{"prompt": "hi", "chosen": "a", "rejected": "b"}, {}])
    assert state.num_feedback == 2 and state.model_id == MODEL
    np.testing.assert_array_equal(store.get("ana").cumulative_loss, losses.sum(axis=0))
    assert store.feedback_count() == store.feedback_count("ana") == 2
    payload = sqlite3.connect(db).execute("SELECT payload FROM feedback ORDER BY id").fetchone()[0]
    assert json.loads(payload) == {"prompt": "hi", "chosen": "a", "rejected": "b"}


def test_wal_mode_is_on(db):
    open_store(db, MODEL, K).apply_feedback("ana", np.zeros((1, K)))
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bad_batch_writes_nothing(db):
    store = open_store(db, MODEL, K)
    store.apply_feedback("ana", np.ones((1, K)))
    with pytest.raises(MicroRMError, match=r"must be a finite \[N, 3\] array"):
        store.apply_feedback("ana", np.ones((2, K + 1)))
    with pytest.raises(MicroRMError, match="2 loss rows but 1 payloads"):
        store.apply_feedback("ana", np.ones((2, K)), [{}])
    assert store.get("ana").num_feedback == store.feedback_count() == 1


def test_processes_lose_no_update(tmp_path, state):
    workers, steps, go = 4, 25, str(tmp_path / "go")
    store = open_store(state, MODEL, K)  # create before the race
    procs = [_python("from test_user_store import _run_worker as w; w(*sys.argv[1:2], *map(int, sys.argv[2:4]), "
                     "sys.argv[4])", state, worker, steps, go) for worker in range(workers)]
    deadline = time.monotonic() + 30
    while not all(Path(f"{go}.ready{w}").exists() for w in range(workers)) and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(go).touch()
    assert [p.wait(timeout=60) for p in procs] == [0] * workers
    assert store.feedback_count() == workers * steps * 2
    _assert_same_states(store, _sequential(tmp_path, workers, steps))


def test_threads_sharing_one_store_lose_no_update(tmp_path, state):
    workers, steps = 8, 25
    store = open_store(state, MODEL, K)
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            barrier.wait()
            for step in range(steps):
                store.apply_feedback(_user(worker, step), _losses(worker, step))
        except BaseException as err:  # surfaced below: a thread's exception would vanish
            errors.append(err)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.feedback_count() == workers * steps * 2
    _assert_same_states(store, _sequential(tmp_path, workers, steps))
    store.close()


HANG_INSIDE_TRANSACTION = """
import time
from pathlib import Path
import numpy as np
from micro_rm.online import open_store
from micro_rm.online.sql import StateStore
write = StateStore._write_state
def write_then_hang(self, cur, state):
    write(self, cur, state)  # the new S_u and the feedback rows are written, not committed
    Path(sys.argv[2]).touch()
    time.sleep(60)
StateStore._write_state = write_then_hang
open_store(sys.argv[1], "fp-test", 3).apply_feedback("ana", np.ones((5, 3)))
"""


def test_killed_writer_leaves_previous_state(tmp_path, state):
    store = open_store(state, MODEL, K)
    before = store.apply_feedback("ana", np.full((2, K), 0.25))
    flag = tmp_path / "inside"
    child = _python(HANG_INSIDE_TRANSACTION, state, flag)
    deadline = time.monotonic() + 30
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flag.exists(), "the child never reached its transaction"
    during = store.get("ana")  # readers are not blocked by the open write (WAL on SQLite)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL

    reopened = open_store(state, MODEL, K)
    for seen in (during, reopened.get("ana")):
        assert seen.num_feedback == before.num_feedback == 2
        np.testing.assert_array_equal(seen.cumulative_loss, before.cumulative_loss)
    assert reopened.feedback_count() == 2
    assert reopened.apply_feedback("ana", np.zeros((1, K))).num_feedback == 3  # the lock was released
    if not state.startswith("postgresql"):
        _assert_consistent(Path(state))


BURST = """
import numpy as np
from micro_rm.online import open_store
store = open_store(sys.argv[1], "fp-test", 3)
rng = np.random.default_rng(int(sys.argv[2]))
while True:
    store.apply_feedback(f"user{rng.integers(3)}", rng.uniform(size=(int(rng.integers(1, 4)), 3)))
"""


def test_writers_killed_during_a_burst_leave_a_consistent_store(db):
    store = open_store(db, MODEL, K)
    for round_ in range(3):
        child = _python(BURST, db, round_)
        start = store.feedback_count()
        deadline = time.monotonic() + 30
        while store.feedback_count() < start + 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert store.feedback_count() >= 60
    _assert_consistent(db)


def test_store_for_another_model_is_refused(state):
    open_store(state, MODEL, K).apply_feedback("ana", np.zeros((1, K)))
    written_for = rf"{re.escape(state)} was written for model fp-test \(K=3\), not fp-other"
    with pytest.raises(MicroRMError, match=written_for):
        open_store(state, "fp-other", K)
    with pytest.raises(MicroRMError, match=r"\(K=3\), not fp-test \(K=4\)"):
        open_store(state, MODEL, 4)
    assert open_store(state).num_heads == K  # without a model (`user show`) the store's own is used


def test_unknown_user_on_get_and_reset(state):
    store = open_store(state, MODEL, K)
    store.apply_feedback("ana", np.zeros((1, K)))
    with pytest.raises(MicroRMError, match=rf"unknown user 'bob' in {re.escape(state)}; known users: ana"):
        store.get("bob")
    with pytest.raises(MicroRMError, match="unknown user 'bob'"):
        store.reset("bob")
    fresh = store.get("bob", missing_ok=True)
    assert fresh.num_feedback == 0 and fresh.cumulative_loss.tolist() == [0.0] * K


def test_reset_forgets_state_and_feedback(state):
    store = open_store(state, MODEL, K)
    store.apply_feedback("ana", np.ones((2, K)))
    store.apply_feedback("bob", np.ones((1, K)))
    assert isinstance(store.reset("ana"), UserState)
    assert store.list_users() == ["bob"]
    assert store.feedback_count() == 1 and store.feedback_count("ana") == 0


def test_opening_a_missing_or_foreign_state_fails_clearly(tmp_path):
    with pytest.raises(MicroRMError, match="does not exist; `micro-rm feedback --model DIR"):
        open_store(tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(MicroRMError, match="is not a readable SQLite database"):
        open_store(junk, MODEL, K)
    with pytest.raises(MicroRMError, match="unsupported state URL 'mysql://h/db'"):
        open_store("mysql://h/db", MODEL, K)


def test_postgresql_without_driver_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails
    with pytest.raises(MicroRMError, match=r"pip install 'psycopg\[binary\]'"):
        open_store("postgresql+psycopg://u:secret@localhost/db", MODEL, K)
