"""Request IDs that make a forwarded write safe to retry.

A manager that forwards a control call to the leader cannot tell, when the connection fails
mid-call, whether the leader committed the write. It retries with the same request ID, and the
leader tags each write that call proposes with ``<request ID>:<n>`` (the n-th proposal of the
call). The state machine remembers recent tags with their results, so a retried write that had
committed returns its first result instead of being applied twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swarmd.store.state import State

MAX_LENGTH = 64
_VALID = re.compile(r"[a-z0-9]{1,64}")


class _Call:
    def __init__(self, request_id: str | None, leader_only: bool) -> None:
        self.request_id = request_id
        self.leader_only = leader_only
        self.proposals = 0  # writes proposed so far
        self.committed = False
        self.unconfirmed_reads = False


_current: ContextVar[_Call | None] = ContextVar("request_id", default=None)


@contextmanager
def scope(request_id: str | None, leader_only: bool = True) -> Iterator[None]:
    """A call being served: tag the writes proposed inside the block (a malformed ID tags
    nothing). ``leader_only``: the call may only be answered by the leader (never from a
    follower's copy of the state, should the leadership move while it runs)."""
    valid = request_id if request_id and _VALID.fullmatch(request_id) else None
    token = _current.set(_Call(valid, leader_only))
    try:
        yield
    finally:
        _current.reset(token)


def next_tag() -> str | None:
    """The tag of the next write of the current call, or None outside a forwarded call."""
    call = _current.get()
    if call is None or call.request_id is None:
        return None
    call.proposals += 1
    return f"{call.request_id}:{call.proposals}"


def next_write_committed(state: State) -> bool:
    """Whether the next write of the current call committed on an earlier try of the call (the
    forwarder lost the answer and asked again): ``state`` holds its first result. A write whose
    checks read the state must then skip them (they would refuse what it did) and be proposed
    as it is, to be answered with that result. ``state`` must be read as the call's other reads
    are (``Manager.read``), so that it holds every write committed before."""
    call = _current.get()
    if call is None or call.request_id is None:
        return False
    return f"{call.request_id}:{call.proposals + 1}" in state["requests"]


def committed() -> None:
    """A write of the current call committed on this leader."""
    call = _current.get()
    if call is not None:
        call.committed = True


def in_call() -> bool:
    return _current.get() is not None


def in_leader_only_call() -> bool:
    call = _current.get()
    return call is not None and call.leader_only


def read_in_call() -> bool:
    """Note a read of this leader's state by the current call; False outside a call (the read
    must then be confirmed at once)."""
    call = _current.get()
    if call is None:
        return False
    call.unconfirmed_reads = True
    return True


def needs_confirmation() -> bool:
    """Whether the current call must confirm this leader before it answers: it read the state
    and no write of it committed. A committed write confirms the call by itself: its linearization
    point can be that commit (a leader of a later term cannot have committed anything before it,
    and everything this leader applied by then is committed)."""
    call = _current.get()
    return call is not None and call.unconfirmed_reads and not call.committed
