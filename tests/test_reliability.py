"""Reliability (issue 12): revocation is immediate, deletion is final, retries are safe, a model
folder survives a kill, and the CLI and the service apply one validation rule.

The service runs in-process (FastAPI's test client, which several threads may share) on the
word-vector backbone; every loop is bounded in count.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_bad_input import ADMIN, GOOD, word_model
from test_train_cli import WordBackbone

from micro_rm.cli import main

CLIENTS = 4


@pytest.fixture
def client(tmp_path):
    from micro_rm.serve.app import create_app
    from micro_rm.scoring.engine import RewardScorer
    from micro_rm.serve.settings import ServeSettings

    settings = ServeSettings(model="unused", state=f"sqlite:///{tmp_path / 'state.db'}", admin_token=ADMIN,
                             cache_dir=str(tmp_path / "features"))
    with TestClient(create_app(settings, scorer=RewardScorer(word_model(), WordBackbone()))) as client:
        yield client


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def new_user(client, user: str) -> str:
    response = client.post("/users", json={"user_id": user}, headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    return response.json()["token"]


def storm(send, stop: threading.Event, per_client: int) -> list[tuple[float, int]]:
    """``CLIENTS`` threads call ``send()`` until ``stop`` is set, then ``per_client`` more times
    each (bounded either way): every call's (send time, status)."""
    log: list[tuple[float, int]] = []
    lock = threading.Lock()

    def worker() -> None:
        after_stop = 0
        for _ in range(20 * per_client):
            if stop.is_set():
                after_stop += 1
                if after_stop > per_client:
                    return
            sent = time.monotonic()
            status = send()
            with lock:
                log.append((sent, status))

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    return log, threads


def run_storm(send, action, per_client: int = 15) -> tuple[list[tuple[float, int]], float]:
    """Start the storm, let some calls through, run ``action`` (the revocation), and return the
    calls with the moment ``action`` returned."""
    stop = threading.Event()
    log, threads = storm(send, stop, per_client)
    for _ in range(1000):                      # wait (bounded) until the clients are going
        if len(log) >= CLIENTS * 2:
            break
        time.sleep(0.005)
    action()
    returned = time.monotonic()
    stop.set()
    for t in threads:
        t.join()
    return log, returned


@pytest.mark.parametrize("how", ["rotate", "delete"])
def test_a_revoked_token_is_refused_by_every_request_after_the_call_returns(client, how):
    """Issue 12, item 1: the token cache was cleared before the commit, so concurrent requests
    re-cached the old token and it kept working for up to 5 s."""
    token = new_user(client, "ana")
    body = {"prompt": GOOD["prompt"], "responses": [GOOD["chosen"]], "user_id": "ana"}
    send = lambda: client.post("/score", json=body, headers=bearer(token)).status_code  # noqa: E731
    revoke = {"rotate": lambda: client.post("/users/ana/token", headers=bearer(ADMIN)),
              "delete": lambda: client.delete("/users/ana", headers=bearer(ADMIN))}[how]
    log, returned = run_storm(send, lambda: assert_ok(revoke()))
    late = [status for sent, status in log if sent > returned and status == 200]
    assert any(status == 200 for _, status in log) and any(sent > returned for sent, _ in log)
    assert late == [], f"{len(late)} requests accepted after the {how} returned"


def assert_ok(response) -> None:
    assert response.status_code in (200, 201), response.text


def test_a_deleted_user_stays_deleted_during_a_feedback_storm(client):
    """Issue 12, item 2: feedback authorised before DELETE committed after it and brought the
    user's state back (7 of 8 trials)."""
    token = new_user(client, "ana")
    send = lambda: client.post("/feedback", json=GOOD, headers=bearer(token)).status_code  # noqa: E731
    log, _ = run_storm(send, lambda: assert_ok(client.delete("/users/ana", headers=bearer(ADMIN))))
    assert {status for _, status in log} <= {200, 401, 409}
    assert client.get("/users/ana", headers=bearer(ADMIN)).status_code == 404
    store = client.app.state.store
    assert "ana" not in store.list_users() and store.feedback_count("ana") == 0


