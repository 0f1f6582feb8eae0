"""Address resolution on real links: transcripts §3 replayed in private network namespaces.

Each test builds a namespace like the transcripts' ``sw3`` (veth ``eth0`` 10.99.0.2/24 and
``eth1`` 10.98.0.2/24, peers ``p0``/``p1`` with link-local only, ``lo`` up), changes it the
way the transcript did, and runs the real module inside it through ``nsenter --net`` (as
dockerd was run), so links and addresses come from the kernel. Only 10.99.0.0/24,
10.98.0.0/24 and fd77::/64 are used, and only inside the namespaces, which are always
deleted afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

HINT = " - specify one with --advertise-addr"
DIFFERENT = ("could not choose an IP address to advertise since this system has multiple addresses on "
             "different interfaces (10.99.0.2 on eth0 and 10.98.0.2 on eth1)" + HINT)
NO_IP = "could not find the system's IP address" + HINT
MUST_SPECIFY = ("must specify a listening address because the address to advertise is not recognized "
                "as a system address, and a system's IP address to use could not be uniquely identified")

IP_TIMEOUT = 10
PY_TIMEOUT = 60

# Runs inside the namespace: applies each [function, args] and reports value or error text.
DRIVER = r"""
import dataclasses, json, sys
from swarmd import ifaces, netaddr
out = []
for name, args in json.loads(sys.argv[1]):
    try:
        if name == "list_interfaces":
            value = [dataclasses.asdict(i) for i in ifaces.list_interfaces()]
        elif name == "join_host_port":
            value = netaddr.join_host_port(*args)
        else:  # a resolver, on the namespace's live links
            value = getattr(netaddr, name)(*args, interfaces=ifaces.list_interfaces())
        out.append({"ok": value})
    except netaddr.AddrError as e:
        out.append({"err": str(e), "type": type(e).__name__})
print(json.dumps(out))
"""

_counter = itertools.count()


def _run(cmd: list[str], timeout: float = IP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _netns_unavailable() -> str | None:
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    try:
        res = _run(["ip", "netns", "list"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ip netns unusable: {exc}"
    if res.returncode != 0:
        return f"ip netns unusable: {res.stderr.strip()}"
    return None


class NetNS:
    """One private namespace: ``ip`` commands into it, and module calls run inside it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"

    def ip(self, *args: str) -> None:
        res = _run(["ip", "-n", self.name, *args])
        assert res.returncode == 0, f"ip -n {self.name} {' '.join(args)}: {res.stderr.strip()}"

    def sysctl(self, key: str, value: str) -> None:
        """Write a per-namespace sysctl (/proc/sys/net follows the writer's network namespace)."""
        path = "/proc/sys/" + key.replace(".", "/")
        res = _run(["nsenter", f"--net={self.path}", "sh", "-c", f"echo {value} > {path}"])
        assert res.returncode == 0, res.stderr

    def call(self, *calls: tuple[Any, ...]) -> list[dict[str, Any]]:
        """Run ``netaddr.<fn>(*args)`` for each (fn, *args) in one interpreter inside the namespace."""
        payload = json.dumps([[fn, list(args)] for fn, *args in calls])
        res = _run(["nsenter", f"--net={self.path}", sys.executable, "-c", DRIVER, payload], timeout=PY_TIMEOUT)
        assert res.returncode == 0, res.stderr
        out: list[dict[str, Any]] = json.loads(res.stdout)
        return out

    def one(self, fn: str, *args: Any) -> dict[str, Any]:
        return self.call((fn, *args))[0]

    def wait_link_local(self, dev: str) -> None:
        """IPv6 link-local appears once both veth ends are up; poll briefly instead of sleeping blind."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            res = _run(["ip", "-n", self.name, "-6", "-o", "addr", "show", "dev", dev, "scope", "link"])
            if "fe80::" in res.stdout:
                return
            time.sleep(0.05)
        raise AssertionError(f"no link-local address on {dev}")


@pytest.fixture
def make_netns(request: pytest.FixtureRequest) -> Callable[[], NetNS]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)

    def make() -> NetNS:
        ns = NetNS(f"swna{os.getpid()}n{next(_counter)}")

        def delete() -> None:
            _run(["ip", "netns", "del", ns.name])

        # registered before creation: the namespace goes away even if setup fails half-way
        request.addfinalizer(delete)
        res = _run(["ip", "netns", "add", ns.name])
        assert res.returncode == 0, res.stderr
        return ns

    return make


@pytest.fixture
def sw3(make_netns: Callable[[], NetNS]) -> Iterator[NetNS]:
    """The transcripts' sw3 namespace."""
    ns = make_netns()
    ns.ip("link", "set", "lo", "up")
    for dev, peer, cidr in (("eth0", "p0", "10.99.0.2/24"), ("eth1", "p1", "10.98.0.2/24")):
        ns.ip("link", "add", dev, "type", "veth", "peer", "name", peer)
        ns.ip("addr", "add", cidr, "dev", dev)
    for dev in ("eth0", "p0", "eth1", "p1"):
        ns.ip("link", "set", dev, "up")
    for dev in ("eth0", "p0", "eth1", "p1"):
        ns.wait_link_local(dev)
    yield ns


