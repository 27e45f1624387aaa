"""Request counts, latencies and counters of the service: Prometheus text at ``GET /metrics`` (one
registry per app, a latency histogram to aggregate across replicas) and JSON at ``GET /stats``
(latency percentiles over the last ``window`` requests of each route: bounded memory).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Any, Iterator, Mapping, Optional

import numpy as np

# Counters every scrape shows, at 0 until something happens.
COUNTERS = {
    "feedback_pairs": "Feedback pairs accepted by POST /feedback.",
    "get_reward_prompt_not_found": "/get_reward queries that did not contain their prompt (OpenRLHF "
                                   "truncated it from the left); scored on the whole query.",
}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's request counts, latencies and counters; its own Prometheus collector."""

    def __init__(self, window: int = 10_000):
        from prometheus_client import CollectorRegistry, Histogram

        self.started = time.time()
        self._lock = threading.Lock()
        self._counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self._latency: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self.counters: dict[str, int] = defaultdict(int, {name: 0 for name in COUNTERS})
        self.registry = CollectorRegistry(auto_describe=False)   # per app: tests build many
        self._duration = Histogram("micro_rm_request_duration_seconds", "HTTP request latency by route.",
                                   ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._extra: Mapping[str, Mapping[str, Any]] = {}
        self._scrape = threading.Lock()
        self.registry.register(self)   # collect() reads the counts at scrape time

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._counts[route][status] += 1
            self._latency[route].append(seconds)
        self._duration.labels(route).observe(seconds)

    def prometheus(self, extra: Optional[Mapping[str, Mapping[str, Any]]] = None) -> bytes:
        """The Prometheus text exposition; ``extra`` maps a group (``features``) to cumulative
        stats read at scrape time (each number becomes ``micro_rm_<group>_<name>_total``)."""
        from prometheus_client import generate_latest

        with self._scrape:
            self._extra = extra or {}
            try:
                return generate_latest(self.registry)
            finally:
                self._extra = {}

    def add(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.counters[name] += value

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            routes = {}
            for route, by_status in sorted(self._counts.items()):
                ms = np.asarray(self._latency[route], dtype=np.float64) * 1000.0
                routes[route] = {
                    "count": sum(by_status.values()),
                    "by_status": {str(k): v for k, v in sorted(by_status.items())},
                    "latency_ms": {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                                   "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
                                   "window": int(len(ms))} if len(ms) else {},
                }
            return {"uptime_s": round(time.time() - self.started, 3), "requests": routes,
                    "counters": dict(self.counters)}

    def collect(self) -> Iterator[Any]:
        """The Prometheus families of a scrape: request counts, counters, extra stats, uptime."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            counts = [(route, status, n) for route, by in sorted(self._counts.items())
                      for status, n in sorted(by.items())]
            counters = dict(self.counters)
        requests = CounterMetricFamily("micro_rm_requests", "HTTP requests by route and status.",
                                       labels=["route", "status"])
        for route, status, n in counts:
            requests.add_metric([route, str(status)], n)
        yield requests
        for name, value in sorted(counters.items()):
            yield CounterMetricFamily(f"micro_rm_{name}", COUNTERS.get(name, name.replace("_", " ")), value=value)
        for group, stats in self._extra.items():
            for name, value in sorted(stats.items()):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    yield CounterMetricFamily(f"micro_rm_{group}_{name}", f"{group}: {name.replace('_', ' ')}.",
                                              value=value)
        yield GaugeMetricFamily("micro_rm_uptime_seconds", "Seconds since the service started.",
                                value=time.time() - self.started)


class MetricsMiddleware:
    """Pure ASGI middleware: times each HTTP request and records it under its route template."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            name = getattr(scope.get("route"), "path", None) or "(unmatched)"
            self.metrics.observe(f"{scope['method']} {name}", status[0], time.perf_counter() - start)
