"""Fault injection for tests and drills: SAGA_FAULTS=name:kind[:times][@saga_id],...

Honoured only with SAGA_FAULTS_ENABLED=1 (the settings warn and drop it otherwise).
`times` counts per (saga, name) in Redis, so it holds across processes and redeliveries:
`decrease_stock:timeout:2` makes each saga's stock step time out twice, then succeed.
`@saga_id` aims it at one saga (`decrease_stock:timeout:3@order-42`), every other saga
untouched: a drill under load strikes the order it watches, not its neighbours. A fault
aimed at the saga wins over one for every saga at the same step.

With fault injection on, a spec stored under LIVE_KEY in Redis replaces SAGA_FAULTS for as
long as it is there, in every process at once, read at each step: a drill (or the failure
matrix) changes the faults between orders without restarting a worker.

`hold` keeps the work waiting, before it changes anything, for as long as HOLD_KEY is set
in Redis (at most HOLD_LIMIT seconds): a test holds a step in flight, acts on its saga
(an operator's cancel), then releases it, waiting on conditions rather than on a sleep.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redis import Redis

from sagaflow._errors import DeclarationError, InjectedBusinessError, StepTimeout, TransientError

KINDS = ("business", "timeout", "transient", "crash", "hold")
LIVE_KEY = "sagaflow:faults:live"
HOLD_KEY, HOLD_LIMIT = "sagaflow:faults:hold", 60.0
log = logging.getLogger("sagaflow.faults")


@dataclass(frozen=True)
class Fault:
    name: str
    kind: str
    times: int | None  # None: every time
    saga: str | None = None  # None: every saga

    @property
    def key(self) -> str:
        return self.name if self.saga is None else f"{self.name}@{self.saga}"


def parse_faults(spec: str, known: Iterable[str]) -> dict[str, Fault]:
    """Parse `name:kind[:times][@saga_id],...` into faults by key (`name`, or
    `name@saga_id`); raises DeclarationError (a ValueError) naming the bad part."""
    known = set(known)
    faults: dict[str, Fault] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        aimed, at, saga = part.partition("@")
        if at and not saga.strip():
            raise DeclarationError(f"SAGA_FAULTS entry {part!r} names no saga after @")
        fields = aimed.split(":")
        if len(fields) not in (2, 3):
            raise DeclarationError(f"SAGA_FAULTS entry {part!r} is not name:kind[:times][@saga_id]")
        name, kind = fields[0], fields[1]
        if name not in known:
            raise DeclarationError(f"SAGA_FAULTS names unknown step {name!r}")
        if kind not in KINDS:
            raise DeclarationError(f"SAGA_FAULTS kind {kind!r} is not one of {', '.join(KINDS)}")
        times = None
        if len(fields) == 3:
            if not (fields[2].isascii() and fields[2].isdigit()) or int(fields[2]) < 1:
                raise DeclarationError(f"SAGA_FAULTS times {fields[2]!r} is not a positive integer")
            times = int(fields[2])
        fault = Fault(name, kind, times, saga.strip() if at else None)
        faults[fault.key] = fault
    return faults


class FaultInjector:
    def __init__(
        self,
        faults: dict[str, Fault],
        count: Callable[[str], int],
        overrun: float,
        held: Callable[[], bool] = lambda: False,
    ):
        self.faults = faults
        self._count = count  # increments and returns a shared counter
        self._overrun = overrun
        self._held = held  # is HOLD_KEY set (a `hold` fault waits while it is)

    def current(self) -> dict[str, Fault]:
        return self.faults

    def _fires(self, name: str, saga_id: str, kinds: tuple[str, ...]) -> Fault | None:
        faults = self.current()
        fault = faults.get(f"{name}@{saga_id}") or faults.get(name)
        if fault is None or fault.kind not in kinds:
            return None
        seen = self._count(f"sagaflow:faults:{saga_id}:{name}")
        if fault.times is not None and seen > fault.times:
            return None
        log.warning(
            "injecting fault saga_id=%s step=%s kind=%s occurrence=%s",
            saga_id,
            name,
            fault.kind,
            seen,
        )
        return fault

    def before(self, name: str, saga_id: str) -> None:
        """Faults that strike before the work changes anything."""
        fault = self._fires(name, saga_id, ("business", "transient", "timeout", "hold"))
        if fault is None:
            return
        if fault.kind == "hold":
            deadline = time.monotonic() + HOLD_LIMIT
            while self._held() and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        if fault.kind == "business":
            raise InjectedBusinessError(f"injected business error in {name}")
        if fault.kind == "transient":
            raise TransientError(f"injected connection error in {name}")
        # Overrun: under a worker the soft time limit interrupts this sleep first.
        time.sleep(self._overrun)
        raise StepTimeout(f"injected timeout in {name}: overran {self._overrun:.1f}s")

    def after(self, name: str, saga_id: str) -> None:
        """A crash after the change committed but before the message is acknowledged: the
        worst moment, since the redelivered message must then change nothing."""
        if self._fires(name, saga_id, ("crash",)) is not None:
            os._exit(70)  # no cleanup, no flush: exactly what a killed process gets


class LiveFaultInjector(FaultInjector):
    """The faults of SAGA_FAULTS, or of the spec at LIVE_KEY while one is stored there."""

    def __init__(
        self,
        faults: dict[str, Fault],
        count: Callable[[str], int],
        overrun: float,
        read_live: Callable[[], str | None],
        known: Iterable[str],
        held: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(faults, count, overrun, held or (lambda: False))
        self._read_live = read_live
        self._known = tuple(known)
        self._parsed: tuple[str, dict[str, Fault]] = ("", {})

    def current(self) -> dict[str, Fault]:
        spec = self._read_live()
        if spec is None:
            return self.faults
        if spec != self._parsed[0]:
            try:
                faults = parse_faults(spec, self._known)
            except ValueError as exc:
                # Whoever stored it checks it first (set_live_faults); this is only a
                # hand-written key, and injecting nothing is the harmless reading of it.
                log.error("ignoring the live fault spec at %s: %s", LIVE_KEY, exc)
                faults = {}
            self._parsed = (spec, faults)
        return self._parsed[1]


def set_live_faults(client: Redis, spec: str, known: Iterable[str]) -> None:
    """Store a spec every fault-enabled process follows from its next step on ("" for
    none); raises DeclarationError, storing nothing, if the spec is malformed."""
    parse_faults(spec, known)
    client.set(LIVE_KEY, spec)


def clear_live_faults(client: Redis) -> None:
    """Back to each process's SAGA_FAULTS."""
    client.delete(LIVE_KEY)


def hold_work(client: Redis) -> None:
    """From now on, work with a `hold` fault waits (until release_work)."""
    client.set(HOLD_KEY, "1", ex=int(HOLD_LIMIT))


def release_work(client: Redis) -> None:
    client.delete(HOLD_KEY)


NO_FAULTS = FaultInjector({}, lambda _key: 0, 0.0)
