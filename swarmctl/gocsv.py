"""Go's ``encoding/csv`` reading one record, as pflag reads every ``stringSlice`` flag value.

``--subnet 10.0.0.0/24,10.1.0.0/24`` is two values because pflag hands the text to a CSV
reader; the same reader decides what a quote or a line break does, and its errors are what
Docker prints (``parse error on line 1, column 2: bare " in non-quoted-field``). Python's
``csv`` module is lenient where Go's is strict, so it cannot stand in.
"""

from __future__ import annotations

BARE_QUOTE = 'bare " in non-quoted-field'
EXTRANEOUS_QUOTE = 'extraneous or missing " in quoted-field'


class CSVError(ValueError):
    """``csv.ParseError`` (or ``EOF``); str() is Go's text."""


class _Lines:
    """Go's ``Reader.readLine``: lines keep their "\\n", "\\r\\n" becomes "\\n", and a "\\r"
    right before the end of the input is dropped."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0
        self.number = 0

    def next(self) -> bytes | None:
        if self.offset >= len(self.data):
            return None
        end = self.data.find(b"\n", self.offset)
        end = len(self.data) if end < 0 else end + 1
        line = self.data[self.offset:end]
        self.offset = end
        self.number += 1
        if not line.endswith(b"\n") and line.endswith(b"\r"):
            line = line[:-1]
        if line.endswith(b"\r\n"):
            line = line[:-2] + b"\n"
        return line


def _parse_error(start: int, line: int, column: int, why: str) -> CSVError:
    if start != line:
        return CSVError(f"record on line {start}; parse error on line {line}, column {column}: {why}")
    return CSVError(f"parse error on line {line}, column {column}: {why}")


def _without_newline(field: bytes) -> bytes:
    return field[:-1] if field.endswith(b"\n") else field


def read_record(text: str) -> list[str]:
    """The first record of ``text``: empty lines before it are skipped, lines after it ignored.

    Raises ``CSVError("EOF")`` when there is no record at all, as Go's reader does.
    """
    data = text.encode("utf-8", "surrogateescape")
    lines = _Lines(data)
    line = lines.next()
    while line is not None and line in (b"", b"\n"):
        line = lines.next()
    if line is None:
        raise CSVError("EOF")
    start = lines.number
    fields: list[bytes] = []
    column = 1
    position_line = start  # Go counts a line here only when it holds something
    while True:
        if not line.startswith(b'"'):
            comma = line.find(b",")
            field = line[:comma] if comma >= 0 else _without_newline(line)
            quote = field.find(b'"')
            if quote >= 0:
                raise _parse_error(start, lines.number, column + quote, BARE_QUOTE)
            fields.append(field)
            if comma < 0:
                break
            line = line[comma + 1:]
            column += comma + 1
            continue
        # A quoted field: it may hold commas, doubled quotes and line breaks.
        line = line[1:]
        column += 1
        value = bytearray()
        while True:
            quote = line.find(b'"')
            if quote >= 0:
                value += line[:quote]
                line = line[quote + 1:]
                column += quote + 1
                if line.startswith(b'"'):
                    value += b'"'
                    line = line[1:]
                    column += 1
                elif line.startswith(b","):
                    line = line[1:]
                    column += 1
                    fields.append(bytes(value))
                    break
                elif line in (b"", b"\n"):
                    fields.append(bytes(value))
                    return [f.decode("utf-8", "surrogateescape") for f in fields]
                else:
                    raise _parse_error(start, lines.number, column - 1, EXTRANEOUS_QUOTE)
            elif line:
                value += line
                column += len(line)
                line = lines.next() or b""
                if line:
                    position_line += 1
                    column = 1
            else:
                raise _parse_error(start, position_line, column, EXTRANEOUS_QUOTE)
    return [f.decode("utf-8", "surrogateescape") for f in fields]


def read_slice(text: str) -> list[str]:
    """pflag's ``readAsCSV``: an empty value is an empty list, anything else one CSV record."""
    return [] if text == "" else read_record(text)
