"""A small HTTP client for 127.0.0.1 (one connection per request), a bounded thread pool of
submitters, and percentiles."""

from __future__ import annotations

import http.client
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

TIMEOUT = 30.0


@dataclass
class Reply:
    status: int
    body: dict
    sent_at: float  # time.time() before the request was sent
    ms: float  # request duration (perf counter)


def call(
    port: int, method: str, path: str, body: dict | None = None, headers: dict | None = None
) -> Reply:
    data = json.dumps(body).encode() if body is not None else None
    headers = {
        **({"Content-Type": "application/json"} if data is not None else {}),
        **(headers or {}),
    }
    sent_at, start = time.time(), time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        status = response.status
    finally:
        conn.close()
    ms = (time.perf_counter() - start) * 1000
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"raw": raw[:200].decode(errors="replace")}
    return Reply(status, parsed, sent_at, ms)


def submit_all(threads: int, bodies: list, send) -> tuple[list, float, float]:
    """Run send(body) for every body on `threads` threads. Returns (results in order,
    wall start, wall end) with time.time() clocks."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="submitter")
    start = time.time()
    try:
        results = list(pool.map(send, bodies))
    except BaseException:
        # Ctrl-C or a failed request: drop what has not started, let the rest finish.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    end = time.time()
    pool.shutdown()
    return results, start, end


def percentiles(values: list[float]) -> dict:
    """p50/p95/p99 (linear interpolation between closest ranks), mean, min, max, n."""
    if not values:
        return {
            "n": 0,
            "p50": None,
            "p95": None,
            "p99": None,
            "mean": None,
            "min": None,
            "max": None,
        }
    ordered = sorted(values)

    def pick(q: float) -> float:
        pos = (len(ordered) - 1) * q
        low, high = math.floor(pos), math.ceil(pos)
        return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

    return {
        "n": len(ordered),
        "p50": round(pick(0.50), 2),
        "p95": round(pick(0.95), 2),
        "p99": round(pick(0.99), 2),
        "mean": round(sum(ordered) / len(ordered), 2),
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
    }
