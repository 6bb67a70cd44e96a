"""Structured logs: one JSON object per line.

Callers pass context with ``extra={"certificate_id": ..., "command_id": ...,
"topic": ..., "partition": ..., "offset": ...}``. Payloads of money events are never
logged at info level, and secrets never reach a log record.
"""

from __future__ import annotations

import json
import logging
import time

CONTEXT_FIELDS = ("service", "certificate_id", "command_id", "topic", "partition", "offset",
                  "reason", "seq")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def json_handler(service: str) -> logging.Handler:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service))
    return handler
