"""Running workflows in-process, for fast tests of the runtime's rules: a dispatcher that
runs each chain synchronously the way Celery would (retries by the step's policy, the
link_error callback on failure, nothing carried forward after a refusal), and a loop that
drains the work and applies the events to the saga log.

No broker and no worker: what this cannot show (delivery, redelivery after a crash, time
limits) is what the end-to-end tests are for.

`memory_redis()` is a Redis in the test's own memory (fakeredis, with Lua): the event
log, the fence, the DLQ store and the metrics run their own scripts on it unchanged, so a
team tests its workflow's failure routing with no server at all. The shop's suite runs
the same rules on a real redis-server too, which keeps the fake honest.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from redis import Redis

from sagaflow._errors import AlreadyCompensated
from sagaflow._workflow import Workflow

if TYPE_CHECKING:
    from sagaflow._projector import Projector
    from sagaflow._runner import Runner


class SyncDispatcher:
    """chained=False: choreography's dispatcher, which sends only the first piece of work
    (each announces the next, through its service's outbox).

    Like a message, each piece of work keeps only its workflow's name and version: it is
    run by the plan the runner finds for them (Runner.plan), as a worker finds it; a
    version the runner does not know raises UnknownVersion where a worker would refuse."""

    def __init__(self, max_retries: int = 2, max_attempts: int = 2, chained: bool = True) -> None:
        self.runner: Runner | None = None  # set once the Runner that uses this dispatcher exists
        self.max_retries, self.max_attempts = max_retries, max_attempts
        self.chained = chained
        self.work: deque[tuple[Any, ...]] = deque()
        self.sent: list[tuple[str, list[str]]] = []  # what was dispatched, in order
        self.dropped: list[str] = []  # message ids dropped as duplicates, as a worker would

    def forward(
        self,
        wf: Workflow,
        ctx: dict[str, Any],
        steps: list[str],
        dlq_entry: str = "",
        message_id: str = "",
    ) -> None:
        steps = list(steps) if self.chained else list(steps[:1])
        self.sent.append(("forward", steps))
        self.work.append(("forward", message_id, (wf.name, wf.version), ctx, steps, dlq_entry))

    def compensate(
        self,
        wf: Workflow,
        saga_id: str,
        plan: list[str],
        start: int = 0,
        dlq_entry: str = "",
        message_id: str = "",
    ) -> None:
        end = len(plan) if self.chained else start + 1
        self.sent.append(("compensate", plan[start:end]))
        self.work.append(
            (
                "compensate",
                message_id,
                (wf.name, wf.version),
                saga_id,
                list(plan),
                start,
                end,
                dlq_entry,
            )
        )

    @property
    def _runner(self) -> Runner:
        assert self.runner is not None, "set the dispatcher's runner before it runs work"
        return self.runner

    def drain(self, projector: Projector | None = None) -> None:
        """Run everything sent, and everything it sends, then bring the log up to date."""
        while self.work:
            kind, message_id, (name, version), *job = self.work.popleft()
            wf = self._runner.plan(name, version)
            saga_id = wf.saga_id(wf.parse(job[0])) if kind == "forward" else job[0]
            # A message id already delivered as another task is dropped (SagaTask does).
            deliveries = self._runner.events
            if message_id and not deliveries.first_delivery(saga_id, message_id, str(uuid4())):
                self.dropped.append(message_id)
                continue
            if kind == "forward":
                self._forward(wf, *job)
            else:
                self._compensate(wf, *job)
        while projector is not None and projector.run_once(block_ms=1):
            pass

    def _attempts(
        self,
        wf: Workflow,
        name: str,
        call: Callable[[int], Any],
        saga_id: str,
        retry_args: dict[str, Any],
        dlq_entry: str,
        plan: list[str],
    ) -> tuple[bool, Any]:
        """Try `call(attempt)` as the step's retry policy allows; False if it failed."""
        limit = 1 if dlq_entry else self.max_retries + 1
        for attempt in range(1, limit + 1):
            try:
                return True, call(attempt)
            except AlreadyCompensated:
                return False, None
            except Exception as exc:
                retryable = isinstance(exc, wf.retryable) and not self._runner.is_business(wf, exc)
                if retryable and attempt < limit:
                    continue
                self._runner.after_failure(
                    wf, name, exc, saga_id, retry_args, dlq_entry, max_attempts=self.max_attempts
                )
                self._runner.step_failed(wf, name, saga_id, plan)
                return False, None
        return False, None

    def _forward(self, wf: Workflow, ctx: dict[str, Any], steps: list[str], dlq_entry: str) -> None:
        for index, name in enumerate(steps):
            entry = dlq_entry if index == 0 else ""
            saga_id = wf.saga_id(wf.parse(ctx))

            def step(
                attempt: int, n: str = name, c: dict[str, Any] = ctx, e: str = entry
            ) -> dict[str, Any]:
                return self._runner.run_step(wf, n, c, attempt, e)

            ok, result = self._attempts(
                wf,
                name,
                step,
                saga_id,
                {"ctx": ctx},
                entry,
                [],
            )
            if not ok:
                return
            ctx = result

    def _compensate(
        self, wf: Workflow, saga_id: str, plan: list[str], start: int, end: int, dlq_entry: str
    ) -> None:
        for index, name in enumerate(plan[start:end]):
            entry = dlq_entry if index == 0 else ""

            def undo(attempt: int, n: str = name, e: str = entry) -> str:
                return self._runner.run_compensation(wf, n, saga_id, attempt, e, plan)

            ok, _ = self._attempts(
                wf,
                name,
                undo,
                saga_id,
                {"plan": plan},
                entry,
                plan,
            )
            if not ok:
                return


def memory_redis() -> Redis:
    """A fresh in-memory Redis client (fakeredis, its Lua scripting on): nothing shared
    with any other client or test."""
    try:
        import fakeredis
    except ImportError as exc:  # an optional, test-only dependency
        raise RuntimeError(
            "memory_redis() needs fakeredis[lua]: pip install 'fakeredis[lua]'"
        ) from exc
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())
