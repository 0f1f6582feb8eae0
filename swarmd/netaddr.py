"""Listen / advertise / data-path address resolution, as Docker Engine does it.

A port of moby ``daemon/cluster/listen_addr.go`` + ``listen_addr_linux.go`` (and of the
CLI's ``opts.ParseTCPAddr`` for ``--listen-addr``) so that every accepted value, every
quirk and every error text matches real Docker (swarm-behaviour.md §5, transcripts §2-3).

IP handling follows Go's ``net.IP`` rather than Python's ``ipaddress`` conventions:
IPv4-mapped IPv6 counts as IPv4 (``To4``), zones are rejected, results are printed the way
``IP.String()`` prints them, and auto-detection uses ``IsGlobalUnicast`` (RFC 1918 counts
as global). Every resolver takes the interface list (``swarmd.ifaces.list_interfaces`` reads the
live system), so this module is pure: it imports nothing outside the standard library and the
project's leaf modules, and the CLI may import it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from swarmd.gostr import quote as _go_quote

__all__ = [
    "AddrError",
    "AutoDetectError",
    "DEFAULT_LISTEN_ADDR",
    "DEFAULT_PORT",
    "Interface",
    "ListenFlagError",
    "join_host_port",
    "local_addr",
    "normalize_listen_flag",
    "parse_tcp_addr",
    "resolve_advertise_addr",
    "resolve_data_path_addr",
    "resolve_listen_addr",
    "resolve_system_addr",
    "split_host_port",
]

DEFAULT_PORT = "2377"
DEFAULT_LISTEN_ADDR = "0.0.0.0:2377"

ERR_NO_IP = "could not find the system's IP address"
ERR_MUST_SPECIFY_LISTEN_ADDR = (
    "must specify a listening address because the address to advertise is not recognized as a "
    "system address, and a system's IP address to use could not be uniquely identified"
)
ERR_BAD_LISTEN_ADDR = "listen address must be an IP address or network interface (with optional port number)"
ERR_BAD_ADVERTISE_ADDR = (
    "advertise address must be a non-zero IP address or network interface (with optional port number)"
)
ERR_BAD_DATA_PATH_ADDR = (
    "data path address must be a non-zero IP address or network interface (without a port number)"
)
ERR_BAD_DEFAULT_ADVERTISE_ADDR = (
    "default advertise address must be a non-zero IP address or network interface (without a port number)"
)
# Docker's CLI appends this to the two auto-detection failures; our daemon is the CLI too.
ADVERTISE_HINT = " - specify one with --advertise-addr"

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddrError(Exception):
    """A resolution failure; str(e) is the exact Docker text (no 'Error response from daemon: ' prefix)."""


class ListenFlagError(AddrError):
    """Client-side parse failure of --listen-addr (Docker exits 125 for these)."""


class AutoDetectError(AddrError):
    """Auto-detection found zero or several candidates; str(e) carries Docker's CLI hint.

    ``daemon_message`` is the bare daemon text (what Docker's daemon itself reports).
    """

    def __init__(self, daemon_message: str) -> None:
        super().__init__(daemon_message + ADVERTISE_HINT)
        self.daemon_message = daemon_message


class _NoSuchInterface(Exception):
    """Internal: the name is not an interface, so the caller tries it as an IP (Go's errNoSuchInterface)."""


class _BadNetworkIdentifier(Exception):
    """Internal: neither interface nor acceptable IP; each caller maps it to its own text."""


@dataclass(frozen=True)
class Interface:
    """One network link as Docker's resolvers see it.

    ``is_device`` is netlink's link type ``"device"`` (no IFLA_INFO_KIND: physical NICs and
    ``lo``; not veth/bridge/vlan/tun...), which is what ``resolveSystemAddr`` filters on.
    ``addrs`` holds every IP address, IPv4 first then IPv6, in kernel order, IPv6 without
    a ``%zone``.
    """

    name: str
    up: bool
    loopback: bool
    is_device: bool
    addrs: tuple[str, ...]


# --------------------------------------------------------------------------- Go net.IP semantics


def _parse_ip(text: str) -> _IP | None:
    """Go's ``net.ParseIP``: no zones, no hostnames; IPv4-mapped IPv6 collapses to IPv4 (``To4``)."""
    if "%" in text:
        return None
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        pass
    try:
        v6 = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    mapped = v6.ipv4_mapped
    return mapped if mapped is not None else v6


def _ip_str(ip: _IP) -> str:
    """Go's ``IP.String()``: dotted IPv4, RFC 5952 IPv6 (Python's compressed form agrees)."""
    return str(ip)


def _is_unspecified(ip: _IP) -> bool:
    return ip.packed == bytes(len(ip.packed))


def _is_global_unicast(ip: _IP) -> bool:
    """Go's ``IsGlobalUnicast`` (not Python's ``is_global``): private and documentation ranges count."""
    b = ip.packed
    if isinstance(ip, ipaddress.IPv4Address):
        return not (
            b == b"\xff\xff\xff\xff"
            or b == bytes(4)
            or b[0] == 127
            or b[0] & 0xF0 == 0xE0
            or (b[0] == 169 and b[1] == 254)
        )
    return not (
        b == bytes(16)
        or b == bytes(15) + b"\x01"
        or b[0] == 0xFF
        or (b[0] == 0xFE and b[1] & 0xC0 == 0x80)
    )


def split_host_port(addr: str) -> tuple[str, str]:
    """Go's ``net.SplitHostPort``; raises ValueError with Go's message."""

    def fail(why: str) -> ValueError:
        return ValueError(f"address {addr}: {why}" if addr else why)

    i = addr.rfind(":")
    if i < 0:
        raise fail("missing port in address")
    j = k = 0
    if addr[0] == "[":
        end = addr.find("]")
        if end < 0:
            raise fail("missing ']' in address")
        if end + 1 == len(addr):
            raise fail("missing port in address")
        if end + 1 != i:
            if addr[end + 1] == ":":
                raise fail("too many colons in address")
            raise fail("missing port in address")
        host = addr[1:end]
        j, k = 1, end + 1
    else:
        host = addr[:i]
        if ":" in host:
            raise fail("too many colons in address")
    if "[" in addr[j:]:
        raise fail("unexpected '[' in address")
    if "]" in addr[k:]:
        raise fail("unexpected ']' in address")
    return host, addr[i + 1:]


def join_host_port(host: str, port: str) -> str:
    """Go's ``net.JoinHostPort``: brackets any host containing a colon (IPv6)."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def host_of(addr: str) -> str:
    """The host of ``host:port`` / ``[v6]:port`` / ``:port`` (empty), without brackets; lenient
    about the port text, which Docker stores verbatim for advertise addresses."""
    host, _, _ = addr.rpartition(":")
    return host.strip("[]")


# --------------------------------------------------------------------------- --listen-addr (CLI side)


class _UrlError(ValueError):
    """Internal: the inner error of Go's ``url.Parse`` (text without the ``parse "<url>": `` part)."""


_MODE_HOST, _MODE_ZONE, _MODE_PATH, _MODE_USER, _MODE_FRAGMENT = range(5)
_HOST_OK = frozenset(b"!$&'()*+,;=:[]<>\"-_.~")
_USERINFO_OK = frozenset("-._:~!$&'()*+,;=%@")


def _is_alnum(c: int) -> bool:
    return 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


def _host_should_escape(c: int) -> bool:
    """Go's ``shouldEscape(c, encodeHost)``."""
    return not (_is_alnum(c) or c in _HOST_OK)


def _is_hex(c: int) -> bool:
    return c in b"0123456789abcdefABCDEF"


def _unescape(text: str, mode: int) -> str:
    """Go's ``url.unescape`` for the modes ``ParseTCPAddr`` can reach."""
    s = text.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(s):
        c = s[i]
        if c == 0x25:  # '%'
            if i + 2 >= len(s) or not _is_hex(s[i + 1]) or not _is_hex(s[i + 2]):
                bad = s[i:i + 3].decode("utf-8", "surrogateescape")
                raise _UrlError(f"invalid URL escape {_go_quote(bad)}")
            esc = s[i:i + 3]
            if mode == _MODE_HOST and int(chr(s[i + 1]), 16) < 8 and esc != b"%25":
                raise _UrlError(f"invalid URL escape {_go_quote(esc.decode())}")
            if mode == _MODE_ZONE:
                v = int(esc[1:].decode(), 16)
                if esc != b"%25" and v != 0x20 and _host_should_escape(v):
                    raise _UrlError(f"invalid URL escape {_go_quote(esc.decode())}")
            i += 3
        else:
            if mode in (_MODE_HOST, _MODE_ZONE) and c < 0x80 and _host_should_escape(c):
                raise _UrlError(f"invalid character {_go_quote(chr(c))} in host name")
            i += 1
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i] == 0x25:
            out.append(int(s[i + 1:i + 3].decode(), 16))
            i += 3
        else:
            out.append(s[i])
            i += 1
    return bytes(out).decode("utf-8", "surrogateescape")


def _valid_optional_port(port: str) -> bool:
    return port == "" or (port[0] == ":" and all("0" <= ch <= "9" for ch in port[1:]))


def _parse_url_host(host: str) -> str:
    """Go's ``url.parseHost`` (Go 1.24, the toolchain of the docker 28.2.2 CLI)."""
    if host.startswith("["):
        i = host.rfind("]")
        if i < 0:
            raise _UrlError("missing ']' in host")
        colon_port = host[i + 1:]
        if not _valid_optional_port(colon_port):
            raise _UrlError(f"invalid port {_go_quote(colon_port)} after host")
        zone = host[:i].find("%25")
        if zone >= 0:
            return (_unescape(host[:zone], _MODE_HOST) + _unescape(host[zone:i], _MODE_ZONE)
                    + _unescape(host[i:], _MODE_HOST))
    else:
        i = host.rfind(":")
        if i != -1:
            colon_port = host[i:]
            if not _valid_optional_port(colon_port):
                raise _UrlError(f"invalid port {_go_quote(colon_port)} after host")
    return _unescape(host, _MODE_HOST)


def _parse_tcp_url(addr: str) -> tuple[str, str]:
    """Go's ``url.Parse("tcp://" + addr)`` reduced to what ParseTCPAddr uses: (Host, Path)."""
    raw = "tcp://" + addr
    without_frag, has_frag, frag = raw.partition("#")
    try:
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in without_frag):
            raise _UrlError("net/url: invalid control character in URL")
        rest = without_frag[len("tcp:"):]
        if rest.endswith("?") and rest.count("?") == 1:
            rest = rest[:-1]
        else:
            rest = rest.partition("?")[0]
        authority, slash, path = rest[2:].partition("/")
        path = slash + path
        at = authority.rfind("@")
        host = _parse_url_host(authority[at + 1:] if at >= 0 else authority)
        if at >= 0:
            userinfo = authority[:at]
            if not all((ch.isascii() and ch.isalnum()) or ch in _USERINFO_OK for ch in userinfo):
                raise _UrlError("net/url: invalid userinfo")
            for part in userinfo.split(":", 1):
                _unescape(part, _MODE_USER)
        path = _unescape(path, _MODE_PATH)
    except _UrlError as err:
        raise ValueError(f"parse {_go_quote(without_frag)}: {err}") from None
    if has_frag:
        try:
            _unescape(frag, _MODE_FRAGMENT)
        except _UrlError as err:
            raise ValueError(f"parse {_go_quote(raw)}: {err}") from None
    return host, path


