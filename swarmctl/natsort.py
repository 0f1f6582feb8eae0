"""Docker's natural order (``github.com/fvbommel/sortorder.NaturalLess``) for ``node ls`` and
``network ls``: ``network-1, network-2, network-10``.

A port of the Go function rather than a key of ``int`` and ``str`` pieces: Go looks at UTF-8
bytes and ASCII digits only, breaks ties between equal numbers on their leading zeros
(``1`` before ``01``), and never fails, whatever a host or network name holds (Python's
``str.isdigit`` takes ``²``, which ``int()`` then refuses).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def _is_digit(byte: int) -> bool:
    return 0x30 <= byte <= 0x39


def _skip(data: bytes, index: int, wanted: Callable[[int], bool]) -> int:
    while index < len(data) and wanted(data[index]):
        index += 1
    return index


def natural_less(left: str, right: str) -> bool:
    """``sortorder.NaturalLess``: whether ``left`` sorts before ``right``."""
    a = left.encode("utf-8", "surrogateescape")
    b = right.encode("utf-8", "surrogateescape")
    i = j = 0
    while i < len(a) and j < len(b):
        digit_a, digit_b = _is_digit(a[i]), _is_digit(b[j])
        if digit_a != digit_b:  # digits before other characters
            return digit_a
        if not digit_a:
            if a[i] != b[j]:
                return a[i] < b[j]
            i += 1
            j += 1
            continue
        nonzero_a = _skip(a, i, lambda c: c == 0x30)
        nonzero_b = _skip(b, j, lambda c: c == 0x30)
        i = _skip(a, nonzero_a, _is_digit)
        j = _skip(b, nonzero_b, _is_digit)
        if i - nonzero_a != j - nonzero_b:  # more significant digits: a larger number
            return i - nonzero_a < j - nonzero_b
        if a[nonzero_a:i] != b[nonzero_b:j]:
            return a[nonzero_a:i] < b[nonzero_b:j]
        if nonzero_a != nonzero_b:  # the same number: fewer leading zeros first
            return nonzero_a < nonzero_b
    return len(a) < len(b)


def _compare(left: str, right: str) -> int:
    if natural_less(left, right):
        return -1
    return 1 if natural_less(right, left) else 0


def sort_naturally(items: Iterable[T], name: Callable[[T], str], tie: Callable[[T], str]) -> list[T]:
    """``items`` in natural order of ``name``; ``tie`` orders equal names (Go's sort is not
    stable there, so any fixed order is Docker's order)."""
    def compare(x: T, y: T) -> int:
        by_name = _compare(name(x), name(y))
        return by_name or (tie(x) > tie(y)) - (tie(x) < tie(y))
    return sorted(items, key=functools.cmp_to_key(compare))
