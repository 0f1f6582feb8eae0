"""Request IDs that make a forwarded write safe to retry.

A manager that forwards a control call to the leader cannot tell, when the connection fails
mid-call, whether the leader committed the write. It retries with the same request ID, and the
leader tags each write that call proposes with ``<request ID>:<n>`` (the n-th proposal of the
call). The state machine remembers recent tags with their results, so a retried write that had
committed returns its first result instead of being applied twice.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

MAX_LENGTH = 64
_VALID = re.compile(r"[a-z0-9]{1,64}")
_current: ContextVar[tuple[str, itertools.count[int]] | None] = ContextVar("request_id", default=None)


@contextmanager
def scope(request_id: str | None) -> Iterator[None]:
    """Tag the writes proposed inside the block (a malformed ID tags nothing)."""
    valid = request_id if request_id and _VALID.fullmatch(request_id) else None
    token = _current.set((valid, itertools.count(1)) if valid else None)
    try:
        yield
    finally:
        _current.reset(token)


def next_tag() -> str | None:
    """The tag of the next write of the current call, or None outside a forwarded call."""
    current = _current.get()
    if current is None:
        return None
    request_id, counter = current
    return f"{request_id}:{next(counter)}"
