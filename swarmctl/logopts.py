"""``service logs``' ``--tail`` and ``--since`` values, as Docker reads them."""

from __future__ import annotations

import datetime
import re

from swarmctl.errors import CLIError
from swarmd.timeutil import parse_go_duration

_UNIX = re.compile(r"(\d{1,12})(?:\.(\d{1,9}))?")
# Docker's timetypes layouts, longest first; a time without a zone is the local time.
_LAYOUTS = ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H", "%Y-%m-%d")


def parse_tail(value: str) -> int:
    """``all`` (or a negative number): -1; otherwise the number of lines per task."""
    text = value.strip()
    if text in ("", "all"):
        return -1
    try:
        n = int(text, 10)
    except ValueError:
        raise CLIError(f'Error response from daemon: invalid value for "tail": "{value}" '
                       "is not a number or \"all\"") from None
    return n if n >= 0 else -1


def parse_since(value: str, now_ns: int) -> int:
    """A time (RFC 3339, a date, or Unix seconds) or a duration before now, in ns; 0: all."""
    text = value.strip()
    if not text:
        return 0
    try:
        return max(1, now_ns - parse_go_duration(text))
    except ValueError:
        pass
    if m := _UNIX.fullmatch(text):
        return int(m.group(1)) * 10**9 + int((m.group(2) or "0").ljust(9, "0"))
    candidate = re.sub(r"Z$", "+00:00", text)
    candidate = re.sub(r"(\.\d{6})\d+", r"\1", candidate)  # Python keeps microseconds
    for layout in _LAYOUTS:
        try:
            parsed = datetime.datetime.strptime(candidate, layout)
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.astimezone()
        return max(1, int(parsed.timestamp() * 1_000_000) * 1000)
    raise CLIError(f'Error response from daemon: invalid value for "since": failed to parse value as time '
                   f'or duration: "{value}"')
