"""Benchmark the reward service over HTTP on loopback; prints a markdown table.

The server (``micro-rm serve``) runs in a subprocess on 127.0.0.1; a closed-loop load generator
(``--clients`` threads, each with a keep-alive ``http.client`` connection, each sending its next
request as soon as the last is answered) runs for ``--seconds`` or ``--requests`` requests per scenario,
whichever comes first. Scenarios:

- ``/score`` cached: 2 responses per request from a fixed, pre-warmed set of 32 bodies (every
  text is in the in-memory LRU), with 1 client (latency) and with ``--clients`` (throughput);
- ``/score`` cold: every request brings 3 texts never seen (2 responses + the route), so each
  runs the backbone (micro-batched across concurrent requests) and queues its vectors for the
  disk cache (written by a background thread);
- ``/feedback``: one labelled pair per request on cached texts for 8 users, each a durable
  (fsynced) SQLite update; and 8 pairs per request;
- ``/get_reward`` against the bare encoder (issue 25, item 8): ``--clients`` clients send
  OpenRLHF requests of ``--queries`` never-seen queries each; the bare encoder is
  ``backbone.encode`` of exactly the items the service encodes for those queries (each query's
  reward item and route items, longest first in batches of 32, as the feature cache plans
  them), in this process while the server idles, just before the service gets the same texts.
  The two alternate ``--repeats`` times; the ratio of queries/s is reported per repeat and as
  the median. Everything the service does besides the encoder's work (HTTP, JSON, parsing and
  checks, batching waits, the feature cache, the mixture) is in the gap. A repeat holds at
  least ``--ratio-requests`` requests per client and ``--ratio-seconds`` of bare-encoder work:
  the closed loop's start and its last, lone requests (about one request's latency, ~1 s with
  the default backbone) are not steady-state throughput, and a short repeat mostly measures them.

for the ``static`` and ``default`` backbones. Models are untrained K = 4 MiCRo models (speed does
not depend on the weights).

Usage::

    python benchmarks/serve.py                 # print the table
    python benchmarks/serve.py --write         # and put it into BENCHMARKS.md
    python benchmarks/serve.py --only ratio --backbones default   # /get_reward vs the bare encoder
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _common import machine, markdown_table, write_section

SECTION = "## Reward service (`benchmarks/serve.py`)"
ADMIN = "benchmark-admin-token-0123456789"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="static,default", help="Comma-separated backbones.")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent closed-loop clients.")
    parser.add_argument("--seconds", type=float, default=8.0, help="Longest run of one scenario.")
    parser.add_argument("--requests", type=int, default=3000, help="Most requests of one scenario.")
    parser.add_argument("--cold-requests", type=int, default=400, help="Most requests of a cold scenario "
                        "(the default backbone encodes ~20-100 texts/s on 2 cores).")
    parser.add_argument("--queries", type=int, default=8, help="Queries per /get_reward request (ratio).")
    parser.add_argument("--ratio-requests", type=int, default=4, help="Fewest /get_reward requests per client "
                        "and repeat (ratio).")
    parser.add_argument("--ratio-seconds", type=float, default=10.0, help="Shortest bare-encoder time per repeat "
                        "(ratio), so that the closed loop's start and end weigh little.")
    parser.add_argument("--repeats", type=int, default=3, help="Alternations of bare encoder and service (ratio).")
    parser.add_argument("--only", choices=("all", "ratio", "table"), default="all",
                        help="Run only the /get_reward ratio, or only the scenario table.")
    parser.add_argument("--write", action="store_true", help="Put the table into BENCHMARKS.md.")
    return parser


def build_model(backbone_name: str, folder: Path) -> None:
    import torch

    from micro_rm.features.backbones import load_backbone
    from micro_rm.model import MixtureConfig, MixtureRewardModel

    backbone = load_backbone(backbone_name)
    torch.manual_seed(0)
    MixtureRewardModel(MixtureConfig(num_heads=4, reward_dim=backbone.dim, route_dim=backbone.dim,
                                     backbone=backbone.fingerprint())).save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``micro-rm serve`` in a subprocess, on loopback, until ``stop``."""

    def __init__(self, model: Path, work: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MICRO_RM_ADMIN_TOKEN": ADMIN, "MICRO_RM_CACHE": str(work / "features")}
        self.log = open(work / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-c", "from micro_rm.cli import run; run()", "serve",
                                      "--model", str(model), "--state", f"sqlite:///{work / 'state.db'}",
                                      "--port", str(self.port), "--log-level", "warning"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        import httpx
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the server did not start; see {work / 'server.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


class NoDelayConnection(http.client.HTTPConnection):
    """http.client sends a request's headers and body in two writes; without TCP_NODELAY the
    body waits for the server's delayed ACK of the headers (~40 ms on Linux), as httpx avoids."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def load(url: str, path: str, make_body, token: str, clients: int, seconds: float, requests: int) -> dict:
    """Closed loop: ``clients`` threads send ``make_body(i)`` until ``requests`` or ``seconds``.

    The load generator shares the server's 2 cores, so it is kept as light as we can make it (a
    real RLHF rollout worker calls from its own machine): the bodies are JSON-encoded before the
    clock starts and each client is a keep-alive ``http.client`` connection. httpx clients took
    0.14 ms of CPU per ``/get_reward`` query here, 18% of what the static backbone's encoder takes;
    these take 0.08 ms."""
    import json
    from urllib.parse import urlsplit

    bodies = [json.dumps(make_body(i)).encode() for i in range(requests)]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    address = urlsplit(url)
    latencies: list[float] = []
    errors = [0]
    counter = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        connection = NoDelayConnection(address.hostname, address.port, timeout=60)
        try:
            while time.perf_counter() < stop_at:
                with lock:
                    if counter[0] >= requests:
                        return
                    i = counter[0]
                    counter[0] += 1
                start = time.perf_counter()
                connection.request("POST", path, body=bodies[i], headers=headers)
                response = connection.getresponse()
                response.read()
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors[0] += response.status != 200
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "errors": errors[0], "rps": len(ms) / wall,
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def fresh_queries(tag: str, n: int) -> tuple[list[str], list[str]]:
    """``n`` OpenRLHF (query, prompt) texts never seen before (about 40 + 50 words each)."""
    words = "the starter needs flour water warmth and time so feed it twice a day and watch the bubbles".split()
    prompts, queries = [], []
    for i in range(n):
        prompt = f"Question {tag}-{i}: " + " ".join(words[(i + j) % len(words)] for j in range(40)) + "?"
        response = f" Answer {tag}-{i}: " + " ".join(words[(3 * i + j) % len(words)] for j in range(50)) + "."
        prompts.append(prompt)
        queries.append(prompt + response)
    return queries, prompts


def bare_encoder(scorer, queries: list[str], prompts: list[str]) -> float:
    """Seconds the backbone takes for the items the service encodes for these queries, in the
    batches the feature cache plans (longest first, 32 per batch: the fastest way we know), in
    a worker thread as the service runs it (torch in Python's main thread ran 1.2-2x slower
    here on 2 busy cores)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_bare_encode, scorer, queries, prompts).result()


def _bare_encode(scorer, queries: list[str], prompts: list[str]) -> float:
    from micro_rm.features.batching import plan_batches
    from micro_rm.scoring.engine import Samples

    items = [item for q, p in zip(queries, prompts)
             for item in scorer.items(Samples([p], [q[len(p):]], [None], [None]))]
    backbone = scorer.backbone
    start = time.perf_counter()
    for batch in plan_batches(backbone.token_lengths(items), batch_size=32):
        backbone.encode([items[i] for i in batch])
    return time.perf_counter() - start


def get_reward_ratio(name: str, args) -> dict:
    """Service /get_reward queries/s over bare-encoder queries/s, alternating, ``args.repeats`` times."""
    from micro_rm.scoring.engine import RewardScorer

    work = Path(tempfile.mkdtemp(prefix=f"serve-ratio-{name}-"))
    build_model(name, work / "model")
    scorer = RewardScorer.load(work / "model")
    server = Server(work / "model", work)
    runs = []
    try:
        warm = fresh_queries("warm", args.queries)
        load(server.url, "/get_reward", lambda i: {"query": warm[0], "prompts": warm[1]}, ADMIN, 1, 600, 2)
        round_queries = args.clients * args.queries
        bare_rate = round_queries / bare_encoder(scorer, *fresh_queries("warm-bare", round_queries))
        per_repeat = round_queries * max(args.ratio_requests, int(np.ceil(bare_rate * args.ratio_seconds
                                                                          / round_queries)))
        for r in range(args.repeats):
            # The very texts the service gets next (it has never seen them): a different tag, e.g.
            # `bare3` for `svc3-17`, tokenized ~6% shorter and flattered the bare encoder.
            bodies = [fresh_queries(f"svc{r}-{i}", args.queries) for i in range(per_repeat // args.queries)]
            bare_qps = per_repeat / bare_encoder(scorer, [q for b in bodies for q in b[0]],
                                                 [p for b in bodies for p in b[1]])
            out = load(server.url, "/get_reward", lambda i: {"query": bodies[i][0], "prompts": bodies[i][1]},
                       ADMIN, args.clients, 3600, len(bodies))
            service_qps = out["rps"] * args.queries
            runs.append({"bare": bare_qps, "service": service_qps, "ratio": service_qps / bare_qps,
                         "errors": out["errors"], "requests": out["requests"], "p50": out["p50"]})
    finally:
        server.stop()
    return {"backbone": name, "runs": runs, "median": float(np.median([r["ratio"] for r in runs])),
            "queries": per_repeat}


def ratio_table(results: list[dict], args) -> list[str]:
    sizes = ", ".join(f"{r['backbone']} {r['queries']:,}" for r in results)
    lines = ["", f"`/get_reward` against the bare encoder: {args.clients} clients, {args.queries} new queries per "
             f"request, queries per repeat: {sizes} (at least {args.ratio_seconds:g} s of the bare encoder); bare = "
             "`backbone.encode` of the same items (longest first, batches of 32) in the benchmark process; the two "
             f"alternate {args.repeats} times.", ""]
    cells = []
    for result in results:
        for i, r in enumerate(result["runs"]):
            cells.append((result["backbone"], i + 1, f"{r['bare']:,.1f}", f"{r['service']:,.1f}",
                          f"{r['ratio']:.2f}", r["errors"], f"{r['p50']:.0f}"))
        cells.append((result["backbone"], "**median**", "", "", f"**{result['median']:.2f}**",
                      sum(r["errors"] for r in result["runs"]), ""))
    return lines + markdown_table(["backbone", "repeat", "bare encoder queries/s", "/get_reward queries/s",
                                   "ratio", "errors", "p50 ms"], cells, align="llrrrrr")


def run_backbone(name: str, args, rows: list) -> None:
    import httpx

    work = Path(tempfile.mkdtemp(prefix=f"serve-bench-{name}-"))
    build_model(name, work / "model")
    server = Server(work / "model", work)
    try:
        token = httpx.post(server.url + "/users", json={"user_id": "bench"},
                           headers={"Authorization": f"Bearer {ADMIN}"}).json()["token"]
        prompts = [f"Question {i}: how do I keep a sourdough starter alive in a warm kitchen?" for i in range(32)]
        cached = [{"prompt": p, "responses": [f"Feed it daily, answer {i}.", f"Refrigerate it, answer {i}."]}
                  for i, p in enumerate(prompts)]
        warm = load(server.url, "/score", lambda i: cached[i % 32], ADMIN, 1, 600, 32)
        assert warm["errors"] == 0, "warm-up failed"
        run = lambda path, body, clients, n=args.requests, token=ADMIN: load(  # noqa: E731
            server.url, path, body, token, clients, args.seconds, n)
        rows.append((name, "/score, cached texts, 1 client", run("/score", lambda i: cached[i % 32], 1)))
        rows.append((name, f"/score, cached texts, {args.clients} clients",
                     run("/score", lambda i: cached[i % 32], args.clients)))
        rows.append((name, f"/score, cached texts, user weights, {args.clients} clients",
                     run("/score", lambda i: {**cached[i % 32], "user_id": "bench"}, args.clients, token=token)))
        cold = lambda i: {"prompt": f"Cold prompt {i} {time.time_ns()}: why is the sea salty?",  # noqa: E731
                          "responses": [f"Rivers carry minerals ({i}).", f"Because of fish tears ({i})."]}
        rows.append((name, "/score, cold texts (3 new texts each), 1 client",
                     run("/score", cold, 1, min(args.cold_requests, 100))))
        rows.append((name, f"/score, cold texts (3 new texts each), {args.clients} clients",
                     run("/score", cold, args.clients, args.cold_requests)))
        one = lambda i: {"user_id": f"u{i % 8}", "prompt": cached[i % 32]["prompt"],  # noqa: E731
                         "chosen": cached[i % 32]["responses"][i % 2], "rejected": cached[i % 32]["responses"][1 - i % 2]}
        rows.append((name, f"/feedback, 1 pair per request, {args.clients} clients",
                     run("/feedback", one, args.clients)))
        rows.append((name, f"/feedback, 8 pairs per request, {args.clients} clients",
                     {**run("/feedback", lambda i: [one(8 * i + j) for j in range(8)], args.clients), "pairs": 8}))
    finally:
        server.stop()


def http_parser() -> str:
    """The HTTP parser uvicorn picks here: httptools (the serve extra's) if installed, else h11."""
    import importlib.util

    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    import torch

    rows: list = []
    ratios = []
    for name in args.backbones.split(","):
        if args.only != "ratio":
            run_backbone(name.strip(), args, rows)
        if args.only != "table":
            ratios.append(get_reward_ratio(name.strip(), args))
    lines = [SECTION, "",
             f"{machine()}, {os.cpu_count()} CPU cores (server and load generator share them), torch "
             f"{torch.__version__}, uvicorn ({http_parser()}, one process), SQLite WAL with fsync on every commit. Closed loop, "
             f"each scenario stops at {args.requests} requests (cold: {args.cold_requests}) or {args.seconds:g} s. "
             f"Untrained K = 4 models. {time.strftime('%Y-%m-%d')}.", ""]
    cells = []
    for backbone, scenario, r in rows:
        updates = f"{r['rps'] * r.get('pairs', 1):,.0f}" if scenario.startswith("/feedback") else ""
        goal = ("≥ 500 updates/s, p99 ≤ 20 ms" if scenario.startswith("/feedback")
                else "p50 ≤ 5 ms" if "cached texts, 1 client" in scenario else "")
        errors = f" ({r['errors']} errors)" if r["errors"] else ""
        cells.append((backbone, scenario, f"{r['requests']}{errors}", f"{r['rps']:,.0f}", updates,
                      f"{r['p50']:.1f}", f"{r['p99']:.1f}", goal))
    if cells:
        lines += markdown_table(["backbone", "scenario", "requests", "req/s", "updates/s", "p50 ms", "p99 ms",
                                 "goal"], cells, align="llrrrrrl")
    if ratios:
        lines += ratio_table(ratios, args)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        write_section(SECTION, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
