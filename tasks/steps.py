"""One thin Celery task per forward step: adapt a saga step to being run from a queue."""

from __future__ import annotations

from app.saga.definition import SAGA
from tasks.base import RETRYABLE, SagaTask


def retry_options(settings) -> dict:
    return {
        "autoretry_for": RETRYABLE,
        "max_retries": settings.step_max_retries,
        "retry_backoff": settings.step_retry_backoff,
        "retry_backoff_max": settings.step_retry_backoff_max,
        "retry_jitter": settings.step_retry_jitter,
        # Used when a lost worker counts as a retry: Celery's default (180 s) would outlast
        # the broker's visibility timeout and have Redis deliver the message again meanwhile.
        "default_retry_delay": settings.step_retry_backoff,
        "soft_time_limit": settings.step_soft_time_limit,
        "time_limit": settings.step_time_limit,
    }


def _step_task(name: str):
    def run(self, ctx: dict) -> dict:
        return self.saga.run_step(name, ctx)

    run.__name__ = name
    run.__doc__ = f"Saga step {name}: runs on its service's queue and returns the context."
    return run


def register_steps(app, settings) -> None:
    for step in SAGA:
        # shared=False: each app gets its own tasks; shared ones leak into every later app.
        app.task(
            _step_task(step.name),
            bind=True,
            shared=False,
            base=SagaTask,
            name=f"saga.{step.name}",
            saga_name=step.name,
            **retry_options(settings),
        )

    # Helper tasks retry transient errors for as long as it takes, with capped backoff.
    helper_options = {
        **retry_options(settings),
        "max_retries": None,
        "dead_letter_on_exhaustion": False,
    }

    @app.task(
        bind=True,
        shared=False,
        base=SagaTask,
        name="saga.step_failed",
        saga_name="step_failed",
        **helper_options,
    )
    def step_failed(self, failure: dict) -> str:
        """link_error callback of every step: compensate, or leave it to the DLQ. Takes one
        argument so Celery sends it as a queued task rather than running it inline."""
        return self.saga.step_failed(failure["order_id"], failure["step"])

    @app.task(
        bind=True,
        shared=False,
        base=SagaTask,
        name="coupons.process_issue_request",
        saga_name="issue_coupon",
        **helper_options,
    )
    def process_issue_request(self, request_id: int) -> dict:
        """Serve one coupon issue request, first come first served."""
        return self.app.lazy_saga.runtime.issue_requests.process(request_id)
