"""The service under hostile input and races (issue 25): one bad request fails alone, a stalled
upload is cut off, a large request cannot hold small ones back for long, deletion is final and
retries are exactly-once across deletions, NaN never reaches a stored state or a 200, and a
state database of an unknown version or with damaged pages is one clear answer.

Every loop is bounded in count; no test measures wall-clock time.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_serve import (ADMIN, GOOD, K, PROMPT, _concurrently, _PoisonedBackbone, bearer, build_model,
                        build_scorer, make_settings, new_user, static_backbone)

from micro_rm.cli import main

FEEDBACK = {"prompt": PROMPT, "chosen": GOOD, "rejected": "lol idk, google it"}
TRIALS = 8


@pytest.fixture(scope="module")
def scorer():
    return build_scorer()


@pytest.fixture
def client(tmp_path, scorer):
    from micro_rm.serve.app import create_app
    with TestClient(create_app(make_settings(tmp_path), scorer=scorer)) as client:
        yield client


def admin_feedback(client, user: str, key: str | None = None):
    headers = {**bearer(ADMIN), **({"Idempotency-Key": key} if key else {})}
    return client.post("/feedback", json={**FEEDBACK, "user_id": user}, headers=headers)


# ----- 1. per-request isolation --------------------------------------------------------------
@pytest.mark.parametrize("label", [7, ["ana"], {"user_id": "ana"}, "a b", "x" * 300, "\ud800", "../etc"])
def test_a_bad_user_id_in_labels_is_a_422_and_stores_nothing(tmp_path, scorer, label):
    """Issue 25: label-derived user ids gave 500 (5 of 7) or were stored (2 of 7)."""
    from micro_rm.serve.app import create_app

    settings = make_settings(tmp_path, labels="user_id", anonymous_scoring=True)
    with TestClient(create_app(settings, scorer=scorer)) as client:
        body = json.dumps({"query": [PROMPT + GOOD], "prompts": [PROMPT], "labels": [label]})
        out = client.post("/get_reward", content=body.encode("utf-8", "surrogatepass"),
                          headers={"Content-Type": "application/json"})
        assert 400 <= out.status_code < 500 and "labels[0]" in out.json()["detail"], out.text
        assert client.app.state.store.list_users() == []


class _NaNBackbone(_PoisonedBackbone):
    """The static backbone, but any text holding "NAN" encodes to NaN (a fault no check sees)."""

    def encode(self, items):
        out = np.asarray(self._inner.encode(items), dtype=np.float32)
        out[[i for i, item in enumerate(items) if "NAN" in str(item)]] = np.nan
        return out


def test_a_nan_reward_or_loss_is_refused_alone_and_never_stored(tmp_path):
    from micro_rm.scoring.engine import RewardScorer
    from micro_rm.serve.app import create_app

    scorer = RewardScorer(build_model(), _NaNBackbone(static_backbone()))
    settings = make_settings(tmp_path, batch_wait_ms=100.0, disk_cache=False)
    with TestClient(create_app(settings, scorer=scorer)) as client:
        bodies = [{"prompt": f"prompt {i}", "responses": [f"answer {i}"]} for i in range(6)]
        bodies.append({"prompt": "NAN", "responses": ["x"]})
        results = _concurrently([lambda b=b: client.post("/score", json=b, headers=bearer(ADMIN)) for b in bodies])
        assert [r.status_code for r in results] == [200] * 6 + [422]
        assert "no finite reward for sample(s) [0]" in results[-1].json()["detail"]
        out = client.post("/get_reward", json={"query": ["Hi there", "NAN query"], "prompts": ["Hi", "NAN"]}, headers=bearer(ADMIN))
        assert out.status_code == 422 and "sample(s) [1]" in out.json()["detail"]
        assert admin_feedback(client, "ana").status_code == 200
        before = client.app.state.store.get("ana")
        bad = client.post("/feedback", json={**FEEDBACK, "chosen": "NAN answer", "user_id": "ana"},
                          headers=bearer(ADMIN))
        assert bad.status_code == 422 and "finite" in bad.json()["detail"]
        after = client.app.state.store.get("ana")
        assert after.num_feedback == before.num_feedback == 1
        assert np.array_equal(after.cumulative_loss, before.cumulative_loss)


# ----- 2. fair queueing and stalled uploads --------------------------------------------------
class BlockedOnFirstCall:
    """A backbone that records the texts of each call and holds its first call until ``release``."""

    dim = 2

    def __init__(self):
        self.calls: list[list[str]] = []
        self.first_call = threading.Event()
        self.release = threading.Event()

    def encode(self, items):
        self.calls.append([item[0] for item in items])
        if len(self.calls) == 1:
            self.first_call.set()
            assert self.release.wait(60)
        return np.ones((len(items), 2), dtype=np.float32)


def test_a_small_request_waits_for_one_slice_of_a_large_one_not_all_of_it():
    """The batcher cuts a large request into slices; a request that arrives while the first
    slice is encoded is encoded before the large request's last slice."""
    from micro_rm.scoring.features import FeatureStore, MicroBatcher

    backbone = BlockedOnFirstCall()

    async def scenario():
        batcher = MicroBatcher(FeatureStore(backbone, lru_items=0, batch_size=4), wait_ms=0.0, max_items=4)
        await batcher.start()
        large = asyncio.create_task(batcher.vectors([(f"large {i}", None) for i in range(12)]))
        await asyncio.get_running_loop().run_in_executor(None, backbone.first_call.wait, 60)
        small = asyncio.create_task(batcher.vectors([("small", None)]))
        await asyncio.sleep(0)           # the small request is queued while slice 1 runs
        backbone.release.set()
        await asyncio.gather(large, small)
        await batcher.stop()

    asyncio.run(scenario())
    calls = backbone.calls
    assert len(calls[0]) == 4                                    # a slice, not the whole request
    small_call = next(i for i, call in enumerate(calls) if "small" in call)
    last_large = max(i for i, call in enumerate(calls) if "large 11" in call)
    assert small_call < last_large, calls


