"""Reading a task's log files, as the shim writes them.

Each file holds CRI log records, one per line: ``<RFC 3339 time> <stdout|stderr> <F|P> <bytes>``
(P: a partial line that the next record of the stream continues). The current file is
``output.log``; rotation renames it to ``output.log.1`` and older ones up to the cap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

LOG_NAME = "output.log"
_ROTATED = re.compile(re.escape(LOG_NAME) + r"\.([1-9][0-9]{0,3})")


@dataclass(frozen=True)
class LogRecord:
    timestamp: str
    stream: str
    partial: bool
    data: bytes


def log_files(task_dir: Path) -> list[Path]:
    """The task's log files, oldest first."""
    rotated = sorted(((int(m.group(1)), p) for p in task_dir.glob(LOG_NAME + ".*")
                      if (m := _ROTATED.fullmatch(p.name))), reverse=True)
    files = [p for _, p in rotated]
    current = task_dir / LOG_NAME
    if current.exists():
        files.append(current)
    return files


def parse_record(line: bytes) -> LogRecord | None:
    """One record (without its newline); None for a line that is not one."""
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
        return None
    return LogRecord(parts[0].decode("ascii", "replace"), parts[1].decode(), parts[2] == b"P",
                     parts[3] if len(parts) == 4 else b"")


def read_records(files: Iterable[Path]) -> Iterator[LogRecord]:
    """Every record of the files in order; a file rotated away meanwhile is skipped."""
    for path in files:
        try:
            with path.open("rb") as f:
                for raw in f:
                    record = parse_record(raw.rstrip(b"\n"))
                    if record is not None:
                        yield record
        except FileNotFoundError:
            continue
