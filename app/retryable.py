"""What every shop workflow retries: only what may succeed on a second try (the broker,
the databases, a step's own TransientError). Business errors are never here; the Celery
adapter adds its own soft time limit."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError

from sagaflow import TransientError

RETRYABLE = (
    TransientError,
    OperationalError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)