def ok(result: dict[str, Any]) -> Any:
    assert "ok" in result, result
    return result["ok"]


def err(result: dict[str, Any]) -> str:
    assert "err" in result, result
    text: str = result["err"]
    return text


def test_list_interfaces_reads_the_namespace(sw3: NetNS) -> None:
    interfaces = {i["name"]: i for i in ok(sw3.one("list_interfaces"))}
    assert {"lo", "eth0", "p0", "eth1", "p1"} <= interfaces.keys()
    names = list(interfaces)
    assert names.index("eth0") < names.index("eth1")
    lo, eth0 = interfaces["lo"], interfaces["eth0"]
    assert lo["loopback"] and lo["is_device"] and lo["up"]
    assert lo["addrs"] == ["127.0.0.1", "::1"]
    assert not eth0["loopback"] and not eth0["is_device"] and eth0["up"]  # veth: not a "device" link
    assert eth0["addrs"][0] == "10.99.0.2"
    assert len(eth0["addrs"]) == 2 and eth0["addrs"][1].startswith("fe80::")
    sw3.ip("link", "set", "eth1", "down")
    eth1 = next(i for i in ok(sw3.one("list_interfaces")) if i["name"] == "eth1")
    assert not eth1["up"]


def test_two_interfaces(sw3: NetNS) -> None:
    res = sw3.call(
        ("resolve_system_addr",),
        ("resolve_advertise_addr", "", "2377"),
        ("resolve_advertise_addr", "eth0", "2377"),
        ("resolve_listen_addr", "eth1:2377"),
        ("resolve_listen_addr", "10.98.0.2:2377"),
        ("local_addr", "0.0.0.0", "10.99.0.2"),
        ("local_addr", "0.0.0.0", "192.0.2.55"),
        ("resolve_data_path_addr", "eth1"),
    )
    assert err(res[0]) == DIFFERENT and res[0]["type"] == "AutoDetectError"
    assert err(res[1]) == DIFFERENT
    assert ok(res[2]) == ["10.99.0.2", "2377"]
    assert ok(res[3]) == ["10.98.0.2", "2377"]   # --listen-addr eth1 does not choose the advertise address
    assert ok(res[4]) == ["10.98.0.2", "2377"]
    assert ok(res[5]) == "10.99.0.2"
    assert err(res[6]) == MUST_SPECIFY
    assert ok(res[7]) == "10.98.0.2"


def test_link_local_only_interface(sw3: NetNS) -> None:
    interfaces, adv = sw3.call(("list_interfaces",), ("resolve_advertise_addr", "p0", "2377"))
    (p0_ll,) = next(i for i in ok(interfaces) if i["name"] == "p0")["addrs"]
    assert p0_ll.startswith("fe80::")
    assert ok(adv) == [p0_ll, "2377"]


