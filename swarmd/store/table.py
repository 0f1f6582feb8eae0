"""A table of objects by ID, with indexes, and the drafts one op writes on.

A write must cost what it changes, not the size of the table: an op does not copy the table
it works on. It gets a ``TableDraft``, an overlay that records the objects the op sets or removes
beside the committed rows and answers reads through both. When the op succeeds the machine
commits the draft into the table in place (under the state lock, so no reader sees half of
it); when it fails the draft is dropped and the table was never touched.

Indexes answer the lookups ``apply`` needs without a scan (a node by its key, a network by its
name, its subnets, its VXLAN IDs). They are kept by the table on commit, and a draft's lookups
see the draft's own changes too.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Hashable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T", bound=Mapping[str, Any])
D = TypeVar("D")


class _Removed:
    def __repr__(self) -> str:
        return "REMOVED"


REMOVED = _Removed()  # a draft's mark for an object the op removed


class Index(Generic[T]):
    """Exact lookups: each object files under the keys ``keys(object)`` gives (none, one or
    several); a lookup gives the IDs filed under one key."""

    def __init__(self, keys: Callable[[T], Iterable[Hashable]]) -> None:
        self.keys = keys
        self._ids: dict[Hashable, set[str]] = {}
        self._keys_of: dict[str, tuple[Hashable, ...]] = {}

    def fresh(self) -> Index[T]:
        """An empty index of the same kind (for another table)."""
        return type(self)(self.keys)

    def file(self, obj: T) -> tuple[Hashable, ...]:
        """The keys ``obj`` files under, once each and checked, so that filing them cannot fail
        later (an unhashable key fails here)."""
        return tuple(dict.fromkeys(self.keys(obj)))

    def put(self, key: str, keys: tuple[Hashable, ...]) -> None:
        self.discard(key)
        if keys:
            self._keys_of[key] = keys
            for k in keys:
                self._ids.setdefault(k, set()).add(key)

    def discard(self, key: str) -> None:
        for k in self._keys_of.pop(key, ()):
            ids = self._ids[k]
            ids.discard(key)
            if not ids:
                del self._ids[k]

    def find(self, query: Hashable) -> Iterable[str]:
        return self._ids.get(query, ())

    def matches(self, obj: T, query: Hashable) -> bool:
        return query in self.keys(obj)


class RangeIndex(Index[T]):
    """Objects filed under address blocks ``(first, last)``; a lookup gives the IDs whose
    blocks overlap the one asked for. Blocks are IPv4 CIDR blocks (aligned, a power of two
    long, at most 2**32): an overlapping block then either starts inside the query or contains
    its first address, so a lookup is one bisection plus one probe per shorter prefix."""

    def __init__(self, keys: Callable[[T], Iterable[Hashable]]) -> None:
        super().__init__(keys)
        self._starts: list[tuple[int, int, str]] = []  # (first, last, ID), sorted

    def file(self, obj: T) -> tuple[Hashable, ...]:
        keys = super().file(obj)
        for k in keys:
            _range(k)
        return keys

    def put(self, key: str, keys: tuple[Hashable, ...]) -> None:
        super().put(key, keys)
        for first, last in self._ranges(keys):
            insort(self._starts, (first, last, key))

    def discard(self, key: str) -> None:
        for first, last in self._ranges(self._keys_of.get(key, ())):
            i = bisect_left(self._starts, (first, last, key))
            if i < len(self._starts) and self._starts[i] == (first, last, key):
                del self._starts[i]
        super().discard(key)

    def find(self, query: Hashable) -> Iterable[str]:
        first, last = _range(query)
        found: set[str] = set()
        i = bisect_left(self._starts, (first, -1, ""))
        while i < len(self._starts) and self._starts[i][0] <= last:
            found.add(self._starts[i][2])
            i += 1
        size = 2
        while size <= 1 << 32:  # the blocks that start before ``first`` and contain it
            start = first - first % size
            if start < first:
                found.update(self._ids.get((start, start + size - 1), ()))
            size <<= 1
        return found

    def matches(self, obj: T, query: Hashable) -> bool:
        first, last = _range(query)
        return any(a <= last and first <= b for a, b in self._ranges(tuple(self.keys(obj))))

    @staticmethod
    def _ranges(keys: Iterable[Hashable]) -> Iterator[tuple[int, int]]:
        for k in keys:
            yield _range(k)


def _range(key: Hashable) -> tuple[int, int]:
    if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(x, int) for x in key)):
        raise TypeError(f"not a range: {key!r}")
    return key[0], key[1]


J = TypeVar("J")


def copy_json(obj: J) -> J:
    """A deep copy of JSON-shaped data (dicts, lists, scalars), several times quicker than
    ``copy.deepcopy``, which must track shared references JSON cannot have."""
    if isinstance(obj, dict):
        return {k: copy_json(v) for k, v in obj.items()}  # type: ignore[return-value]
    if isinstance(obj, list):
        return [copy_json(v) for v in obj]  # type: ignore[return-value]
    return obj


class Table(Mapping[str, T]):
    """Committed objects by ID. Read it as a mapping (readers must not change what they get);
    write it only through a draft."""

    def __init__(self, rows: dict[str, T] | None = None, indexes: Mapping[str, Index[T]] | None = None) -> None:
        self._rows: dict[str, T] = rows if rows is not None else {}
        self._indexes: dict[str, Index[T]] = {name: index.fresh() for name, index in (indexes or {}).items()}
        for key, obj in self._rows.items():
            for index in self._indexes.values():
                index.put(key, index.file(obj))

    # Mapping, answered by the dict itself (the generic mixins would go through __getitem__).
    def __getitem__(self, key: str) -> T:
        return self._rows[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    @overload
    def get(self, key: str) -> T | None: ...
    @overload
    def get(self, key: str, default: T | D) -> T | D: ...

    def get(self, key: str, default: Any = None) -> Any:
        return self._rows.get(key, default)

    def keys(self) -> KeysView[str]:
        return self._rows.keys()

    def values(self) -> ValuesView[T]:
        return self._rows.values()

    def items(self) -> ItemsView[str, T]:
        return self._rows.items()

    def __repr__(self) -> str:
        return f"Table({self._rows!r})"

    def lookup(self, index: str, query: Hashable) -> list[str]:
        """The IDs ``index`` files under ``query``, sorted (the same on every replica)."""
        return sorted(self._indexes[index].find(query))

    def index(self, name: str) -> Index[T]:
        return self._indexes[name]

    def draft(self) -> TableDraft[T]:
        return TableDraft(self)

    def commit(self, draft: TableDraft[T]) -> None:
        """Take a prepared draft's changes in (cannot fail: everything that could was done in
        ``TableDraft.prepare``)."""
        for key, obj in draft.changes.items():
            if obj is REMOVED:
                self._rows.pop(key, None)
                for index in self._indexes.values():
                    index.discard(key)
            else:
                self._rows[key] = obj  # type: ignore[assignment]
                for name, index in self._indexes.items():
                    index.put(key, draft.prepared[name][key])
        draft.changes = {}

    def to_json(self) -> dict[str, T]:
        return copy_json(self._rows)

    def shared_rows(self) -> dict[str, T]:
        """The committed objects themselves, in a new dict (to serialise, never to change)."""
        return dict(self._rows)


class TableDraft(Mapping[str, T]):
    """One op's view of a table: its own changes over the committed rows."""

    def __init__(self, base: Table[T]) -> None:
        self._base = base
        self.changes: dict[str, T | _Removed] = {}
        self.prepared: dict[str, dict[str, tuple[Hashable, ...]]] = {}

    def __getitem__(self, key: str) -> T:
        obj = self.changes.get(key, None)
        if obj is None:
            return self._base[key]
        if obj is REMOVED:
            raise KeyError(key)
        return obj  # type: ignore[return-value]

    @overload
    def get(self, key: str) -> T | None: ...
    @overload
    def get(self, key: str, default: T | D) -> T | D: ...

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        if key in self.changes:
            return self.changes[key] is not REMOVED
        return key in self._base

    def __iter__(self) -> Iterator[str]:
        for key in self._base:
            if self.changes.get(key) is not REMOVED:
                yield key
        for key, obj in self.changes.items():
            if obj is not REMOVED and key not in self._base:
                yield key

    def __len__(self) -> int:
        n = len(self._base)
        for key, obj in self.changes.items():
            if key in self._base:
                n -= obj is REMOVED
            else:
                n += obj is not REMOVED
        return n

    def __setitem__(self, key: str, obj: T) -> None:
        self.changes[key] = obj

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.changes[key] = REMOVED

    def edit(self, key: str) -> T:
        """This op's own copy of an object, safe to change (a copy is made once per op: the
        committed object is never changed in place)."""
        obj = self.changes.get(key)
        if obj is None or obj is REMOVED:
            obj = copy_json(self[key])
            self.changes[key] = obj
        return obj  # type: ignore[return-value]

    def committed(self, key: str) -> T | None:
        """The object as it was before this op."""
        return self._base.get(key)

    def lookup(self, index: str, query: Hashable) -> list[str]:
        """``Table.lookup`` as this op sees the table."""
        idx = self._base.index(index)
        found = {key for key in idx.find(query) if key not in self.changes}
        for key, obj in self.changes.items():
            if obj is not REMOVED and idx.matches(obj, query):  # type: ignore[arg-type]
                found.add(key)
        return sorted(found)

    def prepare(self) -> None:
        """Compute the index keys of every changed object (an object an index cannot file
        fails the op here, before anything is committed)."""
        self.prepared = {name: {key: index.file(obj) for key, obj in self.changes.items()  # type: ignore[arg-type]
                                if obj is not REMOVED}
                         for name, index in self._base._indexes.items()}
