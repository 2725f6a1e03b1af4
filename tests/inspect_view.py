"""What tests read behind the API's back: every service's database, Redis, the DLQ and the
saga log, opened with all five database URLs (as no real process of the shop is)."""

from __future__ import annotations

from app.bootstrap import Services, build_saga_log
from app.order_context import saga_id_of
from app.workflows import SERVICES
from sagaflow._runtime import dlq_backoff
from sagaflow.dlq.store import DeadLetterStore


def eid(order_id: int, name: str) -> str:
    """The DLQ entry id of an order's step or compensation."""
    return f"{saga_id_of(order_id)}:{name}"


class OrderSagas:
    """The saga log, read by order id."""

    def __init__(self, saga_log):
        self.log = saga_log

    def step(self, order_id: int, name: str) -> dict | None:
        return self.log.step(saga_id_of(order_id), name)

    def statuses(self, order_id: int) -> dict[str, str]:
        return self.log.statuses(saga_id_of(order_id))

    def owed_compensations(self, order_id: int) -> list[str]:
        return self.log.owed_compensations(saga_id_of(order_id))

    def context(self, order_id: int) -> dict:
        return self.log.timeline(saga_id_of(order_id))["context"]

    def timeline(self, order_id: int) -> dict | None:
        return self.log.timeline(saga_id_of(order_id))


class Inspector:
    def __init__(self, settings):
        self.services = Services(settings, SERVICES)
        self.redis, self.databases = self.services.redis, self.services.databases
        self.dead_letters = DeadLetterStore(self.redis, dlq_backoff(settings))
        self.saga_log = OrderSagas(build_saga_log(self.services))

    def __getattr__(self, name: str):
        return getattr(self.__dict__["services"], name)

    def dispose(self) -> None:
        self.services.dispose()
