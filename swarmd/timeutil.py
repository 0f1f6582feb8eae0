"""Timestamps and durations in the formats Docker prints."""

from __future__ import annotations

import calendar
import re
import time
from datetime import datetime, timezone


def now_rfc3339() -> str:
    """UTC with nanoseconds, like Go's time.RFC3339Nano: 2026-11-27T04:41:45.616309707Z."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                      r"(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def parse_rfc3339_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time ("2026-11-27T04:41:45.616309707Z"), or
    None when it is not one (the store's timestamps come from other hosts)."""
    m = _RFC3339.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        base = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        return None
    offset = 0
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60 * (1 if m.group(9) == "+" else -1)
    secs = calendar.timegm(base.utctimetuple()) - offset
    return secs * 1_000_000_000 + int((m.group(7) or "").ljust(9, "0"))


_UNITS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
          "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_MAX_NS = 1 << 63  # a Duration is an int64; the magnitude may reach 2^63 only when negative


def _time_quote(text: str) -> str:
    """Go's ``time.quote``: non-ASCII and control characters as their UTF-8 bytes in ``\\xNN``."""
    out = ['"']
    for ch in text:
        if ch < " " or ord(ch) >= 0x80:
            raw = ch.encode("utf-8", "surrogateescape") if 0xDC80 <= ord(ch) <= 0xDCFF \
                else ch.encode("utf-8", "replace")
            out.extend(f"\\x{b:02x}" for b in raw)
        else:
            out.append("\\" + ch if ch in '"\\' else ch)
    out.append('"')
    return "".join(out)


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"  # not str.isdigit(): Go takes ASCII digits only


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration``, returning nanoseconds ("2160h0m0s", "1.5h", "-5s").

    Integer arithmetic as in Go, so every int64 duration parses exactly (a float sum loses
    nanoseconds past 2^53). Raises ValueError with Go's texts.
    """
    def invalid() -> ValueError:
        return ValueError(f"time: invalid duration {_time_quote(text)}")

    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid()
    total = 0
    while s:
        if not (s[0] == "." or _is_digit(s[0])):
            raise invalid()
        i = 0
        while i < len(s) and _is_digit(s[i]):
            i += 1
        pre = i > 0
        digits = s[:i].lstrip("0")
        if len(digits) > 19 or (digits and int(digits) > _MAX_NS):  # Go's leadingInt overflow
            raise invalid()
        whole = int(digits) if digits else 0
        s = s[i:]
        frac, scale, post = 0, 1, False
        if s[:1] == ".":
            s = s[1:]
            i = 0
            overflow = False  # Go's leadingFraction stops gaining precision, without failing
            while i < len(s) and _is_digit(s[i]):
                if not overflow:
                    more = frac * 10 + ord(s[i]) - ord("0")
                    if frac > (_MAX_NS - 1) // 10 or more > _MAX_NS:
                        overflow = True
                    else:
                        frac, scale = more, scale * 10
                i += 1
            post = i > 0
            s = s[i:]
        if not pre and not post:
            raise invalid()
        i = 0
        while i < len(s) and not (s[i] == "." or _is_digit(s[i])):
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {_time_quote(text)}")
        unit_text, s = s[:i], s[i:]
        unit = _UNITS.get(unit_text)
        if unit is None:
            raise ValueError(f"time: unknown unit {_time_quote(unit_text)} in duration {_time_quote(text)}")
        if whole > _MAX_NS // unit:
            raise invalid()
        value = whole * unit
        if frac:
            value += int(float(frac) * (float(unit) / scale))  # Go's float64 step, for equal rounding
            if value > _MAX_NS:
                raise invalid()
        total += value
        if total > _MAX_NS:
            raise invalid()
    if neg:
        return -total
    if total > _MAX_NS - 1:
        raise invalid()
    return total


def _frac(value: int, digits: int) -> tuple[str, int]:
    """Go's ``fmtFrac``: the last ``digits`` decimals of ``value`` without trailing zeros (and
    without the point when they are all zero), and what is left of ``value``."""
    value, rest = divmod(value, 10**digits)
    text = f"{rest:0{digits}d}".rstrip("0")
    return ("." + text if text else ""), value


def format_go_duration(ns: int) -> str:
    """Go's ``Duration.String()``: "2160h0m0s", "1.5s", "1.2ms", "0s"."""
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u == 0:
        return "0s"
    if u < 1_000_000_000:
        if u < 1_000:
            return f"{sign}{u}ns"
        unit, digits = ("\u00b5s", 3) if u < 1_000_000 else ("ms", 6)
        frac, whole = _frac(u, digits)
        return f"{sign}{whole}{frac}{unit}"
    frac, secs = _frac(u, 9)
    minutes, secs = divmod(secs, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}{frac}s"
    if minutes:
        return f"{sign}{minutes}m{secs}{frac}s"
    return f"{sign}{secs}{frac}s"


def human_duration(ns: int) -> str:
    """go-units HumanDuration, used by docker info ("5 seconds", "3 months")."""
    seconds = int(ns / 1e9)
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = int(ns / 60e9)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(ns / 3600e9 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(ns / 3600e9) // 24 // 365} years"