def parse_tcp_addr(try_addr: str, default_addr: str = "tcp://" + DEFAULT_LISTEN_ADDR) -> str:
    """docker/cli ``opts.ParseTCPAddr``: returns ``tcp://host:port[path]``, raises ValueError(Go text)."""
    if try_addr in ("", "tcp://"):
        return default_addr
    addr = try_addr.removeprefix("tcp://")
    if "://" in addr or addr == "":
        raise ValueError(f"invalid proto, expected tcp: {try_addr}")
    default_host, default_port = split_host_port(default_addr.removeprefix("tcp://"))
    if addr.endswith("]:"):
        addr += default_port
    url_host, path = _parse_tcp_url(addr)
    try:
        host, port = split_host_port(url_host)
    except ValueError:
        try:
            host, port = split_host_port(join_host_port(url_host, default_port))
        except ValueError:
            raise ValueError(f"invalid bind address format: {try_addr}") from None
    host = host or default_host
    port = port or default_port
    if not port.isascii() or not port.isdigit():  # Go: Atoi fails and yields 0
        raise ValueError(f"invalid bind address format: {try_addr}")
    return f"tcp://{join_host_port(host, port)}{path}"


def normalize_listen_flag(value: str, default: str = DEFAULT_LISTEN_ADDR) -> str:
    """The CLI's ``--listen-addr`` value (``NodeAddrOption.Set``): missing host → 0.0.0.0, port → 2377.

    Raises ListenFlagError with pflag's exact text; Docker exits 125 on it.
    """
    try:
        parsed = parse_tcp_addr(value, default)
    except ValueError as err:
        raise ListenFlagError(
            f"invalid argument {_go_quote(value)} for \"--listen-addr\" flag: {err}") from None
    return parsed.removeprefix("tcp://")


