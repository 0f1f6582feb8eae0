"""One task's log lines, read from the executor's files (``exec/logs``) for ``service logs``.

``backlog`` gives the lines already written (``since``, then the last ``tail`` of them: two
passes over the files, one to count, so memory stays at one line whatever the tail), and
``poll`` what the shim appended since, noticing rotation: when ``output.log`` is renamed the
open file is read to its end, then the new ``output.log`` from its start. Partial records are
joined into their line, up to ``MAX_LINE`` bytes (a longer line is cut into pieces of that size).
Memory: one line and one read buffer per task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from swarmd.agent.exec.logs import LOG_NAME, LogRecord, log_files, parse_record

MAX_LINE = 64 << 10          # bytes of one line sent (the dispatcher's limit)
MAX_RECORD = 32 << 10        # a record longer than this is not the shim's: skipped
READ_CHUNK = 64 << 10


@dataclass(frozen=True)
class Line:
    timestamp: str
    stream: str
    data: bytes


def since_stamp(since_ns: int) -> str:
    """``since`` in the shim's fixed-width format, so records compare as text."""
    if since_ns <= 0:
        return ""
    secs, frac = divmod(since_ns, 1_000_000_000)
    t = time.gmtime(secs)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%09dZ" % (t[0], t[1], t[2], t[3], t[4], t[5], frac)


class _Joiner:
    """Partial records into lines, per stream."""

    def __init__(self) -> None:
        self._parts: dict[str, tuple[str, bytes]] = {}

    def add(self, record: LogRecord) -> Iterator[Line]:
        stamp, held = self._parts.pop(record.stream, (record.timestamp, b""))
        data = held + record.data
        while len(data) > MAX_LINE:
            yield Line(stamp, record.stream, data[:MAX_LINE])
            data = data[MAX_LINE:]
        if record.partial:
            self._parts[record.stream] = (stamp, data)
        else:
            yield Line(stamp, record.stream, data)


def _raw_records(f: BinaryIO, buffer: bytearray) -> Iterator[bytes]:
    """The complete records readable now, unparsed; an unfinished last one stays in ``buffer``."""
    while True:
        chunk = f.read(READ_CHUNK)
        if not chunk:
            return
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            if end - start <= MAX_RECORD:
                yield bytes(buffer[start:end])
            start = end + 1
        del buffer[:start]
        if len(buffer) > MAX_RECORD:  # no newline in sight: not a record of the shim's
            buffer.clear()


_STAMP = 30  # the shim's timestamps are fixed-width: 2026-12-01T23:44:51.599754258Z


def _ends_a_line(raw: bytes, since: bytes) -> bool:
    """Whether a record ends a line (``F``) from ``since`` on: counted without parsing, so that
    ``--tail`` of a large log costs a scan, not a parse of every record."""
    return (len(raw) > _STAMP + 8 and raw[_STAMP + 8] == 70 and raw[_STAMP + 1:_STAMP + 7] in (b"stdout", b"stderr")
            and (not since or raw[:_STAMP] >= since))


class TaskLogReader:
    def __init__(self, task_id: str, task_dir: Path, tail: int, since_ns: int) -> None:
        self.task_id = task_id
        self._dir = task_dir
        self._tail = tail
        self._since = since_stamp(since_ns)
        self._since_raw = self._since.encode()
        self._skip = 0
        self._current: BinaryIO | None = None
        self._inode = 0
        self._buffer = bytearray()
        self._joiner = _Joiner()

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def _lines(self, f: BinaryIO, buffer: bytearray) -> Iterator[Line]:
        for raw in _raw_records(f, buffer):
            if self._skip:  # before the tail: only counted
                if _ends_a_line(raw, self._since_raw):
                    self._skip -= 1
                continue
            record = parse_record(raw)
            if record is None or (self._since and record.timestamp < self._since):
                continue
            yield from self._joiner.add(record)

    def backlog(self) -> Iterator[Line]:
        """The lines written so far; the current file stays open for ``poll``. With a tail, the
        files are counted first; a whole file before the tail is not read again."""
        files = log_files(self._dir)
        counts: dict[Path, int] = {}
        skip = 0
        if self._tail >= 0:
            for path in files:
                try:
                    with path.open("rb") as f:
                        counts[path] = sum(1 for raw in _raw_records(f, bytearray())
                                           if _ends_a_line(raw, self._since_raw))
                except OSError:
                    continue
            skip = max(0, sum(counts.values()) - self._tail)
        for path in files:
            current = path.name == LOG_NAME
            # Skipped whole only if the line its last partial records begin is skipped too.
            if not current and path in counts and skip > counts[path]:
                skip -= counts[path]
                continue
            try:
                f = path.open("rb")
            except OSError:
                continue
            buffer = self._buffer if current else bytearray()
            self._skip = skip
            try:
                yield from self._lines(f, buffer)
            finally:
                skip, self._skip = self._skip, 0
                if current:
                    self._adopt(f)
                else:
                    f.close()

    def _adopt(self, f: BinaryIO) -> None:
        self.close()
        self._current = f
        self._inode = os.fstat(f.fileno()).st_ino

    def poll(self) -> list[Line]:
        """What was appended since the last look (following)."""
        lines: list[Line] = []
        if self._current is not None:
            lines.extend(self._lines(self._current, self._buffer))
        path = self._dir / LOG_NAME
        try:
            inode = os.stat(path).st_ino
        except OSError:
            return lines
        if self._current is None or inode != self._inode:  # rotated (or first written): read the new one
            if self._current is not None:
                lines.extend(self._lines(self._current, self._buffer))
            try:
                f = path.open("rb")
            except OSError:
                return lines
            self._buffer = bytearray()
            self._adopt(f)
            lines.extend(self._lines(f, self._buffer))
        return lines