def test_requests_queued_while_the_backbone_is_busy_share_its_next_call():
    """The default batcher does not wait: a batch is what queued while the last one ran."""
    from micro_rm.scoring.features import FeatureStore, MicroBatcher

    backbone = BlockedOnFirstCall()

    async def scenario():
        batcher = MicroBatcher(FeatureStore(backbone, lru_items=0, batch_size=8))
        await batcher.start()
        first = asyncio.create_task(batcher.vectors([("a", None)]))
        await asyncio.get_running_loop().run_in_executor(None, backbone.first_call.wait, 60)
        rest = [asyncio.create_task(batcher.vectors([(text, None)])) for text in "bcd"]
        await asyncio.sleep(0.05)        # all three are queued while "a" is encoded
        backbone.release.set()
        await asyncio.gather(first, *rest)
        await batcher.stop()

    asyncio.run(scenario())
    assert backbone.calls == [["a"], ["b", "c", "d"]]


def test_slices_bound_items_and_characters():
    from micro_rm.scoring.features import FeatureStore, MicroBatcher

    batcher = MicroBatcher(FeatureStore(static_backbone(), lru_items=0), max_items=3, max_chars=10)
    items = [("abcd", None), ("ef", "gh"), ("x" * 50, None), ("a", None), ("b", None), ("c", None), ("d", None)]
    assert batcher.slices(items) == [items[:2], [items[2]], items[3:6], [items[6]]]


