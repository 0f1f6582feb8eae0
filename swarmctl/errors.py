"""swarmctl's one error type and its exit codes (one place maps failures to exit statuses)."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    SUCCESS = 0
    ERROR = 1           # a refused operation or bad input the command checked (Docker: 1)
    USAGE = 125         # a flag that cannot be parsed (Docker: 125)
    INTERRUPTED = 130   # Ctrl-C


class CLIError(Exception):
    """Printed as is on stderr (one line where Docker has one), then exit with ``status``."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
