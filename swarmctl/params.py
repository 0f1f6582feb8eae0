"""click parameter types that parse like Docker's flags and fail with Docker's texts."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Any

import click

from swarmctl import gocsv
from swarmctl.errors import FlagValueError as FlagValueError
from swarmd import gostr, netaddr
from swarmd.timeutil import format_go_duration, parse_go_duration


def _flag_name(param: click.Parameter | None) -> str:
    if param is None:
        return "?"
    longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0] if longs else (param.opts[0] if param.opts else str(param.name))


def fail(value: Any, param: click.Parameter | None, why: str) -> FlagValueError:
    """pflag's ``invalid argument %q for %q flag: %v``: one line whatever the value holds."""
    return FlagValueError(f"invalid argument {gostr.quote(str(value))} for "
                          f"{gostr.quote(_flag_name(param))} flag: {why}", param)


class Duration(click.ParamType[int]):
    """Go duration → nanoseconds ("2160h0m0s", "5s", "90m")."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_go_duration(str(value))
        except ValueError as e:
            raise fail(value, param, str(e)) from None


def duration_default(ns: int) -> str:
    return format_go_duration(ns)


class UInt(click.ParamType[int]):
    """pflag's uint/uint32/uint64: ``strconv.ParseUint(s, 0, bits)`` (so 0x10 and 0o17 work too)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.name = f"uint{bits}" if bits != 64 else "uint"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return gostr.parse_uint(str(value), self.bits)
        except gostr.NumError as e:
            raise fail(value, param, str(e)) from None


class Int(click.ParamType[int]):
    """pflag's int: ``strconv.ParseInt(s, 0, 64)``."""

    name = "int"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return gostr.parse_int(str(value), 64)
        except gostr.NumError as e:
            raise fail(value, param, str(e)) from None


class NodeAddr(click.ParamType[str]):
    """--listen-addr: Docker's ParseTCPAddr with default tcp://0.0.0.0:2377."""

    name = "node-addr"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return netaddr.normalize_listen_flag(str(value))
        except netaddr.ListenFlagError as e:
            raise FlagValueError(str(e), param) from None


def _is_go_cidr(text: str) -> bool:
    """Whether Go's ``net.ParseCIDR`` takes ``text``: an address without zone, ``/``, then a
    decimal prefix length that fits (Python's ``ip_network`` also takes netmasks, bare
    addresses and Unicode digits)."""
    addr, slash, bits = text.partition("/")
    if not slash or "%" in addr or not bits.isascii() or not bits.isdigit():
        return False
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return int(bits) <= ip.max_prefixlen


class IPNetList(click.ParamType[list[str]]):
    """--default-addr-pool: comma-separated CIDRs, repeatable (pflag's ipNetSlice)."""

    name = "ipNetSlice"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        text = str(value)
        for mark in "\"'`":  # pflag drops every quote character before reading the list
            text = text.replace(mark, "")
        try:  # ... and reads it as one CSV record (no record at all is an empty list)
            parts = gocsv.read_record(text)
        except gocsv.CSVError:  # without quotes only "EOF" is left
            return []
        out = []
        for part in parts:
            part = part.strip()
            if not _is_go_cidr(part):
                shown = part if part.isprintable() else gostr.quote(part)
                raise fail(value, param, f"invalid CIDR address: {shown}")
            out.append(part)
        return out


class StringSlice(click.ParamType[list[str]]):
    """pflag's stringSlice (``--subnet``, ``--gateway``): each value is one CSV record, so
    ``a,b`` is two values; repeated flags add up."""

    name = "strings"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        try:
            return gocsv.read_slice(str(value))
        except gocsv.CSVError as e:
            raise fail(value, param, str(e)) from None


class Label(click.ParamType[str]):
    """docker/cli's ``opts.ValidateLabel`` (``network create --label``): ``key[=value]``
    with a key that is neither empty nor holds a space or tab; the value is kept as typed."""

    name = "list"
    _BLANKS = " \t"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        key = text.partition("=")[0].lstrip(self._BLANKS)
        if not key:
            raise fail(value, param, f"invalid label '{text}': empty name")
        if any(blank in key for blank in self._BLANKS):
            raise fail(value, param, f"label '{key}' contains whitespaces")
        return text


_PEM_BLOCK = re.compile(rb"(?:\A|\n)-----BEGIN ([^\n]*)-----[ \t\r]*\n((?:.*?\n)?)-----END \1-----", re.S)


def _has_pem_block(data: bytes) -> bool:
    """Whether Go's ``pem.Decode`` finds a block: BEGIN and END lines of one type around
    base64 (after any ``Key: value`` headers)."""
    for match in _PEM_BLOCK.finditer(data):
        body = match.group(2)
        head, blank, rest = body.partition(b"\n\n")
        if blank and b":" in head:
            body = rest
        try:
            base64.b64decode(b"".join(body.split()), validate=True)
        except binascii.Error:
            continue
        return True
    return False


def _go_path_error(op: str, path: str, e: OSError) -> str:
    """Go's ``*PathError`` text: ``open /x: no such file or directory``."""
    why = e.strerror or str(e)
    return f"{op} {path}: {why[:1].lower()}{why[1:]}"


class PEMFile(click.ParamType[bytes]):
    """docker/cli's ``PEMFile`` (``ca --ca-cert``/``--ca-key``): the file is read while the
    flags are parsed, so a missing or non-PEM file is a flag error (exit 125)."""

    name = "pem-file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bytes:
        if isinstance(value, bytes):
            return value
        path = str(value)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except IsADirectoryError as e:  # Go opens a directory, then fails to read it
            raise fail(value, param, _go_path_error("read", path, e)) from None
        except OSError as e:
            raise fail(value, param, _go_path_error("open", path, e)) from None
        except ValueError:  # a NUL in the path
            raise fail(value, param, f"open {path}: invalid argument") from None
        if not _has_pem_block(data):
            raise fail(value, param, "file contents must be in PEM format")
        return data


class GoBool(click.ParamType[bool]):
    """``--autolock[=true|false]``: Go's strconv.ParseBool spellings."""

    name = "bool"
    _VALUES = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
               "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        if isinstance(value, bool):
            return value
        if str(value) not in self._VALUES:
            raise fail(value, param, f'strconv.ParseBool: parsing "{value}": invalid syntax')
        return self._VALUES[str(value)]


DURATION = Duration()
GO_BOOL = GoBool()
UINT32 = UInt(32)
UINT64 = UInt(64)
INT = Int()
NODE_ADDR = NodeAddr()
IPNET_LIST = IPNetList()
STRING_SLICE = StringSlice()
PEM_FILE = PEMFile()
LABEL = Label()
