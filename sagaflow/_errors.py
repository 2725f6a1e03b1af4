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
    """Root of every error the runtime raises on purpose. `code` names each kind in one
    word, for logs, the DLQ's records and the CLI's --json; a workflow's own business
    errors stay its own (Workflow.business_errors)."""

    code = "saga_error"


class DeclarationError(SagaError, ValueError):
    """A workflow, a fault spec or a wiring that cannot work: said at declaration or start,
    never in the middle of a saga."""

    code = "declaration"


class NotApplicable(SagaError, ValueError):
    """An operator's or the DLQ's action that does not apply to this entry or saga (it is
    resolved, it is not a forward step, its input is not known): nothing was changed."""

    code = "not_applicable"


class AlreadyCompensated(SagaError):
    """A late or duplicate step arrived after its compensation ran (or after the saga turned
    back): it must not apply, and nothing else needs to happen."""

    code = "already_compensated"


class MigrationRefused(SagaError):
    """sagaflow's migrations will not touch this database without a person: some of a
    part's tables are there and some are not, the version row is not one row, or the
    database is at a later version than this sagaflow knows. Nothing was changed."""

    code = "migration_refused"


class TransientError(SagaError):
    """An infrastructure hiccup that may succeed on a second try: retried with backoff."""

    code = "transient"


class StepTimeout(TransientError):
    """A step overran its time budget."""

    code = "step_timeout"


class WorkerLostTooOften(SagaError):
    """The work's worker was lost (killed, out of memory) on more attempts than its saga's
    version retries it: parked in the DLQ rather than run again (sagaflow.celery_app)."""

    code = "worker_lost"


class InjectedBusinessError(SagaError):
    """Raised by fault injection to drill the compensation path; every workflow treats it
    as a business error."""

    code = "injected_business"


class InputNotKnown(NotApplicable):
    """Parked work whose input has not been copied from the saga log yet: wait, do not
    page (sagaflow/dlq/worker.py)."""

    code = "input_not_known"


class DependencyUnreachable(SagaError):
    """The work could not reach what it needs (its database, Redis, the broker): not its
    own failure, so it waits without spending an attempt (sagaflow/_dependencies.py)."""

    code = "dependency_unreachable"

    def __init__(self, dependency: str, error: BaseException):
        super().__init__(f"{dependency} cannot be reached: {error_text(error)}")
        self.dependency, self.error = dependency, error


class UnknownVersion(NotApplicable):
    """Work of a saga started on a version of its workflow this process does not know (its
    build has neither that plan as current nor among `Workflow.earlier`). Never guessed:
    a worker sends the message back for one that knows it, and after a bounded wait
    dead-letters it (sagaflow.celery_app); the DLQ and an operator's requeue refuse it."""

    code = "unknown_version"

    def __init__(self, workflow: str, version: str, known: list[str]):
        known_text = ", ".join(known) or "none"
        super().__init__(
            f"no worker knows version {version} of workflow {workflow} (this process knows:"
            f" {known_text})"
        )
        self.workflow, self.version, self.known = workflow, version, list(known)
