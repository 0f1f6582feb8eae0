"""Token buckets: a burst allowed at once, then a steady rate.

Callers at the edge of the manager (joiners, nodes' status reports) each get a bucket under a
key; the set of buckets is bounded, so many keys cannot grow memory without limit. Time is
passed in (``time.monotonic()`` in the daemon), which keeps the arithmetic testable.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


def source_of(ip: str) -> str:
    """The unit a limit applies to: an IPv4 address, or the /64 of an IPv6 one (written
    ``2001:db8:1:2::/64``, which the kernel filter understands)."""
    if ":" not in ip:
        return ip  # IPv4 as the kernel writes it
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return f"{ipaddress.IPv6Network((int(addr) >> 64 << 64, 64))}"
    return ip


@dataclass(frozen=True)
class Limit:
    burst: float        # tokens a fresh bucket holds
    per_second: float   # tokens added back each second, up to ``burst``

    def describe(self) -> str:
        return f"{self.burst:g} at once, then {self.per_second:g}/s"


class TokenBucket:
    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self._tokens = limit.burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.limit.burst, self._tokens + (now - self._at) * self.limit.per_second)
        self._at = max(self._at, now)

    def available(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def take(self, now: float) -> bool:
        """One token if there is one."""
        self._refill(now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def give_back(self) -> None:
        """Undo a ``take`` whose action did not happen after all."""
        self._tokens = min(self.limit.burst, self._tokens + 1.0)

    def wait(self, now: float) -> float:
        """Seconds until the next token."""
        self._refill(now)
        if self._tokens >= 1.0:
            return 0.0
        if self.limit.per_second <= 0:
            return float("inf")
        return (1.0 - self._tokens) / self.limit.per_second

    def full(self, now: float) -> bool:
        return self.available(now) >= self.limit.burst


class Buckets:
    """One bucket per key, at most ``max_keys`` of them.

    A full bucket is the same as no bucket, so full ones are dropped first when room is needed;
    if every bucket is in use, the least recently used one goes (its key starts afresh, which
    only ever lets a caller through sooner, never refuses one).
    """

    def __init__(self, limit: Limit, max_keys: int) -> None:
        self.limit = limit
        self._max = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: Hashable, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        if len(self._buckets) >= self._max:
            for old in [k for k, b in self._buckets.items() if b.full(now)]:
                del self._buckets[old]
            while len(self._buckets) >= self._max:
                self._buckets.popitem(last=False)
        bucket = self._buckets[key] = TokenBucket(self.limit, now)
        return bucket

    def take(self, key: Hashable, now: float) -> bool:
        with self._lock:
            return self._bucket(key, now).take(now)

    def give_back(self, key: Hashable) -> None:
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.give_back()

    def wait(self, key: Hashable, now: float) -> float:
        with self._lock:
            return self._bucket(key, now).wait(now)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._buckets.pop(key, None)
