"""Go's ``strconv`` as Docker's flag parsing (pflag) uses it: quoting and integer parsing.

Flag errors are printed with Go's texts, and any value a user can type (non-ASCII digits,
underscores, control characters, surrogate-escaped bytes from argv) must give one of those
texts, never a Python exception. Python's ``int()`` accepts whitespace, ``_`` anywhere and
every Unicode digit, so it is not used.
"""

from __future__ import annotations

_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def quote(text: str) -> str:
    """``strconv.Quote`` (what ``%q`` prints): one line whatever the text holds.

    Surrogate-escaped bytes (argv that was not UTF-8) print as ``\\xNN``, as Go prints the
    invalid bytes themselves.
    """
    out = ['"']
    for ch in text:
        cp = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0xDC80 <= cp <= 0xDCFF:
            out.append(f"\\x{cp - 0xDC00:02x}")
        elif 0xD800 <= cp <= 0xDFFF:
            out.append("\\ufffd")  # a lone surrogate is not UTF-8: Go sees U+FFFD
        elif ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif cp < 0x20 or cp == 0x7F:
            out.append(f"\\x{cp:02x}")
        elif cp < 0x10000:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


class NumError(ValueError):
    """``strconv.NumError``: str() is Go's text, e.g. ``strconv.ParseUint: parsing "x": invalid syntax``."""

    def __init__(self, func: str, num: str, why: str) -> None:
        super().__init__(f"strconv.{func}: parsing {quote(num)}: {why}")
        self.why = why


SYNTAX = "invalid syntax"
RANGE = "value out of range"


def _underscore_ok(s: str) -> bool:
    """Go's ``underscoreOK``: ``_`` only between digits (or right after a base prefix)."""
    saw = "^"
    i = 0
    if s[:1] in ("+", "-"):
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        i, saw, hexa = 2, "0", s[1].lower() == "x"
    while i < len(s):
        c = s[i]
        if "0" <= c <= "9" or (hexa and "a" <= c.lower() <= "f"):
            saw = "0"
        elif c == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
        i += 1
    return saw != "_"


def parse_uint(s: str, bits: int = 64) -> int:
    """``strconv.ParseUint(s, 0, bits)``: decimal, ``0x``/``0o``/``0b``/leading-``0`` octal, ``_``
    separators. Raises NumError."""
    func = "ParseUint"
    if not s:
        raise NumError(func, s, SYNTAX)
    s0 = s
    base = 10
    if s[0] == "0":
        if len(s) >= 3 and s[1].lower() in "box":
            base = {"b": 2, "o": 8, "x": 16}[s[1].lower()]
            s = s[2:]
        else:
            base, s = 8, s[1:]
    max_val = (1 << bits) - 1
    underscores = False
    n = 0
    for c in s:
        if c == "_":
            underscores = True
            continue
        if "0" <= c <= "9":
            d = ord(c) - ord("0")
        elif c.isascii() and "a" <= c.lower() <= "z":
            d = ord(c.lower()) - ord("a") + 10
        else:
            raise NumError(func, s0, SYNTAX)
        if d >= base:
            raise NumError(func, s0, SYNTAX)
        n = n * base + d
        if n > max_val:  # Go stops at the first overflow, before looking further
            raise NumError(func, s0, RANGE)
    if underscores and not _underscore_ok(s0):
        raise NumError(func, s0, SYNTAX)
    return n


def parse_int(s: str, bits: int = 64) -> int:
    """``strconv.ParseInt(s, 0, bits)``: an optional sign, then as ``parse_uint``."""
    func = "ParseInt"
    if not s:
        raise NumError(func, s, SYNTAX)
    neg = s[0] == "-"
    body = s[1:] if s[0] in "+-" else s
    try:
        un = parse_uint(body, bits)
    except NumError as e:
        if e.why != RANGE:
            raise NumError(func, s, e.why) from None
        un = 1 << bits
    cutoff = 1 << (bits - 1)
    if (not neg and un >= cutoff) or (neg and un > cutoff):
        raise NumError(func, s, RANGE)
    return -un if neg else un
