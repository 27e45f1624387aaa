"""Request counts and latency percentiles per route, kept in memory (``GET /metrics``).

Latencies are the last ``window`` requests of each route (a ring buffer), so percentiles follow
the recent load and memory stays bounded.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Any

import numpy as np


class Metrics:
    def __init__(self, window: int = 10_000):
        self.started = time.time()
        self._lock = threading.Lock()
        self._counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self._latency: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self.counters: dict[str, int] = defaultdict(int)   # e.g. feedback_pairs

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._counts[route][status] += 1
            self._latency[route].append(seconds)

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
            route = scope.get("route")
            name = getattr(route, "path", None) or "(unmatched)"
            self.metrics.observe(f"{scope['method']} {name}", status[0], time.perf_counter() - start)
