"""Writing the leader components' decisions: ops cut into batches the store accepts
(``MAX_TASKS_PER_OP`` items each) and proposed together, so they share Raft entries.

An item refused by the store lost a race (its task changed since it was read): it is logged at
debug level and left to the next pass, which decides again from the state that won.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from swarmd.store.machine import encode_op
from swarmd.store.raft import StoreError
from swarmd.store.services import MAX_TASKS_PER_OP

if TYPE_CHECKING:
    from swarmd.manager.manager import Manager

log = logging.getLogger(__name__)

Op = tuple[str, dict[str, Any]]
_BATCHED = {"update_tasks": "updates", "create_tasks": "tasks", "remove_tasks": "ids"}


def chunked(ops: Sequence[Op]) -> list[Op]:
    """Each task op cut into ops of at most ``MAX_TASKS_PER_OP`` items, in order."""
    out: list[Op] = []
    for kind, fields in ops:
        key = _BATCHED.get(kind)
        items = fields.get(key) if key else None
        if key is None or not isinstance(items, list) or len(items) <= MAX_TASKS_PER_OP:
            out.append((kind, fields))
            continue
        for start in range(0, len(items), MAX_TASKS_PER_OP):
            out.append((kind, {**fields, key: items[start:start + MAX_TASKS_PER_OP]}))
    return out


def write(manager: Manager, ops: Sequence[Op], what: str) -> bool:
    """Propose ``ops`` in order (one ``propose_many``: later ops are applied after earlier
    ones); True when every op committed (some items may still have been refused)."""
    batch = chunked(ops)
    if not batch:
        return True
    try:
        outcomes = manager.store.propose_many([encode_op(kind, **fields) for kind, fields in batch], timeout=10.0)
    except StoreError as e:
        log.info("%s: the write did not commit: %s", what, e)
        return False
    committed = True
    for (kind, _), outcome in zip(batch, outcomes):
        if isinstance(outcome, Exception):
            log.info("%s: %s did not commit: %s", what, kind, outcome)
            committed = False
        elif not outcome.get("ok"):
            log.info("%s: %s refused: %s", what, kind, outcome.get("message"))
        elif outcome.get("refused"):
            log.debug("%s: %s items refused (raced): %s", what, kind, outcome["refused"])
    return committed
