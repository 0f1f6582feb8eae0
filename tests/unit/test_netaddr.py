"""Address resolution against Docker's recorded behaviour (transcripts §2-3, swarm-behaviour §5).

Pure: every case runs on a synthetic interface list, so the expectations are the exact
texts and values real Docker produced in the namespaces described in the transcripts.
"""

from __future__ import annotations

import pytest

from swarmd import ifaces
from swarmd import netaddr as na
from swarmd.netaddr import AddrError, AutoDetectError, Interface, ListenFlagError

HINT = " - specify one with --advertise-addr"
BAD_ADVERTISE = ("advertise address must be a non-zero IP address or network interface "
                 "(with optional port number)")
BAD_LISTEN = "listen address must be an IP address or network interface (with optional port number)"
BAD_DATA_PATH = ("data path address must be a non-zero IP address or network interface "
                 "(without a port number)")
BAD_DEFAULT_ADVERTISE = ("default advertise address must be a non-zero IP address or network interface "
                         "(without a port number)")
MUST_SPECIFY = ("must specify a listening address because the address to advertise is not recognized "
                "as a system address, and a system's IP address to use could not be uniquely identified")
NO_IP = "could not find the system's IP address - specify one with --advertise-addr"
DIFFERENT = ("could not choose an IP address to advertise since this system has multiple addresses on "
             "different interfaces (10.99.0.2 on eth0 and 10.98.0.2 on eth1)" + HINT)
LL = "fe80::4c3:a3ff:fe55:2068"


def lo(*extra: str, up: bool = True) -> Interface:
    return Interface("lo", up, True, True, ("127.0.0.1", *extra, "::1"))


def veth(name: str, *addrs: str, up: bool = True) -> Interface:
    return Interface(name, up, False, False, addrs)


def nic(name: str, *addrs: str, up: bool = True) -> Interface:
    return Interface(name, up, False, True, addrs)


# Namespace sw1 of the transcripts: one veth with one IPv4 (+ its link-local).
D1 = [lo(), veth("sw1veth", "10.77.0.1", "fe80::a:1")]


def sw3(eth0: tuple[str, ...] = ("10.99.0.2", "fe80::e0"), eth1: tuple[str, ...] = ("10.98.0.2", "fe80::e1"),
        *, eth0_up: bool = True, eth1_up: bool = True, p1: tuple[str, ...] = ("fe80::b1",)
        ) -> list[Interface]:
    """Namespace sw3: eth0/eth1 veths with one IPv4 each, peers p0/p1 with link-local only."""
    return [lo(), veth("p0", LL), veth("eth0", *eth0, up=eth0_up), veth("p1", *p1),
            veth("eth1", *eth1, up=eth1_up)]


SW3 = sw3()