def test_a_stalled_upload_gets_408_and_its_connection_closed(tmp_path, scorer):
    """A real uvicorn server on loopback: a client that sends half its body and stops."""
    import uvicorn

    from micro_rm.serve.app import create_app

    app = create_app(make_settings(tmp_path, body_timeout_s=0.5), scorer=scorer)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            threading.Event().wait(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + ADMIN.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
            answer = b""
            while chunk := conn.recv(65536):      # the server answers, then closes
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
        assert "not received within 0.5 s (--body-timeout-s)" in json.loads(body)["detail"]
    finally:
        server.should_exit = True
        thread.join(60)


# ----- 3. deletion is final; retries are exactly-once across deletions -----------------------
def test_nothing_recreates_a_deleted_user_until_post_users(client):
    """Issue 25: admin feedback and an idempotent retry after DELETE re-created the user."""
    ana = new_user(client, "ana")
    assert client.post("/feedback", json=FEEDBACK, headers={**ana, "Idempotency-Key": "k1"}).status_code == 200
    assert admin_feedback(client, "ana", key="a1").status_code == 200
    assert client.delete("/users/ana", headers=bearer(ADMIN)).json()["deleted_feedback"] == 2
    assert client.post("/feedback", json=FEEDBACK, headers={**ana, "Idempotency-Key": "k1"}).status_code == 401
    retry = admin_feedback(client, "ana", key="a1")
    assert retry.status_code == 409 and "since been deleted" in retry.json()["detail"]
    fresh = admin_feedback(client, "ana")
    assert fresh.status_code == 409 and "deletion is final" in fresh.json()["detail"]
    store = client.app.state.store
    assert store.list_users() == [] and store.feedback_count() == 0
    assert client.get("/users/ana", headers=bearer(ADMIN)).status_code == 404
    ana = new_user(client, "ana")                          # explicitly re-created: starts afresh
    assert client.post("/feedback", json=FEEDBACK, headers=ana).json()["users"][0]["num_feedback"] == 1
    again = client.post("/feedback", json=FEEDBACK, headers={**ana, "Idempotency-Key": "k1"})
    assert again.status_code == 409                        # the old key applied once, ever
    assert store.get("ana").num_feedback == 1


@pytest.mark.parametrize("trial", range(TRIALS))
def test_admin_feedback_racing_a_deletion_never_resurrects(client, trial):
    """Issue 25: resurrection in 9-16 of 20 tries. Threads send admin feedback (some with one
    shared Idempotency-Key) while another deletes; after DELETE returns, the user has no state,
    no feedback, and every later write is refused."""
    new_user(client, "ana")
    user = "ana"
    sends = [lambda i=i: admin_feedback(client, user, key="same" if i % 2 else None) for i in range(6)]
    results = _concurrently(sends + [lambda: client.delete(f"/users/{user}", headers=bearer(ADMIN))])
    assert results[-1].status_code == 200
    assert {r.status_code for r in results[:-1]} <= {200, 409}
    store = client.app.state.store
    assert user not in store.list_users() and store.feedback_count(user) == 0
    assert [admin_feedback(client, user, key=k).status_code for k in (None, "same")] == [409, 409]
    assert user not in store.list_users() and store.feedback_count(user) == 0


def test_concurrent_writers_and_a_deletion_leave_state_and_log_consistent(tmp_path):
    """Every write is atomic: threads append to two users while a third thread deletes one;
    afterwards each user's S_u and count equal the sum of its logged rows (or it has none)."""
    from micro_rm.online import UserDeleted, open_store

    store = open_store(tmp_path / "s.db", "m", 2)
    errors: list[BaseException] = []

    def writer(user: str, n: int) -> None:
        for _ in range(n):
            try:
                store.apply_feedback(user, [[0.25, 0.5]], [{"u": user}])
            except UserDeleted:
                pass
            except BaseException as exc:        # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(u, 15)) for u in ("ana", "bo") for _ in range(3)]
    threads.append(threading.Thread(target=store.delete_user, args=("bo",)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ana = store.get("ana")
    assert ana.num_feedback == store.feedback_count("ana") == 45
    assert np.allclose(ana.cumulative_loss, [45 * 0.25, 45 * 0.5])
    assert store.is_deleted("bo") and "bo" not in store.list_users() and store.feedback_count("bo") == 0
    store.close()


# ----- 4. numerical validity -----------------------------------------------------------------
def test_a_model_with_nan_weights_refuses_to_start_naming_the_file(tmp_path):
    from safetensors.torch import load_file, save_file

    from micro_rm.errors import MicroRMError
    from micro_rm.serve.app import create_app

    build_model().save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    tensors = load_file(weights)
    name = next(n for n in tensors if "heads" in n)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, weights)
    with pytest.raises(MicroRMError, match=r"model\.safetensors: tensor `heads\.weight` holds 1 NaN"):
        with TestClient(create_app(make_settings(tmp_path, model=str(tmp_path / "model")))):
            pass


def _poison_state(path, user: str, value: str = "[NaN, 0.5]") -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE users SET cumulative_loss = ? WHERE user_id = ?", (value, user))


def test_a_nan_user_state_refuses_startup_then_a_runtime_one_is_a_409(tmp_path, scorer):
    from micro_rm.errors import MicroRMError
    from micro_rm.serve.app import create_app

    settings = make_settings(tmp_path)
    with TestClient(create_app(settings, scorer=scorer)) as client:
        assert admin_feedback(client, "ana").status_code == 200
        assert admin_feedback(client, "bo").status_code == 200
        _poison_state(tmp_path / "state.db", "ana")            # goes bad while the service runs
        for out in (client.post("/score", json={"prompt": PROMPT, "responses": [GOOD], "user_id": "ana"},
                                headers=bearer(ADMIN)),
                    client.get("/users/ana", headers=bearer(ADMIN)),
                    client.post("/get_reward", json={"query": [PROMPT + GOOD], "prompts": [PROMPT], "user_id": "ana"},
                                headers=bearer(ADMIN))):
            assert out.status_code == 409 and "user 'ana'" in out.json()["detail"] \
                and "micro-rm user reset ana" in out.json()["detail"], out.text
        write = admin_feedback(client, "ana")
        assert write.status_code == 422 and "damaged state" in write.json()["detail"]
        with sqlite3.connect(tmp_path / "state.db") as conn:
            assert conn.execute("SELECT cumulative_loss, num_feedback FROM users WHERE user_id = 'ana'"
                                ).fetchone() == ("[NaN, 0.5]", 1)            # nothing stored
        bo = client.post("/score", json={"prompt": PROMPT, "responses": [GOOD], "user_id": "bo"},
                         headers=bearer(ADMIN))
        assert bo.status_code == 200 and all(np.isfinite(s["reward"]) for s in bo.json()["scores"])
    with pytest.raises(MicroRMError, match=r"state\.db: user\(s\) 'ana' have a non-finite state"):
        with TestClient(create_app(settings, scorer=scorer)):
            pass
    from micro_rm.online import open_store
    store = open_store(tmp_path / "state.db")
    store.reset("ana")                                      # the fix the message names
    store.close()
    with TestClient(create_app(settings, scorer=scorer)) as client:
        assert client.get("/healthz").status_code == 200


# ----- 5. versioned, checked state -----------------------------------------------------------
def test_an_unknown_schema_version_is_refused_with_the_supported_range(tmp_path, scorer, capsys):
    from micro_rm.errors import MicroRMError
    from micro_rm.online import open_store
    from micro_rm.serve.app import create_app

    open_store(tmp_path / "state.db", scorer.model_id, K).close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    message = r"has schema_version '999'; this micro-rm reads schema versions 1 to 2"
    with pytest.raises(MicroRMError, match=message):
        with TestClient(create_app(make_settings(tmp_path), scorer=scorer)):
            pass
    capsys.readouterr()
    assert main(["user", "show", "ana", "--state", str(tmp_path / "state.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schema_version '999'" in err


def test_a_version_1_store_is_upgraded_in_place(tmp_path):
    from micro_rm.online import open_store

    store = open_store(tmp_path / "s.db", "m", 2)
    store.apply_feedback("ana", [[0.1, 0.2]])
    store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("DROP TABLE deleted_users")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store = open_store(tmp_path / "s.db", "m", 2)
    assert store.get("ana").num_feedback == 1 and store.delete_user("ana") == 1 and store.is_deleted("ana")
    store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)


def _damage(path) -> None:
    """Overwrite every page after the first (the header stays, so the file still opens)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.seek(4096)
        fh.write(bytes((i * 7919) % 251 for i in range(size - 4096)))


def test_a_damaged_state_database_is_a_503_with_json_detail_and_one_cli_line(tmp_path, scorer, capsys):
    from micro_rm.online import open_store
    from micro_rm.serve.app import create_app

    store = open_store(tmp_path / "state.db", scorer.model_id, K)
    for i in range(100):      # enough rows for several pages
        store.apply_feedback(f"u{i}", [[0.1, 0.2]], [{"pad": "x" * 500}])
    store.close()
    with TestClient(create_app(make_settings(tmp_path), scorer=scorer), raise_server_exceptions=False) as client:
        _damage(tmp_path / "state.db")
        for out in (client.post("/score", json={"prompt": PROMPT, "responses": [GOOD], "user_id": "u3"},
                                headers=bearer(ADMIN)),
                    client.get("/users/u3", headers=bearer(ADMIN)),
                    admin_feedback(client, "u4")):
            assert out.status_code == 503, out.text
            assert "state.db cannot be used: database disk image is malformed" in out.json()["detail"]
        assert client.get("/healthz").status_code == 200
    build_model().save_pretrained(tmp_path / "model")
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": PROMPT, "responses": [GOOD]}) + "\n")
    score = ["score", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "in.jsonl"), "--out",
             str(tmp_path / "out.jsonl"), "--user", "u3"]
    for argv in (["user", "show", "u3"], ["user", "reset", "u3"], score):
        capsys.readouterr()
        assert main([*argv, "--state", str(tmp_path / "state.db")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "malformed" in err and "Traceback" not in err, err


def test_store_errors_carry_the_service_status():
    from micro_rm.online import InvalidFeedback, StateInvalid, StateUnavailable, UserDeleted
    from micro_rm.scoring.features import EncodeFailed

    assert (InvalidFeedback("x").status, StateInvalid("x").status, StateUnavailable("x").status,
            EncodeFailed("x").status) == (422, 409, 503, 503)
    assert not hasattr(UserDeleted("x"), "status")      # the feedback route answers it 409 itself
