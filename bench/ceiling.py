"""Scenario 1, the ceiling: how fast the raw 5-task chain (bench/raw_chain.py) runs."""

from __future__ import annotations

import time

import redis

from bench import raw_chain
from bench.client import percentiles
from bench.cost import NO_WINDOW


def _marker_time(raw: bytes) -> tuple[int, float]:
    chain_id, stamp = raw.decode().split()
    return int(chain_id), float(stamp)


def latency(client: redis.Redis, count: int, timeout: float = 10.0) -> list[float]:
    """One chain at a time: submit, wait for its marker; ms from submit to the last task."""
    client.delete(raw_chain.DONE_KEY)
    samples = []
    for chain_id in range(count):
        sent = time.time()
        raw_chain.make_chain(chain_id).apply_async()
        popped = client.blpop([raw_chain.DONE_KEY], timeout=timeout)
        if popped is None:
            raise TimeoutError(f"raw chain {chain_id} did not finish within {timeout}s")
        done_id, stamp = _marker_time(popped[1])
        if done_id != chain_id:
            raise RuntimeError(f"expected the marker of chain {chain_id}, got {done_id}")
        samples.append((stamp - sent) * 1000)
    return samples


def saturation(client: redis.Redis, count: int, timeout: float, window=NO_WINDOW) -> dict:
    """Submit `count` chains at once (they queue up), then wait for every marker. Throughput:
    chains / (last marker - first submit)."""
    client.delete(raw_chain.DONE_KEY)
    window.begin()
    start = time.time()
    for chain_id in range(count):
        raw_chain.make_chain(chain_id).apply_async()
    submitted = time.time()
    deadline = time.monotonic() + timeout
    while client.llen(raw_chain.DONE_KEY) < count:
        if time.monotonic() > deadline:
            done = client.llen(raw_chain.DONE_KEY)
            raise TimeoutError(f"only {done}/{count} raw chains finished in {timeout:.0f}s")
        time.sleep(0.2)
    stamps = [_marker_time(raw)[1] for raw in client.lrange(raw_chain.DONE_KEY, 0, -1)]
    cost = window.end(count)
    elapsed = max(stamps) - start
    return {
        "chains": count,
        "elapsed_s": round(elapsed, 3),
        "submit_s": round(submitted - start, 3),
        "throughput": round(count / elapsed, 2),
        "tasks_per_s": round(5 * count / elapsed, 1),
        "cost": cost,
    }


def run(
    broker_url: str, warmup: int, latency_count: int, saturation_count: int, window=NO_WINDOW
) -> dict:
    raw_chain.configure(broker_url)
    client = redis.Redis.from_url(broker_url)
    try:
        latency(client, warmup)  # both pool children import, connect and warm up
        samples = latency(client, latency_count)
        timeout = max(60.0, saturation_count / 5)
        sat = saturation(client, saturation_count, timeout, window)
    finally:
        client.close()
    lat = percentiles(samples)
    return {
        **sat,
        "p50_ms": lat["p50"],
        "p95_ms": lat["p95"],
        "p99_ms": lat["p99"],
        "latency_ms": lat,
        "latency_samples_ms": [round(s, 3) for s in samples],
    }