# --------------------------------------------------------------------------- resolvers


def _resolve_interface_addr(name: str, interfaces: Sequence[Interface]) -> _IP:
    """moby ``resolveInterfaceAddr``: every address counts (link-local too), DOWN links too; IPv4 wins."""
    intf = next((i for i in interfaces if i.name == name), None) if name else None
    if intf is None:
        raise _NoSuchInterface(name)
    addr4: _IP | None = None
    addr6: _IP | None = None
    for text in intf.addrs:
        ip = _parse_ip(text.split("%", 1)[0])
        if ip is None:
            continue
        if isinstance(ip, ipaddress.IPv4Address):
            if addr4 is not None:
                raise AddrError(f"interface {name} has more than one IPv4 address ({addr4} and {ip})")
            addr4 = ip
        else:
            if addr6 is not None:
                raise AddrError(f"interface {name} has more than one IPv6 address ({addr6} and {ip})")
            addr6 = ip
    chosen = addr4 if addr4 is not None else addr6
    if chosen is None:
        raise AddrError(f"interface {name} has no usable IPv4 or IPv6 address")
    return chosen


def _resolve_input_ip(text: str, allow_unspecified: bool, interfaces: Sequence[Interface]) -> _IP:
    """moby ``resolveInputIPAddr``: an interface name first, then a literal IP; never a hostname."""
    try:
        return _resolve_interface_addr(text, interfaces)
    except _NoSuchInterface:
        pass
    ip = _parse_ip(text)
    if ip is not None and (allow_unspecified or not _is_unspecified(ip)):
        return ip
    raise _BadNetworkIdentifier(text)


