"""How an op is refused: a failed result with a code and the text the user sees.

``apply`` never raises (module ``machine``); a handler raises ``OpError`` and the machine turns
it into ``{"ok": false, "code", "message"}``, plus ``"conflict": true`` when the refusal is a
race the proposer may retry with a new pick (a subnet or VXLAN ID another op took first).
"""

from __future__ import annotations

from typing import Any

Result = dict[str, Any]

OUT_OF_SEQUENCE = "rpc error: code = Unknown desc = update out of sequence"  # swarmkit's ErrSequenceConflict


class OpError(Exception):
    """Raised inside a handler to turn the op into a failed result."""

    def __init__(self, code: str, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.conflict = conflict


def require(cond: bool, code: str, message: str, *, conflict: bool = False) -> None:
    if not cond:
        raise OpError(code, message, conflict=conflict)


def failed(code: str, message: str, *, conflict: bool = False) -> Result:
    result: Result = {"ok": False, "code": code, "message": message}
    if conflict:
        result["conflict"] = True
    return result