def test_two_ipv4_on_one_interface(sw3: NetNS) -> None:
    sw3.ip("addr", "add", "10.99.0.3/24", "dev", "eth0")
    same_if = ("could not choose an IP address to advertise since this system has multiple addresses on "
               "interface eth0 (10.99.0.2 and 10.99.0.3)" + HINT)
    auto, named = sw3.call(("resolve_advertise_addr", "", "2377"), ("resolve_advertise_addr", "eth0", "2377"))
    assert err(auto) == same_if
    assert err(named) == "interface eth0 has more than one IPv4 address (10.99.0.2 and 10.99.0.3)"
    sw3.ip("link", "set", "eth1", "down")
    assert err(sw3.one("resolve_advertise_addr", "", "2377")) == same_if


def test_labelled_ipv4_alias_counts_on_its_link(sw3: NetNS) -> None:
    """``label eth0:1`` hides the address from getifaddrs' eth0 entry, not from Docker's netlink view."""
    sw3.ip("addr", "add", "10.99.0.3/24", "dev", "eth0", "label", "eth0:1")
    assert err(sw3.one("resolve_advertise_addr", "eth0", "2377")) == (
        "interface eth0 has more than one IPv4 address (10.99.0.2 and 10.99.0.3)")


def test_no_usable_address_and_down_interface_named(sw3: NetNS) -> None:
    sw3.ip("link", "set", "eth0", "down")
    sw3.ip("link", "set", "eth1", "down")
    res = sw3.call(
        ("resolve_advertise_addr", "", "2377"),
        ("resolve_advertise_addr", "eth0", "2377"),
        ("local_addr", "0.0.0.0", "10.99.0.2"),
        ("local_addr", "0.0.0.0", "192.0.2.55"),
    )
    assert err(res[0]) == NO_IP
    assert ok(res[1]) == ["10.99.0.2", "2377"]   # a DOWN interface named explicitly is accepted
    assert ok(res[2]) == "10.99.0.2"
    assert err(res[3]) == MUST_SPECIFY


def test_interface_with_no_address(sw3: NetNS) -> None:
    sw3.sysctl("net.ipv6.conf.p1.disable_ipv6", "1")
    expected = "interface p1 has no usable IPv4 or IPv6 address"
    res = sw3.call(("resolve_advertise_addr", "p1", "2377"), ("resolve_listen_addr", "p1:2377"),
                   ("resolve_data_path_addr", "p1"))
    assert [err(r) for r in res] == [expected] * 3


def test_default_route_does_not_disambiguate(sw3: NetNS) -> None:
    sw3.ip("route", "add", "default", "via", "10.98.0.1", "dev", "eth1")
    assert err(sw3.one("resolve_advertise_addr", "", "2377")) == DIFFERENT


def test_ipv4_wins_over_global_ipv6(sw3: NetNS) -> None:
    sw3.ip("link", "set", "eth1", "down")
    sw3.ip("addr", "add", "fd77::2/64", "dev", "eth0", "nodad")
    assert ok(sw3.one("resolve_advertise_addr", "", "2377")) == ["10.99.0.2", "2377"]


def test_ipv6_only(sw3: NetNS) -> None:
    sw3.ip("link", "set", "eth1", "down")
    sw3.ip("addr", "add", "fd77::2/64", "dev", "eth0", "nodad")
    sw3.ip("addr", "del", "10.99.0.2/24", "dev", "eth0")
    res = sw3.call(
        ("resolve_advertise_addr", "", "2377"),
        ("resolve_advertise_addr", "fd77::2", "2377"),
        ("resolve_advertise_addr", "[fd77::2]:2377", "2377"),
        ("join_host_port", "fd77::2", "2377"),
        ("resolve_advertise_addr", "eth0", "2377"),
        ("local_addr", "::", "fd77::2"),
    )
    assert ok(res[0]) == ["fd77::2", "2377"]
    assert ok(res[1]) == ["fd77::2", "2377"]
    assert ok(res[2]) == ["fd77::2", "2377"]
    assert ok(res[3]) == "[fd77::2]:2377"
    # by name, the link-local address is a second IPv6 (Docker does not filter)
    assert err(res[4]).startswith("interface eth0 has more than one IPv6 address (fd77::2 and fe80::")
    assert ok(res[5]) == "fd77::2"