def resolve_listen_addr(addr: str, interfaces: Sequence[Interface]) -> tuple[str, str]:
    """moby ``resolveListenAddr``: ``host:port`` → (ip, port); 0.0.0.0 / :: allowed, port kept verbatim."""
    try:
        host, port = split_host_port(addr)
    except ValueError:
        raise AddrError(f"could not parse listen address {addr}") from None
    try:
        ip = _resolve_input_ip(host, True, interfaces)
    except _BadNetworkIdentifier:
        raise AddrError(ERR_BAD_LISTEN_ADDR) from None
    return _ip_str(ip), port


def resolve_advertise_addr(
    advertise: str,
    listen_port: str,
    interfaces: Sequence[Interface],
    *,
    default_advertise: str = "",
    managed_subnets: Sequence[str] = (),
) -> tuple[str, str]:
    """moby ``resolveAdvertiseAddr``: explicit value, else daemon default, else auto-detect.

    The port text is kept verbatim (Docker accepts ``10.77.0.1:abc``, ``:-1``, an empty
    port); without a parsable ``host:port`` the whole value is the host and the listen port
    is used, so a bare IPv6 works.
    """
    if advertise:
        try:
            host, port = split_host_port(advertise)
        except ValueError:
            host, port = advertise, listen_port
        try:
            ip = _resolve_input_ip(host, False, interfaces)
        except _BadNetworkIdentifier:
            raise AddrError(ERR_BAD_ADVERTISE_ADDR) from None
        return _ip_str(ip), port
    if default_advertise:
        try:
            ip = _resolve_input_ip(default_advertise, False, interfaces)
        except _BadNetworkIdentifier:
            raise AddrError(ERR_BAD_DEFAULT_ADVERTISE_ADDR) from None
        return _ip_str(ip), listen_port
    return resolve_system_addr(interfaces, managed_subnets=managed_subnets), listen_port


def resolve_data_path_addr(addr: str, interfaces: Sequence[Interface]) -> str:
    """moby ``resolveDataPathAddr``: interface or non-zero IP, no port; "" stays "" (unset)."""
    if not addr:
        return ""
    try:
        ip = _resolve_input_ip(addr, False, interfaces)
    except _BadNetworkIdentifier:
        raise AddrError(ERR_BAD_DATA_PATH_ADDR) from None
    return _ip_str(ip)


