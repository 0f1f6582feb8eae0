"""Placement constraints as swarmkit parses and matches them (manager/constraint).

``node.labels.zone==x``: a key, ``==`` or ``!=``, a value. Parsing checks only the shape, so
``foo==bar`` and ``node.role==boss`` are accepted and match no node, as in Docker (the task
stays pending: "scheduling constraints not satisfied"). Values compare case-insensitively,
label names exactly.

Go's regular expressions differ from Python's in ways that matter here, so the patterns are
spelled out: ``(?i)[a-z]`` in Go also matches "ſ" (U+017F) and "K" (U+212A, Kelvin), which
fold to s and k, but not Python's extra "İ" and "ı"; ``\\s`` is ``[\\t\\n\\f\\r ]``; ``$`` is
the end of the text (Python's also matches before a final newline).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from swarmd import gostr

OPERATORS: Final = ("==", "!=")
NODE_LABEL_PREFIX: Final = "node.labels."
ENGINE_LABEL_PREFIX: Final = "engine.labels."

_LETTERS = "a-zA-Z\u017f\u212a"
_KEY = re.compile(f"[{_LETTERS}_][{_LETTERS}0-9\\-_.]+")
_VALUE = re.compile(f"[{_LETTERS}0-9:\\-_\\t\\n\\f\\r \\.\\*\\(\\)\\?\\+\\[\\]\\\\\\^\\$\\|/]+")


class ConstraintError(ValueError):
    """A constraint that does not parse; str() is swarmkit's text."""


@dataclass(frozen=True)
class Constraint:
    key: str
    operator: str   # == | !=
    exp: str

    def match(self, *whats: str) -> bool:
        """Equal (==) or unequal (!=) to any of ``whats``, whatever the case."""
        found = any(gostr.equal_fold(self.exp, what) for what in whats)
        return found if self.operator == "==" else not found


def parse(exprs: Iterable[str]) -> list[Constraint]:
    """swarmkit's ``constraint.Parse``: the first operator found splits the text once."""
    parsed: list[Constraint] = []
    for expr in exprs:
        for op in OPERATORS:
            if op not in expr:
                continue
            key, _, value = expr.partition(op)
            key = gostr.trim_space(key)
            if not _KEY.fullmatch(key):
                raise ConstraintError(f"key '{key}' is invalid")
            value = gostr.trim_space(value)
            if not _VALUE.fullmatch(value):
                raise ConstraintError(f"value '{value}' is invalid")
            parsed.append(Constraint(key, op, value))
            break
        else:
            raise ConstraintError(f"constraint expected one operator from {', '.join(OPERATORS)}")
    return parsed


def node_matches(constraints: Iterable[Constraint], node: Mapping[str, Any]) -> bool:
    """swarmkit's ``constraint.NodeMatches`` over a store node: every constraint holds."""
    for c in constraints:
        if not _holds(c, node):
            return False
    return True


def _holds(c: Constraint, node: Mapping[str, Any]) -> bool:
    key = c.key
    if gostr.equal_fold(key, "node.id"):
        return c.match(str(node.get("id", "")))
    if gostr.equal_fold(key, "node.hostname"):
        return c.match(str(node.get("hostname", "")))   # no hostname: as an empty one
    if gostr.equal_fold(key, "node.ip"):
        return _ip_holds(c, str(node.get("addr", "")))
    if gostr.equal_fold(key, "node.role"):
        return c.match(str(node.get("role", "")))
    if gostr.equal_fold(key, "node.platform.os"):
        return c.match(str(node.get("os", "")))
    if gostr.equal_fold(key, "node.platform.arch"):
        return c.match(str(node.get("architecture", "")))
    label = _label(key, NODE_LABEL_PREFIX)
    if label is not None:
        return c.match(str((node.get("labels") or {}).get(label, "")))
    label = _label(key, ENGINE_LABEL_PREFIX)
    if label is not None:
        return c.match(str((node.get("engine_labels") or {}).get(label, "")))
    return False   # not a key swarmkit knows: matches no node


def _label(key: str, prefix: str) -> str | None:
    """The label name after ``prefix`` (any case). Go slices bytes, so the prefix is compared
    on the UTF-8 bytes: a key whose first bytes cut a character matches no prefix."""
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) <= len(prefix):
        return None
    head = raw[:len(prefix)].decode("utf-8", "replace")
    if not gostr.equal_fold(head, prefix):
        return None
    return raw[len(prefix):].decode("utf-8", "replace")


def _ip_holds(c: Constraint, addr: str) -> bool:
    """``node.ip``: one address (``==`` equal), or a CIDR block (``==`` inside); anything
    else matches no node."""
    node_ip = _parse_ip(addr)
    want = _parse_ip(c.exp)
    if want is not None:
        equal = node_ip is not None and node_ip == want
        return equal if c.operator == "==" else not equal
    network = _parse_cidr(c.exp)
    if network is None:
        return False
    within = node_ip is not None and node_ip.version == network.version and node_ip in network
    return within if c.operator == "==" else not within


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_ip(text: str) -> IP | None:
    """Go's ``net.ParseIP`` (no zones; an IPv4-mapped IPv6 address is the IPv4 address)."""
    if "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    address, slash, bits = text.partition("/")
    if not slash or not bits.isascii() or not bits.isdigit() or "%" in address:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
