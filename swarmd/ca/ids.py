"""Random object IDs in swarmkit's format (``identity.NewID``).

IDs are user-visible (node ls, cluster ID in certificates), so they must look exactly like
Docker's: 25 lowercase base-36 characters.
"""

from __future__ import annotations

import secrets

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def b36(n: int) -> str:
    """Render a non-negative integer like Go's ``big.Int.Text(36)`` (lowercase, no padding)."""
    if n < 0:
        raise ValueError("b36 needs a non-negative integer")
    if n == 0:
        return "0"
    digits: list[str] = []
    while n:
        n, r = divmod(n, 36)
        digits.append(_B36[r])
    return "".join(reversed(digits))


def new_id() -> str:
    """Return a fresh 25-char ID; setting the top bit fixes the base-36 length at 27 chars,
    so slicing [1:26] always yields 25 uniformly random-looking characters."""
    raw = bytearray(secrets.token_bytes(17))
    raw[0] |= 0x80
    return b36(int.from_bytes(raw, "big"))[1:26]