def test_feedback_authorised_before_a_deletion_is_refused_at_commit(tmp_path):
    """The epoch check itself, without timing luck: a request holding the epoch from before the
    deletion is refused by the store, and applies nothing."""
    from micro_rm.online import FeedbackRequest, UserDeleted, open_store

    store = open_store(tmp_path / "s.db", "m", 2)
    store.apply_feedback("ana", [[0.1, 0.2]])
    epoch = store.epoch("ana")
    assert store.delete_user("ana") == 1
    with pytest.raises(UserDeleted, match="'ana' was deleted"):
        store.apply_requests([FeedbackRequest([("ana", [[0.1, 0.2]], None)], {"ana": epoch})])
    assert store.list_users() == [] and store.feedback_count() == 0
    with pytest.raises(UserDeleted, match="deletion is final"):      # a later write, even with today's epoch
        store.apply_requests([FeedbackRequest([("ana", [[0.1, 0.2]], None)], {"ana": store.epoch("ana")})])
    store.restore_user("ana")                    # what POST /users does
    fresh = store.apply_requests([FeedbackRequest([("ana", [[0.1, 0.2]], None)], {"ana": store.epoch("ana")})])
    assert fresh[0][0].num_feedback == 1        # an explicitly re-created user starts afresh


def test_group_commit_drops_only_the_stale_request(tmp_path):
    from micro_rm.online import FeedbackRequest, UserDeleted, open_store
    from micro_rm.serve.writer import apply_requests

    store = open_store(tmp_path / "s.db", "m", 2)
    stale = store.epoch("bo") - 1
    results = apply_requests(store, [FeedbackRequest([("ana", [[0.5, 0.5]], None)]),
                                     FeedbackRequest([("bo", [[0.5, 0.5]], None)], {"bo": stale}),
                                     FeedbackRequest([("cy", [[0.5, 0.5]], None)])])
    assert isinstance(results[1], UserDeleted)
    assert [r[0].user_id for r in (results[0], results[2])] == ["ana", "cy"]
    assert store.list_users() == ["ana", "cy"]