def test_two_ipv6_on_one_interface(sw3: NetNS) -> None:
    sw3.ip("link", "set", "eth1", "down")
    sw3.ip("addr", "del", "10.99.0.2/24", "dev", "eth0")
    sw3.ip("addr", "add", "fd77::2/64", "dev", "eth0", "nodad")
    sw3.ip("addr", "add", "fd77::3/64", "dev", "eth0", "nodad")
    named, auto = sw3.call(("resolve_advertise_addr", "eth0", "2377"), ("resolve_advertise_addr", "", "2377"))
    assert err(named) == "interface eth0 has more than one IPv6 address (fd77::3 and fd77::2)"
    assert err(auto) == ("could not choose an IP address to advertise since this system has multiple "
                         "addresses on interface eth0 (fd77::3 and fd77::2)" + HINT)


def test_global_address_on_loopback_device_takes_the_device_path(sw3: NetNS) -> None:
    """``lo`` is a netlink "device" link: a global address on it wins and the veths are never looked at."""
    sw3.ip("addr", "add", "10.99.0.9/32", "dev", "lo")
    res = sw3.call(("resolve_system_addr",), ("local_addr", "0.0.0.0", "192.0.2.55"))
    assert ok(res[0]) == "10.99.0.9"
    assert ok(res[1]) == "10.99.0.9"
    sw3.ip("link", "set", "lo", "down")   # a DOWN device does not count: back to the veth fallback
    assert err(sw3.one("resolve_system_addr")) == DIFFERENT


def test_single_interface_namespace(make_netns: Callable[[], NetNS]) -> None:
    """Like the transcripts' sw1: one veth, one IPv4; init without flags advertises it."""
    ns = make_netns()
    ns.ip("link", "set", "lo", "up")
    ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "p0")
    ns.ip("addr", "add", "10.99.0.2/24", "dev", "eth0")
    ns.ip("link", "set", "eth0", "up")   # peer stays DOWN: no carrier, no link-local
    res = ns.call(
        ("resolve_advertise_addr", "", "2377"),
        ("resolve_advertise_addr", "lo", "2377"),
        ("local_addr", "0.0.0.0", "127.0.0.1"),
        ("resolve_advertise_addr", "p0", "2377"),
    )
    assert ok(res[0]) == ["10.99.0.2", "2377"]
    assert ok(res[1]) == ["127.0.0.1", "2377"]
    assert ok(res[2]) == "127.0.0.1"
    assert err(res[3]) == "interface p0 has no usable IPv4 or IPv6 address"


def test_links_and_addresses_match_iproute2_in_the_namespace(sw3: NetNS) -> None:
    """pyroute2's view inside the namespace is iproute2's: labelled alias and IPv6 on their link, in order."""
    from tests.unit.test_ifaces import iproute2_view

    sw3.ip("addr", "add", "10.99.0.3/24", "dev", "eth0", "label", "eth0:1")
    sw3.ip("addr", "add", "fd77::2/64", "dev", "eth1", "nodad")
    assert ok(sw3.one("list_interfaces")) == iproute2_view("-n", sw3.name)


def test_a_link_name_that_is_not_utf8(make_netns: Callable[[], NetNS]) -> None:
    """The kernel takes any bytes in a link name; such a link is listed and resolves by its name."""
    ns = make_netns()
    name = b"w\xffx".decode("utf-8", "surrogateescape")
    ns.ip("link", "add", name, "type", "veth", "peer", "name", "p0")
    ns.ip("addr", "add", "10.99.0.2/24", "dev", name)
    interfaces, adv = ns.call(("list_interfaces",), ("resolve_advertise_addr", name, "2377"))
    assert next(i for i in ok(interfaces) if i["name"] == name)["addrs"] == ["10.99.0.2"]
    assert ok(adv) == ["10.99.0.2", "2377"]
