"""One log format for every process: time, level, logger, then key=value fields; or, with
LOG_FORMAT=json, one JSON object per line for a log pipeline to read without a regex.

JSON lines come from python-json-logger (a small, well-kept formatter for the standard
logging module, which every library here already logs through; structlog would ask each
call site to change). Each line carries the process's role and, whenever they exist, the
saga id, workflow, step, attempt, task id and trace id: from the work the line was logged in
(sagaflow.current_work, set by the Celery adapter around each task), else from the
`key=value` fields our own messages already write."""

from __future__ import annotations

import logging
import re
import sys

from pythonjsonlogger.json import JsonFormatter

from sagaflow import current_work, tracing

TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s"
# The fields a line carries when they are known, in this order.
WORK_FIELDS = ("saga_id", "workflow", "step", "attempt", "task_id", "dlq_id", "trace_id")
_FIELD = re.compile(r"\b(saga_id|workflow|step|attempt|task_id|dlq_id)=([^\s,;)]+)")


class WorkFields(logging.Filter):
    """Adds the process role and the saga work's fields to each record (JSON lines)."""

    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = self.role
        found = dict(_FIELD.findall(record.getMessage()))
        found.update({k: str(v) for k, v in current_work().items()})
        trace_id = tracing.current_trace_id()  # "" at once when tracing is off
        if trace_id:
            found["trace_id"] = trace_id
        for name in WORK_FIELDS:
            if name in found:
                setattr(record, name, found[name])
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(levelname)s %(role)s %(processName)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger", "processName": "process"},
        timestamp="time",  # ISO 8601, UTC
    )


def configure_logging(level: str = "INFO", fmt: str = "text", role: str = "") -> None:
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(json_formatter())
        handler.addFilter(WorkFields(role or "process"))
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
        logging.captureWarnings(True)  # a library's warning is a JSON line too
    else:
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
    # Client libraries log request details (tokens, webhook URLs) at DEBUG: keep them quiet.
    logging.getLogger("slack_sdk").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
