"""Daemon logging: plain or JSON lines on stderr (journald captures them), reloadable level."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

LEVELS = ("debug", "info", "warning", "error", "critical")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    # grpc.aio logs a line per call at DEBUG ("Loaded running loop"): noise, even when debugging.
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.INFO)
    # pysyncobj logs every failed tick at ERROR with a traceback; keep it, it is rare and real.


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


class LogLimiter:
    """At most ``burst`` warnings per ``period``; the next one that gets out says how many did not."""

    def __init__(self, burst: int, period: float, emit: Callable[[str], None]) -> None:
        self._burst, self._period, self._emit = burst, period, emit
        self._start = float("-inf")
        self._sent = 0
        self._dropped = 0

    def warn(self, message: str, now: float) -> None:
        if now - self._start >= self._period:
            self._start, self._sent = now, 0
        if self._sent >= self._burst:
            self._dropped += 1
            return
        self._sent += 1
        if self._dropped:
            message += f" ({self._dropped} similar warnings suppressed)"
            self._dropped = 0
        self._emit(message)