# ----- idempotent retries ---------------------------------------------------------------------
def test_a_repeated_idempotency_key_applies_nothing_and_returns_the_first_answer(client):
    token = new_user(client, "ana")
    headers = {**bearer(token), "Idempotency-Key": "retry-1"}
    first = client.post("/feedback", json=GOOD, headers=headers)
    again = client.post("/feedback", json=dict(reversed(list(GOOD.items()))), headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert client.get("/users/ana", headers=bearer(token)).json()["num_feedback"] == 1
    other = client.post("/feedback", json={**GOOD, "chosen": "another answer"}, headers=headers)
    assert other.status_code == 422 and "already used with a different body" in other.json()["detail"]
    assert client.post("/feedback", json=GOOD, headers={**bearer(token), "Idempotency-Key": "retry-2"}) \
        .json()["users"][0]["num_feedback"] == 2
    admin = client.post("/feedback", json={**GOOD, "user_id": "ana"},          # keys are per token
                        headers={**bearer(ADMIN), "Idempotency-Key": "retry-1"})
    assert admin.json()["users"][0]["num_feedback"] == 3


def test_concurrent_retries_with_one_key_apply_once(client):
    token = new_user(client, "ana")
    headers = {**bearer(token), "Idempotency-Key": "dropped-connection"}
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(client.post("/feedback", json=GOOD, headers=headers)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200] * 8
    assert len({json.dumps(a.json(), sort_keys=True) for a in answers}) == 1
    assert client.get("/users/ana", headers=bearer(token)).json()["num_feedback"] == 1
    assert client.app.state.store.feedback_count("ana") == 1


def test_deleting_a_user_forgets_the_outcome_of_its_idempotency_keys(client):
    token = new_user(client, "ana")
    client.post("/feedback", json=GOOD, headers={**bearer(token), "Idempotency-Key": "k"})
    client.delete("/users/ana", headers=bearer(ADMIN))
    found = client.app.state.store.idempotent_result("user:ana", "k")
    assert found is not None and found.states is None      # still used; what it wrote is gone


# ----- one validation rule for the CLI and the service -----------------------------------------
SAME_RULE = [
    {**GOOD, "chosen": "   "},
    {**GOOD, "rejected": GOOD["chosen"]},
    {**GOOD, "context": "  "},
    {**GOOD, "prompt": [{"role": "user\ud800", "content": "hi"}]},
    {**GOOD, "chosen": [{"role": "assistant", "content": "\udfff"}]},
    {**GOOD, "prompt": [{"role": "user", "content": " "}]},
    {"chosen": [{"role": "user", "content": "hi"}], "rejected": [{"role": "assistant", "content": "yo"}]},
]


@pytest.mark.parametrize("record", SAME_RULE, ids=range(len(SAME_RULE)))
def test_cli_and_service_refuse_a_record_with_the_same_message(record, client, tmp_path, capsys):
    """Issue 12: chosen == rejected was accepted by the service and refused by the CLI; a lone
    surrogate in a role passed the service's check."""
    line = json.dumps(record)          # json escapes a lone surrogate as \\udXXX
    (tmp_path / "p.jsonl").write_text(line + "\n")
    assert main(["data", "build", "jsonl", "--source", str(tmp_path / "p.jsonl"), "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    cli = re.sub(r"^error: .*p\.jsonl line 1: ", "", capsys.readouterr().err.strip())
    token = new_user(client, "ana")
    response = client.post("/feedback", content=line, headers={**bearer(token), "Content-Type": "application/json"})
    assert response.status_code == 422
    service = re.sub(r"^feedback: ", "", response.json()["detail"])
    assert cli.replace(" or pass --skip-invalid", "") == service


# ----- save_pretrained -------------------------------------------------------------------------
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_save_cleans_the_temp_folders_of_dead_saves(tmp_path):
    from micro_rm.model import MixtureRewardModel

    model = word_model()
    model.save_pretrained(tmp_path / "m")
    pid = dead_pid()
    for leftover in (f".m.{pid}.abc.tmp", f".m.{pid}.old"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / f".m.{os.getpid()}.live.tmp").mkdir()          # a save still running: kept
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".m.{os.getpid()}.live.tmp", "m"]
    MixtureRewardModel.from_pretrained(tmp_path / "m")


def test_a_save_without_atomic_exchange_is_repaired_after_a_kill_between_its_renames(tmp_path, monkeypatch):
    """The portable path moves the old model aside first; a kill right then left no model."""
    import micro_rm.model.pretrained as pretrained
    from micro_rm.model import MixtureRewardModel

    model = word_model()
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(pretrained, "_exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def killed_after_first_rename(src, dst):
        calls.append(dst)
        real_replace(src, dst)
        if len(calls) == 1:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(pretrained.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "m")
    monkeypatch.setattr(pretrained.os, "replace", real_replace)
    monkeypatch.setattr(pretrained, "_alive", lambda pid: False)   # as after the process died
    assert not (tmp_path / "m").exists()
    MixtureRewardModel.from_pretrained(tmp_path / "m")             # restores the moved-aside model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


SAVE_LOOP = """
import sys
sys.path.insert(0, {tests!r})
from test_bad_input import word_model
model = word_model()
for i in range(400):
    model.save_pretrained({path!r})
    print(i, flush=True)
"""


def test_a_kill_during_save_pretrained_leaves_a_loadable_model(tmp_path):
    """Issue 12, item 7: kill -9 mid-save left orphaned temp folders, and could leave no model."""
    from micro_rm.model import MixtureRewardModel

    path = tmp_path / "m"
    code = SAVE_LOOP.format(tests=str(Path(__file__).parent), path=str(path))
    for delay in (0.05, 0.2, 0.45):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        child.stdout.readline()                    # one save is done
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        MixtureRewardModel.from_pretrained(path)   # old or new, never nothing
    word_model().save_pretrained(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_the_guarantees_hold_on_postgresql(tmp_path, postgres_url):
    """The same SQL on PostgreSQL: epochs (with row locks), idempotency keys, final deletion."""
    from micro_rm.online import FeedbackRequest, UserDeleted, open_store
    from micro_rm.serve.app import create_app
    from micro_rm.scoring.engine import RewardScorer
    from micro_rm.serve.settings import ServeSettings

    settings = ServeSettings(model="unused", state=postgres_url, admin_token=ADMIN, cache_dir=str(tmp_path / "f"))
    with TestClient(create_app(settings, scorer=RewardScorer(word_model(), WordBackbone()))) as client:
        token = new_user(client, "ana_1")
        headers = {**bearer(token), "Idempotency-Key": "k"}
        first, again = (client.post("/feedback", json=GOOD, headers=headers) for _ in range(2))
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        send = lambda: client.post("/feedback", json=GOOD, headers=bearer(token)).status_code  # noqa: E731
        log, _ = run_storm(send, lambda: assert_ok(client.delete("/users/ana_1", headers=bearer(ADMIN))), 5)
        assert {status for _, status in log} <= {200, 401, 409}
        assert client.get("/users/ana_1", headers=bearer(ADMIN)).status_code == 404
        assert client.post("/users/nobody/token", headers=bearer(ADMIN)).status_code == 404
    store = open_store(postgres_url)
    assert store.idempotent_result("user:ana_1", "k").states is None and store.feedback_count("ana_1") == 0
    epoch = store.epoch("bo")
    store.apply_feedback("bo", [[0.1, 0.2]])
    store.delete_user("bo")
    with pytest.raises(UserDeleted):
        store.apply_requests([FeedbackRequest([("bo", [[0.1, 0.2]], None)], {"bo": epoch})])
    store.close()