def err(fn: object, *args: object, **kwargs: object) -> AddrError:
    with pytest.raises(AddrError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value


# --------------------------------------------------------------------------- --advertise-addr


@pytest.mark.parametrize("value", [
    "999.1.1.1", "nosuchif0", "eth9", "0.0.0.0", ":2377", "1.2.3", "a b",   # transcripts §2
    "::", "[::]:2377", "0.0.0.0:2377", "localhost", "localhost:2377",       # unspecified / hostnames
    "fe80::1%sw1veth", "[fe80::1%sw1veth]:2377", "010.77.0.1", "10.77.0.1 ",  # zones, Go ParseIP strictness
    "[10.77.0.1]", "sw1veth:4000:1",
])
def test_advertise_rejected(value: str) -> None:
    e = err(na.resolve_advertise_addr, value, "2377", D1)
    assert str(e) == BAD_ADVERTISE
    assert type(e) is AddrError


@pytest.mark.parametrize("value,expected", [
    ("10.77.0.1:abc", ("10.77.0.1", "abc")),      # port never validated: echoed verbatim
    ("10.77.0.1:99999", ("10.77.0.1", "99999")),
    ("10.77.0.1:-1", ("10.77.0.1", "-1")),
    ("10.77.0.1:", ("10.77.0.1", "")),
    ("", ("10.77.0.1", "2377")),                  # empty = auto-detect
    ("127.0.0.1", ("127.0.0.1", "2377")),
    ("lo", ("127.0.0.1", "2377")),                # loopback interface: IPv4 wins over ::1
    ("sw1veth", ("10.77.0.1", "2377")),
    ("sw1veth:4000", ("10.77.0.1", "4000")),
    ("10.77.0.1:4000", ("10.77.0.1", "4000")),
    ("192.0.2.55", ("192.0.2.55", "2377")),       # not on this host: accepted
    ("fd77::2", ("fd77::2", "2377")),             # bare IPv6: whole value is the host
    ("[fd77::2]:2377", ("fd77::2", "2377")),
    ("[fd77::2]:4000", ("fd77::2", "4000")),
    ("fd77::2:2377", ("fd77::2:2377", "2377")),   # one (valid) IPv6 address, not host:port
    ("FD77:0::0002", ("fd77::2", "2377")),        # printed as Go's IP.String()
    ("::ffff:10.77.0.1", ("10.77.0.1", "2377")),  # IPv4-mapped is IPv4 (To4)
    ("[::1]:7", ("::1", "7")),
])
def test_advertise_accepted(value: str, expected: tuple[str, str]) -> None:
    assert na.resolve_advertise_addr(value, "2377", D1) == expected


def test_advertise_port_follows_listen_port() -> None:
    assert na.resolve_advertise_addr("sw1veth", "4500", D1) == ("10.77.0.1", "4500")
    assert na.resolve_advertise_addr("", "4500", D1) == ("10.77.0.1", "4500")
    assert na.resolve_advertise_addr("10.77.0.1:7", "4500", D1) == ("10.77.0.1", "7")


def test_advertise_join_command_address() -> None:
    host, port = na.resolve_advertise_addr("fd77::2", "2377", SW3)
    assert na.join_host_port(host, port) == "[fd77::2]:2377"
    assert na.join_host_port(*na.resolve_advertise_addr("10.77.0.1:abc", "2377", D1)) == "10.77.0.1:abc"


def test_advertise_interface_name_wins_over_ip_literal() -> None:
    odd = [veth("10.0.0.9", "10.1.1.1")]
    assert na.resolve_advertise_addr("10.0.0.9", "2377", odd) == ("10.1.1.1", "2377")


def test_default_advertise_addr() -> None:
    assert na.resolve_advertise_addr("", "2377", SW3, default_advertise="eth1") == ("10.98.0.2", "2377")
    assert na.resolve_advertise_addr("eth0", "2377", SW3, default_advertise="eth1") == ("10.99.0.2", "2377")
    for bad in ("nosuchif0", "0.0.0.0", "10.98.0.2:2377"):
        assert str(err(na.resolve_advertise_addr, "", "2377", SW3, default_advertise=bad)) == BAD_DEFAULT_ADVERTISE


# --------------------------------------------------------------------------- interface names


@pytest.mark.parametrize("interfaces,name,expected", [
    (sw3(eth0=("10.99.0.2", "10.99.0.3", "fe80::1")), "eth0",
     "interface eth0 has more than one IPv4 address (10.99.0.2 and 10.99.0.3)"),
    (sw3(eth0=("fd77::3", "fd77::2", "fe80::1")), "eth0",
     "interface eth0 has more than one IPv6 address (fd77::3 and fd77::2)"),
    # no filtering: the link-local address counts as a second IPv6
    (sw3(eth0=("fd77::2", "fe80::1")), "eth0", "interface eth0 has more than one IPv6 address (fd77::2 and fe80::1)"),
    (sw3(p1=()), "p1", "interface p1 has no usable IPv4 or IPv6 address"),
    # a second IPv4 fails even when IPv6 would be unique, and before a second IPv6 is looked at
    (sw3(eth0=("10.99.0.2", "10.99.0.3", "fd77::3", "fd77::2")), "eth0",
     "interface eth0 has more than one IPv4 address (10.99.0.2 and 10.99.0.3)"),
])
def test_interface_name_errors(interfaces: list[Interface], name: str, expected: str) -> None:
    assert str(err(na.resolve_advertise_addr, name, "2377", interfaces)) == expected
    assert str(err(na.resolve_advertise_addr, name + ":4000", "2377", interfaces)) == expected
    assert str(err(na.resolve_listen_addr, name + ":2377", interfaces)) == expected
    assert str(err(na.resolve_data_path_addr, name, interfaces)) == expected


@pytest.mark.parametrize("interfaces,name,expected", [
    (SW3, "eth0", "10.99.0.2"),
    (SW3, "p0", LL),                                              # link-local only: used as is
    (sw3(eth0_up=False), "eth0", "10.99.0.2"),                    # DOWN interface named explicitly
    (sw3(eth0=("fd77::2", "10.99.0.2")), "eth0", "10.99.0.2"),    # one IPv4 + one IPv6: IPv4 wins
    (sw3(eth0=("fe80::1%eth0",)), "eth0", "fe80::1"),             # a stray zone suffix is ignored
])
def test_interface_name_resolves(interfaces: list[Interface], name: str, expected: str) -> None:
    assert na.resolve_advertise_addr(name, "2377", interfaces) == (expected, "2377")
    assert na.resolve_listen_addr(name + ":2377", interfaces) == (expected, "2377")
    assert na.resolve_data_path_addr(name, interfaces) == expected


def test_join_command_for_link_local_interface() -> None:
    assert na.join_host_port(*na.resolve_advertise_addr("p0", "2377", SW3)) == f"[{LL}]:2377"


# --------------------------------------------------------------------------- listen address (daemon side)


@pytest.mark.parametrize("value,expected", [
    ("0.0.0.0:2377", ("0.0.0.0", "2377")),
    ("[::]:2377", ("::", "2377")),
    ("eth1:2377", ("10.98.0.2", "2377")),
    ("10.98.0.2:4000", ("10.98.0.2", "4000")),
    ("192.0.2.9:2377", ("192.0.2.9", "2377")),    # not on the host: accepted
    ("0.0.0.0:abc", ("0.0.0.0", "abc")),          # the daemon leaves the port to the listener
    ("[fd77::2:2377]:2377", ("fd77::2:2377", "2377")),
])
def test_listen_accepted(value: str, expected: tuple[str, str]) -> None:
    assert na.resolve_listen_addr(value, SW3) == expected


@pytest.mark.parametrize("value,expected", [
    ("nosuchif0:2377", BAD_LISTEN),
    ("999.1.1.1:2377", BAD_LISTEN),
    ("localhost:2377", BAD_LISTEN),
    (":2377", BAD_LISTEN),
    ("eth0", "could not parse listen address eth0"),
    ("::1", "could not parse listen address ::1"),
    ("", "could not parse listen address "),
])
def test_listen_rejected(value: str, expected: str) -> None:
    assert str(err(na.resolve_listen_addr, value, SW3)) == expected


def test_listen_flag_then_daemon() -> None:
    """Transcript §2: ``--listen-addr nosuchif0`` / ``999.1.1.1`` fail on the daemon side."""
    for flag in ("nosuchif0", "999.1.1.1"):
        assert str(err(na.resolve_listen_addr, na.normalize_listen_flag(flag), D1)) == BAD_LISTEN


# --------------------------------------------------------------------------- --listen-addr (CLI side)


@pytest.mark.parametrize("value,expected", [
    ("", "0.0.0.0:2377"),
    (":", "0.0.0.0:2377"),
    ("tcp://", "0.0.0.0:2377"),
    ("eth0", "eth0:2377"),
    (":4000", "0.0.0.0:4000"),
    ("eth0:4000", "eth0:4000"),
    ("10.98.0.2", "10.98.0.2:2377"),
    ("10.98.0.2:", "10.98.0.2:2377"),
    ("tcp://10.98.0.2:5", "10.98.0.2:5"),
    ("[::1]:5", "[::1]:5"),
    ("[::1]:", "[::1]:2377"),
    ("::1", "[::1]:2377"),                        # bare IPv6 gets bracketed (retry with default port)
    ("fd77::2:2377", "[fd77::2:2377]:2377"),      # ...and its last group is not a port
    ("0.0.0.0:0", "0.0.0.0:0"),
    ("1.2.3.4:5/a%20b", "1.2.3.4:5/a b"),         # Go keeps the (decoded) URL path
    ("1.2.3.4:5?x=1#frag", "1.2.3.4:5"),
    ("user@1.2.3.4:5", "1.2.3.4:5"),
    ("[fe80::1%25eth0]:5", "[fe80::1%eth0]:5"),
    ("x:99999999999999999999", "x:99999999999999999999"),  # Atoi overflow is not an error there
])
def test_listen_flag_normalised(value: str, expected: str) -> None:
    assert na.normalize_listen_flag(value) == expected


@pytest.mark.parametrize("value,detail", [
    ("0.0.0.0:abc", 'parse "tcp://0.0.0.0:abc": invalid port ":abc" after host'),   # transcript §2, rc 125
    (":abc", 'parse "tcp://:abc": invalid port ":abc" after host'),
    ("10.0.0.1:-1", 'parse "tcp://10.0.0.1:-1": invalid port ":-1" after host'),
    ("[::1]x", 'parse "tcp://[::1]x": invalid port "x" after host'),
    ("[::1", 'parse "tcp://[::1": missing \']\' in host'),
    (" 1.2.3.4", 'parse "tcp:// 1.2.3.4": invalid character " " in host name'),
    ("a b", 'parse "tcp://a b": invalid character " " in host name'),
    ("%zz", 'parse "tcp://%zz": invalid URL escape "%zz"'),
    ("a%41", 'parse "tcp://a%41": invalid URL escape "%41"'),
    ("1.2.3.4#%zz", 'parse "tcp://1.2.3.4#%zz": invalid URL escape "%zz"'),
    ("a b@c", 'parse "tcp://a b@c": net/url: invalid userinfo'),
    ("\x01", 'parse "tcp://\\x01": net/url: invalid control character in URL'),
    ('a"b:x', 'parse "tcp://a\\"b:x": invalid port ":x" after host'),
    ("udp://1.2.3.4", "invalid proto, expected tcp: udp://1.2.3.4"),
    ("tcp://udp://x", "invalid proto, expected tcp: tcp://udp://x"),
    ("[::1]", "invalid bind address format: [::1]"),   # the retry yields "[[::1]]:2377"
    ("[::1]:80]", "invalid bind address format: [::1]:80]"),
    ("a]b", "invalid bind address format: a]b"),
])
def test_listen_flag_rejected(value: str, detail: str) -> None:
    with pytest.raises(ListenFlagError) as info:
        na.normalize_listen_flag(value)
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\x01", "\\x01") + '"'
    assert str(info.value) == f'invalid argument {quoted} for "--listen-addr" flag: {detail}'


def test_listen_flag_exact_docker_text() -> None:
    with pytest.raises(ListenFlagError) as info:
        na.normalize_listen_flag("0.0.0.0:abc")
    assert str(info.value) == ('invalid argument "0.0.0.0:abc" for "--listen-addr" flag: '
                               'parse "tcp://0.0.0.0:abc": invalid port ":abc" after host')
    assert isinstance(info.value, AddrError)


def test_parse_tcp_addr_keeps_scheme_and_uses_previous_value_as_default() -> None:
    assert na.parse_tcp_addr("eth0") == "tcp://eth0:2377"
    assert na.parse_tcp_addr("", "tcp://0.0.0.0:2377") == "tcp://0.0.0.0:2377"
    # pflag passes the current value as default, so a repeated flag inherits its port
    assert na.normalize_listen_flag("eth1", default="10.0.0.1:4000") == "eth1:4000"


# --------------------------------------------------------------------------- --data-path-addr


@pytest.mark.parametrize("value,expected", [
    ("", ""),
    ("sw1veth", "10.77.0.1"),
    ("10.77.0.1", "10.77.0.1"),
    ("192.0.2.1", "192.0.2.1"),
    ("fd77::2", "fd77::2"),
])
def test_data_path_accepted(value: str, expected: str) -> None:
    assert na.resolve_data_path_addr(value, D1) == expected


@pytest.mark.parametrize("value", ["nosuchif0", "0.0.0.0", "::", "10.77.0.1:4789", "sw1veth:4789", "localhost"])
def test_data_path_rejected(value: str) -> None:
    assert str(err(na.resolve_data_path_addr, value, D1)) == BAD_DATA_PATH


# --------------------------------------------------------------------------- auto-detection


@pytest.mark.parametrize("interfaces,expected", [
    # transcripts §3, in order
    (SW3, DIFFERENT),
    (sw3(eth0=("10.99.0.2", "10.99.0.3", "fe80::e0")),
     "could not choose an IP address to advertise since this system has multiple addresses on interface "
     "eth0 (10.99.0.2 and 10.99.0.3)" + HINT),
    (sw3(eth0=("10.99.0.2", "10.99.0.3", "fe80::e0"), eth1_up=False),
     "could not choose an IP address to advertise since this system has multiple addresses on interface "
     "eth0 (10.99.0.2 and 10.99.0.3)" + HINT),
    (sw3(eth0_up=False, eth1_up=False), NO_IP),
    (sw3(eth0=("fd77::3", "fd77::2", "fe80::e0"), eth1_up=False),
     "could not choose an IP address to advertise since this system has multiple addresses on interface "
     "eth0 (fd77::3 and fd77::2)" + HINT),
    # a device with a global address next to a device with another one
    ([lo(), nic("eno1", "192.168.1.5"), nic("eno2", "2001:db8::5")],
     "could not choose an IP address to advertise since this system has multiple addresses on different "
     "interfaces (192.168.1.5 on eno1 and 2001:db8::5 on eno2)" + HINT),
    # two global IPv4 on one device link
    ([lo(), nic("eno1", "192.168.1.5", "192.168.1.6")],
     "could not choose an IP address to advertise since this system has multiple addresses on interface "
     "eno1 (192.168.1.5 and 192.168.1.6)" + HINT),
    # Docker's Linux path does not skip loopback *devices*: a global address on lo counts
    ([lo("10.255.0.1"), nic("eno1", "192.168.1.5")],
     "could not choose an IP address to advertise since this system has multiple addresses on different "
     "interfaces (10.255.0.1 on lo and 192.168.1.5 on eno1)" + HINT),
    ([lo(up=True)], NO_IP),
    ([], NO_IP),
])
def test_system_addr_errors(interfaces: list[Interface], expected: str) -> None:
    e = err(na.resolve_system_addr, interfaces)
    assert str(e) == expected
    assert isinstance(e, AutoDetectError)
    assert e.daemon_message == expected.removesuffix(HINT)
    # ... and the same through --advertise-addr '' with any listen port
    assert str(err(na.resolve_advertise_addr, "", "2377", interfaces)) == expected


@pytest.mark.parametrize("interfaces,expected", [
    (D1, "10.77.0.1"),
    (sw3(eth1_up=False), "10.99.0.2"),
    (sw3(eth0=("10.99.0.2", "fd77::2", "fe80::e0"), eth1_up=False), "10.99.0.2"),   # IPv4 wins per link
    (sw3(eth0=("fd77::2", "fe80::e0"), eth1_up=False), "fd77::2"),                 # IPv6-only
    (sw3(eth0=("fd77::2", "10.99.0.2"), eth1_up=False), "10.99.0.2"),              # whatever the order
    # ignored: loopback, link-local, DOWN links, non-global kinds
    ([lo(), veth("eth0", "169.254.3.4", "fe80::1"), veth("eth1", "10.98.0.2"),
      veth("eth2", "10.97.0.2", up=False)], "10.98.0.2"),
    ([veth("eth0", "224.0.0.5", "ff02::1", "0.0.0.0", "::", "255.255.255.255", "127.0.0.2", "::1"),
      veth("eth1", "10.98.0.2")], "10.98.0.2"),
    # RFC 1918, CGNAT, documentation ranges and ULA are "global" in Go's sense
    ([lo(), veth("eth0", "192.0.2.10")], "192.0.2.10"),
    ([lo(), veth("eth0", "100.64.0.1")], "100.64.0.1"),
    ([lo(), veth("eth0", "172.16.5.5")], "172.16.5.5"),
    # device path: a physical NIC's address wins, veths are never looked at
    ([lo(), nic("eno1", "192.168.1.5", "fe80::1"), veth("veth0", "10.98.0.2"), veth("br0", "10.97.0.1")],
     "192.168.1.5"),
    ([lo(), nic("eno1", "192.168.1.5", "2001:db8::5")], "192.168.1.5"),
    # device links without a global address: fall back to all UP non-loopback links
    ([lo(), nic("eno1", "fe80::1"), veth("eth0", "10.99.0.2")], "10.99.0.2"),
    ([lo(), nic("eno1", "192.168.1.5", up=False), veth("eth0", "10.99.0.2")], "10.99.0.2"),
    ([lo("10.255.0.1", up=False), veth("eth0", "10.99.0.2")], "10.99.0.2"),
])
def test_system_addr(interfaces: list[Interface], expected: str) -> None:
    assert na.resolve_system_addr(interfaces) == expected
    assert na.resolve_advertise_addr("", "2377", interfaces) == (expected, "2377")


def test_fallback_skips_loopback_flagged_links() -> None:
    # in the fallback (subnet-check) path loopback links are skipped outright
    ifaces = [Interface("lo", True, True, False, ("10.255.0.1",)), veth("eth0", "10.99.0.2")]
    assert na.resolve_system_addr(ifaces) == "10.99.0.2"


def test_managed_subnets_skip_whole_interface() -> None:
    ifaces = [lo(), veth("eth0", "10.99.0.2"), veth("docker_gwbridge", "172.17.0.1", "172.18.0.1")]
    assert str(err(na.resolve_system_addr, ifaces)) == (
        "could not choose an IP address to advertise since this system has multiple addresses on interface "
        "docker_gwbridge (172.17.0.1 and 172.18.0.1)" + HINT)
    assert na.resolve_system_addr(ifaces, managed_subnets=["172.17.0.0/16"]) == "10.99.0.2"
    assert na.resolve_advertise_addr("", "2377", ifaces, managed_subnets=["172.17.0.0/16"]) == ("10.99.0.2", "2377")
    # an IPv6 subnet does not match IPv4 addresses
    assert str(err(na.resolve_system_addr, ifaces, managed_subnets=["fd00::/8"])).startswith(
        "could not choose an IP address")


def test_managed_subnet_only_stops_the_scan_where_it_is_met() -> None:
    before = [veth("eth0", "10.99.0.2", "10.99.0.3", "172.17.0.1")]
    assert str(err(na.resolve_system_addr, before, managed_subnets=["172.17.0.0/16"])) == (
        "could not choose an IP address to advertise since this system has multiple addresses on interface "
        "eth0 (10.99.0.2 and 10.99.0.3)" + HINT)
    after = [veth("eth0", "172.17.0.1", "10.99.0.2", "10.99.0.3"), veth("eth1", "10.98.0.2")]
    assert na.resolve_system_addr(after, managed_subnets=["172.17.0.0/16"]) == "10.98.0.2"
    only = [veth("docker0", "172.17.0.1")]
    assert str(err(na.resolve_system_addr, only, managed_subnets=["172.17.0.0/16"])) == NO_IP


def test_default_route_does_not_disambiguate() -> None:
    """Transcript §3: routes play no part; ``--listen-addr eth1`` does not pick the advertise address."""
    listen_ip, port = na.resolve_listen_addr(na.normalize_listen_flag("eth1"), SW3)
    assert (listen_ip, port) == ("10.98.0.2", "2377")
    assert str(err(na.resolve_advertise_addr, "", port, SW3)) == DIFFERENT
    listen_ip, port = na.resolve_listen_addr(na.normalize_listen_flag("10.98.0.2:2377"), SW3)
    assert str(err(na.resolve_advertise_addr, "", port, SW3)) == DIFFERENT


# --------------------------------------------------------------------------- LocalAddr


@pytest.mark.parametrize("interfaces,listen,advertise,expected", [
    (SW3, "10.98.0.2", "10.99.0.2", "10.98.0.2"),     # a concrete listen IP is the local address
    (SW3, "192.0.2.9", "10.99.0.2", "192.0.2.9"),
    (SW3, "0.0.0.0", "10.99.0.2", "10.99.0.2"),       # multi-homed, explicit --advertise-addr eth0
    (SW3, "::", "10.98.0.2", "10.98.0.2"),
    (D1, "0.0.0.0", "127.0.0.1", "127.0.0.1"),        # loopback is a system address
    (D1, "0.0.0.0", "192.0.2.55", "10.77.0.1"),       # not local: auto-detected address instead
    (sw3(eth0_up=False), "0.0.0.0", "10.99.0.2", "10.99.0.2"),  # DOWN interfaces' addresses count
    (SW3, "0.0.0.0", "::ffff:10.99.0.2", "10.99.0.2"),
    (SW3, "0.0.0.0", LL, LL),
])
def test_local_addr(interfaces: list[Interface], listen: str, advertise: str, expected: str) -> None:
    assert na.local_addr(listen, advertise, interfaces) == expected


@pytest.mark.parametrize("interfaces", [SW3, sw3(eth0_up=False, eth1_up=False)])
def test_local_addr_must_specify(interfaces: list[Interface]) -> None:
    e = err(na.local_addr, "0.0.0.0", "192.0.2.55", interfaces)
    assert str(e) == MUST_SPECIFY
    assert not isinstance(e, AutoDetectError)


def test_init_flow_multi_homed_with_interface_name() -> None:
    """Transcript §3: ``swarm init --advertise-addr eth0`` on sw3 succeeds with 10.99.0.2:2377."""
    listen_ip, listen_port = na.resolve_listen_addr(na.normalize_listen_flag(""), SW3)
    adv_ip, adv_port = na.resolve_advertise_addr("eth0", listen_port, SW3)
    assert na.join_host_port(adv_ip, adv_port) == "10.99.0.2:2377"
    assert na.local_addr(listen_ip, adv_ip, SW3) == "10.99.0.2"


# --------------------------------------------------------------------------- Go helpers


@pytest.mark.parametrize("value,expected", [
    ("localhost:http", ("localhost", "http")),
    ("10.0.0.1:2377", ("10.0.0.1", "2377")),
    ("[::1]:80", ("::1", "80")),
    ("[fe80::1%eth0]:80", ("fe80::1%eth0", "80")),
    (":80", ("", "80")),
    ("[]:80", ("", "80")),
    ("host:", ("host", "")),
    (":", ("", "")),
])
def test_split_host_port(value: str, expected: tuple[str, str]) -> None:
    assert na.split_host_port(value) == expected


@pytest.mark.parametrize("value,message", [
    ("", "missing port in address"),
    ("10.0.0.1", "address 10.0.0.1: missing port in address"),
    ("::1", "address ::1: too many colons in address"),
    ("fd77::2:2377", "address fd77::2:2377: too many colons in address"),
    ("[::1]", "address [::1]: missing port in address"),
    ("[::1]:80:90", "address [::1]:80:90: too many colons in address"),
    ("[::1]x:80", "address [::1]x:80: missing port in address"),
    ("[::1:80", "address [::1:80: missing ']' in address"),
    ("a[b]:80", "address a[b]:80: unexpected '[' in address"),
    ("a]b:80", "address a]b:80: unexpected ']' in address"),
])
def test_split_host_port_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        na.split_host_port(value)
    assert str(info.value) == message


@pytest.mark.parametrize("host,port,expected", [
    ("fd77::2", "2377", "[fd77::2]:2377"),
    ("10.99.0.2", "2377", "10.99.0.2:2377"),
    ("10.77.0.1", "", "10.77.0.1:"),
    ("", "2377", ":2377"),
])
def test_join_host_port(host: str, port: str, expected: str) -> None:
    assert na.join_host_port(host, port) == expected


def test_list_interfaces_smoke() -> None:
    """The live reader works here and reports the loopback link as Docker's netlink would."""
    interfaces = ifaces.list_interfaces()
    loops = [i for i in interfaces if i.name == "lo"]
    assert len(loops) == 1
    assert loops[0].loopback and loops[0].is_device
    for intf in interfaces:
        assert all("%" not in a for a in intf.addrs)
        families = [":" in a for a in intf.addrs]
        assert families == sorted(families)  # IPv4 first, then IPv6
