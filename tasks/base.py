"""The one base class every saga task shares: delivery guarantees, retry policy hooks,
structured logging, and the hand-off to the DLQ when retries run out."""

from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError

from app.errors import AlreadyCompensated, BusinessError, TransientError

log = logging.getLogger("saga.tasks")

# Only what may succeed on a second try. Business errors are never here.
RETRYABLE = (
    TransientError,
    SoftTimeLimitExceeded,
    OperationalError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


def order_id_of(args: tuple) -> int | None:
    first = args[0] if args else None
    if isinstance(first, dict):
        return first.get("order_id")
    return first if isinstance(first, int) else None


class SagaTask(Task):
    """Acknowledge only after the work is done, and re-queue it if the worker dies: every
    step is idempotent, so a redelivery is safe."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    saga_name: str = ""
    # Expected business refusals are logged as such, without a traceback.
    throws = (BusinessError,)
    # Steps and compensations go to the DLQ when retries run out; helper tasks just fail.
    dead_letter_on_exhaustion: bool = True
    # A forward step's business error compensates; a compensation must not refuse, so one
    # that does goes to the DLQ like any other failure.
    business_errors_compensate: bool = True

    @property
    def saga(self):
        return self.app.lazy_saga.saga

    def __call__(self, *args, **kwargs):
        # Call run() directly: Task.__call__ would push a fresh request and lose the
        # retry count that bounds autoretry.
        order_id = order_id_of(args)
        fields = f"order_id={order_id} step={self.saga_name} task_id={self.request.id}"
        try:
            return self.run(*args, **kwargs)
        except (Ignore, Reject):
            raise
        except Retry as retry:
            log.warning(
                "retrying %s attempt=%s in=%ss error=%r",
                fields,
                self.request.retries + 1,
                retry.when,
                str(retry.exc),
            )
            raise
        except BusinessError as exc:
            if self.business_errors_compensate:
                raise  # recorded by the saga; the link_error callback compensates
            self._park(order_id, args, exc, fields, "refused by the business (cannot undo)")
            raise
        except AlreadyCompensated:
            log.info("ignored late delivery %s: the saga is being or was undone", fields)
            raise Ignore() from None
        except Exception as exc:
            if not self.dead_letter_on_exhaustion:
                log.error("failed %s error=%r", fields, str(exc))
                raise
            why = "retries exhausted" if isinstance(exc, RETRYABLE) else "not retryable"
            self._park(order_id, args, exc, fields, why)
            raise

    def _park(self, order_id, args, exc, fields: str, why: str) -> None:
        """Hand the work to the DLQ; the saga log and the order say so."""
        log.error("dead-lettering %s (%s) error=%r", fields, why, str(exc))
        ctx = args[0] if args and isinstance(args[0], dict) else {"order_id": order_id}
        self.saga.dead_letter(order_id, self.saga_name, ctx, exc, task=self.name)
