"""Logging set-up for the application entry points (only the CLI configures handlers).

Records carry a ``job`` field from a context variable; messages never contain patient names
or IDs (the code logs UIDs, series numbers and counts only).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

_job_id: contextvars.ContextVar[str] = contextvars.ContextVar("ct_triage_job", default="-")


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log record emitted inside the block with ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


class _JobFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job = _job_id.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "job": getattr(record, "job", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(
    *, level: int = logging.INFO, fmt: str = "text", stream: TextIO | None = None
) -> None:
    """Send ``ct_triage`` logs to ``stream`` (default stderr) as text or JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_JobFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [job=%(job)s] %(message)s")
        )
    root = logging.getLogger("ct_triage")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
