"""The runtime's own error types. A workflow adds its business errors to these."""

from __future__ import annotations


def error_text(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc[:2000]
    # Some exceptions carry no message (SoftTimeLimitExceeded()): say what they mean.
    name, message = type(exc).__name__, str(exc)
    if message in ("", f"{name}()"):
        first_sentence = " ".join((type(exc).__doc__ or "").split()).split(". ")[0]
        message = first_sentence.rstrip(".") + "." if first_sentence else "no message"
    return f"{name}: {message}"[:2000]


class SagaError(Exception):
    """Base of every error the runtime raises on purpose."""


class AlreadyCompensated(SagaError):
    """A late or duplicate step arrived after its compensation ran (or after the saga turned
    back): it must not apply, and nothing else needs to happen."""


class TransientError(Exception):
    """An infrastructure hiccup that may succeed on a second try: retried with backoff."""


class StepTimeout(TransientError):
    """A step overran its time budget."""


class InjectedBusinessError(Exception):
    """Raised by fault injection to drill the compensation path; every workflow treats it
    as a business error."""


class InputNotKnown(SagaError, ValueError):
    """Parked work whose input has not been copied from the saga log yet: wait, do not
    page (sagaflow/dlq/worker.py). A ValueError too, which the CLI reports in one line."""


class DependencyUnreachable(SagaError):
    """The work could not reach what it needs (its database, Redis, the broker): not its
    own failure, so it waits without spending an attempt (sagaflow/dependencies.py)."""

    def __init__(self, dependency: str, error: BaseException):
        super().__init__(f"{dependency} cannot be reached: {error_text(error)}")
        self.dependency, self.error = dependency, error


class UnknownSaga(SagaError):
    pass