def _multiple_ips(if_a: str, if_b: str, addr_a: _IP, addr_b: _IP) -> AutoDetectError:
    if if_a == if_b:
        return AutoDetectError(
            "could not choose an IP address to advertise since this system has multiple addresses "
            f"on interface {if_a} ({addr_a} and {addr_b})")
    return AutoDetectError(
        "could not choose an IP address to advertise since this system has multiple addresses on "
        f"different interfaces ({addr_a} on {if_a} and {addr_b} on {if_b})")


def _global_unicast(intf: Interface) -> list[_IP]:
    ips = (_parse_ip(text.split("%", 1)[0]) for text in intf.addrs)
    return [ip for ip in ips if ip is not None and _is_global_unicast(ip)]


_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _choose(links: Sequence[Interface], managed: Sequence[_Net]) -> _IP | None:
    """The per-link and cross-link uniqueness rules shared by both Docker detectors.

    A straight port of Docker's loop so errors come out in the same order: per link, a
    second IPv4 or a second IPv6 fails at once; IPv4 wins over IPv6 on one link; a second
    link with an address fails. A link with an address in a ``managed`` subnet is dropped
    from that point on (Docker's ``continue ifaceLoop``).
    """
    system: tuple[str, _IP] | None = None
    for intf in links:
        addr4: _IP | None = None
        addr6: _IP | None = None
        skipped = False
        for ip in _global_unicast(intf):
            if any(ip.version == net.version and ip in net for net in managed):
                skipped = True
                break
            if isinstance(ip, ipaddress.IPv4Address):
                if addr4 is not None:
                    raise _multiple_ips(intf.name, intf.name, addr4, ip)
                addr4 = ip
            else:
                if addr6 is not None:
                    raise _multiple_ips(intf.name, intf.name, addr6, ip)
                addr6 = ip
        if skipped:
            continue
        chosen = addr4 if addr4 is not None else addr6
        if chosen is not None:
            if system is not None:
                raise _multiple_ips(system[0], intf.name, system[1], chosen)
            system = (intf.name, chosen)
    return None if system is None else system[1]


def resolve_system_addr(
    interfaces: Sequence[Interface], *, managed_subnets: Sequence[str] = ()
) -> str:
    """moby ``resolveSystemAddr`` (Linux): the one global unicast address of the UP device links.

    When no device link has a global unicast address at all (e.g. in containers, where the
    NICs are veths) it falls back to ``resolveSystemAddrViaSubnetCheck``: all UP
    non-loopback links, skipping any link with an address in ``managed_subnets`` (the
    Docker-managed subnets). Errors carry the CLI's ``--advertise-addr`` hint.
    """
    devices = [i for i in interfaces if i.is_device and i.up]
    chosen = _choose(devices, ())
    if chosen is None:
        if any(_global_unicast(i) for i in devices):
            raise AutoDetectError(ERR_NO_IP)
        managed = [ipaddress.ip_network(s, strict=False) for s in managed_subnets]
        chosen = _choose([i for i in interfaces if i.up and not i.loopback], managed)
        if chosen is None:
            raise AutoDetectError(ERR_NO_IP)
    return _ip_str(chosen)


def local_addr(
    listen_ip: str,
    advertise_ip: str,
    interfaces: Sequence[Interface],
    *,
    managed_subnets: Sequence[str] = (),
) -> str:
    """Docker Init step 4 (``LocalAddr``): the address this node really listens on.

    The listen IP unless it is unspecified; then the advertise IP if some interface has
    it, else the auto-detected system address, else Docker's "must specify a listening
    address" error.
    """
    lip = _parse_ip(listen_ip)
    if lip is None or not _is_unspecified(lip):
        return listen_ip
    aip = _parse_ip(advertise_ip)
    if aip is not None:
        for intf in interfaces:
            for text in intf.addrs:
                if _parse_ip(text.split("%", 1)[0]) == aip:
                    return _ip_str(aip)
    try:
        return resolve_system_addr(interfaces, managed_subnets=managed_subnets)
    except AddrError:
        raise AddrError(ERR_MUST_SPECIFY_LISTEN_ADDR) from None
