"""Go's ``strconv`` as Docker's flag parsing (pflag) uses it: quoting and integer parsing; and
the few ``strings`` functions whose Unicode rules differ from Python's (trimming, folding).

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


# unicode.IsSpace: Latin-1's spaces, then the White_Space property. Python's str.strip() also
# strips U+001C..U+001F, which Go keeps.
_GO_SPACE = ("\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
             "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def trim_space(text: str) -> str:
    """``strings.TrimSpace``."""
    return text.strip(_GO_SPACE)


def _simple_fold(ch: str) -> str:
    """One representative of ``ch``'s simple case-folding orbit (Go folds rune by rune, never
    one rune into two: "ß" does not equal "ss", but "ſ" equals "s" and "K" (Kelvin) "k")."""
    folded = ch.casefold()
    if len(folded) == 1:
        return folded
    lower = ch.lower()
    return lower if len(lower) == 1 else ch


def equal_fold(a: str, b: str) -> bool:
    """``strings.EqualFold``: equal under simple Unicode case folding."""
    return len(a) == len(b) and all(x == y or _simple_fold(x) == _simple_fold(y) for x, y in zip(a, b))
