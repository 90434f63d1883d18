"""Logging set-up for the CLI: readable lines by default, one JSON object per record on request.

Handler loggers carry ``service``, ``queue``, ``job_id``, ``attempt`` and ``correlation_id`` (see
``ctx.logger``); both formats print them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

CONTEXT_FIELDS = ("service", "queue", "job_id", "attempt", "correlation_id", "trace_id")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name, None)]
        return f"{text} [{' '.join(extras)}]" if extras else text


def configure_logging(level: str = "INFO", *, json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if json else TextFormatter())
    root = logging.getLogger("conveyor")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
