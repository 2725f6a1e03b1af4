"""One thin Celery task per compensation, retried like a step; exhausted, it goes to the DLQ
(failure class 4) and the order shows NEEDS_ATTENTION."""

from __future__ import annotations

from app.saga.definition import COMPENSATION_NAMES
from tasks.base import SagaTask
from tasks.steps import retry_options


def _compensation_task(name: str):
    def run(self, order_id: int) -> str:
        return self.saga.run_compensation(name, order_id)

    run.__name__ = name
    run.__doc__ = f"Compensation {name}: undoes its step for one order, at most once."
    return run


def register_compensations(app, settings) -> None:
    for name in COMPENSATION_NAMES:
        app.task(
            _compensation_task(name),
            bind=True,
            shared=False,
            base=SagaTask,
            name=f"compensations.{name}",
            saga_name=name,
            business_errors_compensate=False,
            **retry_options(settings),
        )
