"""Revocation and deletion under concurrent clients, over HTTP on loopback; prints a markdown table.

Two scenarios against ``micro-rm serve`` (a subprocess on 127.0.0.1, the ``static`` backbone),
each repeated ``--trials`` times with a fresh user, ``--clients`` threads each holding a
keep-alive connection:

- **revocation**: the clients score as the user with its token while the admin rotates the token
  (even trials) or deletes the user (odd trials). A *late acceptance* is a 200 to a request sent
  after the revoking call returned.
- **deletion during a feedback storm**: the clients post feedback with the user's token while the
  admin deletes the user. A *resurrection* is a user who has state again once every client is
  done (``GET /users/{id}`` with the admin token is not a 404). Feedback authorised before the
  deletion but committed after it is refused with a 409 (counted in the last column).

Each client stops a bounded number of requests after the revoking call returned. Issue 12 found
late acceptances in 8 of 23 trials and resurrections in 7 of 8 before the fix.

Usage::

    python benchmarks/reliability.py            # print the table
    python benchmarks/reliability.py --write    # and put it into BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from _common import machine, markdown_table, publish
from serve import ADMIN, Server, build_model

SECTION = "## Reliability (`benchmarks/reliability.py`)"
PROMPT, GOOD, BAD = "How should I explain entropy?", "Count the microstates.", "lol idk"


COUNTS = {"--trials": (20, "Repetitions of each scenario."),
          "--clients": (4, "Concurrent clients."),
          "--after": (20, "Requests each client sends after the revoking call returned.")}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, (default, text) in COUNTS.items():
        parser.add_argument(flag, type=int, default=default, help=text)
    parser.add_argument("--write", action="store_true", help="Put the table into BENCHMARKS.md.")
    return parser


def trial(url: str, token: str, send: Callable, revoke: Callable, clients: int, after: int) -> dict:
    """Run ``send(client)`` from ``clients`` threads, call ``revoke()`` once they are going, and
    return every request's (send time, status) with the moment ``revoke`` returned."""
    import httpx

    log: list[tuple[float, int]] = []
    lock = threading.Lock()
    returned = [float("inf")]
    started = threading.Event()

    def worker() -> None:
        sent_after = 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            for _ in range(2000):                       # bounded even if revoke never returns
                sent = time.monotonic()
                if sent > returned[0]:
                    sent_after += 1
                    if sent_after > after:
                        return
                status = send(client)
                with lock:
                    log.append((sent, status))
                    if len(log) >= 4 * clients:
                        started.set()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    started.wait(timeout=60)
    revoke()
    returned[0] = time.monotonic()
    for t in threads:
        t.join()
    return {"requests": len(log), "after": sum(s > returned[0] for s, _ in log),
            "late": sum(s > returned[0] and code == 200 for s, code in log),
            "refused_in_flight": sum(code == 409 for _, code in log)}


def run(args: argparse.Namespace, url: str) -> list[list[str]]:
    import httpx

    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    totals = {name: {"requests": 0, "after": 0, "late": 0, "bad": 0, "resurrected": 0, "refused_in_flight": 0}
              for name in ("revocation", "deletion during a feedback storm")}
    for i in range(args.trials):
        for scenario in totals:
            user = f"{'r' if scenario == 'revocation' else 'd'}{i}"
            token = admin.post("/users", json={"user_id": user}).json()["token"]
            if scenario == "revocation":
                body = {"prompt": PROMPT, "responses": [GOOD, BAD], "user_id": user}
                send = lambda c, b=body: c.post("/score", json=b).status_code  # noqa: E731
                revoke = (lambda u=user: admin.post(f"/users/{u}/token")) if i % 2 == 0 else \
                    (lambda u=user: admin.delete(f"/users/{u}"))
            else:
                body = {"prompt": PROMPT, "chosen": GOOD, "rejected": BAD}
                send = lambda c, b=body: c.post("/feedback", json=b).status_code  # noqa: E731
                revoke = lambda u=user: admin.delete(f"/users/{u}")  # noqa: E731
            out = trial(url, token, send, revoke, args.clients, args.after)
            row = totals[scenario]
            for key in ("requests", "after", "late", "refused_in_flight"):
                row[key] += out[key]
            row["bad"] += out["late"] > 0
            if scenario != "revocation":
                row["resurrected"] += admin.get(f"/users/{user}").status_code != 404
        print(f"trial {i + 1}/{args.trials} done", file=sys.stderr, flush=True)
    admin.close()
    return [[name, str(args.trials), f"{t['requests']:,}", f"{t['after']:,}", str(t["late"]), str(t["bad"]),
             str(t["resurrected"]) if name != "revocation" else "n/a", str(t["refused_in_flight"])]
            for name, t in totals.items()]


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_model("static", work / "model")
        server = Server(work / "model", work)
        try:
            rows = run(args, server.url)
        finally:
            server.stop()
    table = "\n".join([
        SECTION, "",
        f"{machine()}; `micro-rm serve` on loopback (static backbone, SQLite WAL), {args.clients} clients "
        f"with keep-alive connections, each sending {args.after} more requests after the revoking call "
        "returned. Revocation trials alternate a token rotation and a user deletion.", "",
        *markdown_table(["scenario", "trials", "requests", "sent after the call returned",
                         "accepted late", "trials with a late acceptance", "resurrections",
                         "in flight, refused at commit (409)"], rows, align="lrrrrrrr"), ""])
    publish(SECTION, table, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
