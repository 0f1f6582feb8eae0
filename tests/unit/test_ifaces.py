"""The live link and address reader (swarmd.ifaces over pyroute2) against the kernel itself."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from swarmd import ifaces, netaddr

PY_TIMEOUT = 60


def iproute2_view(*ip_prefix: str) -> list[dict[str, Any]]:
    """What iproute2 (``ip -d -j addr``) reports, in the shape of ``netaddr.Interface``."""
    res = subprocess.run(["ip", *ip_prefix, "-d", "-j", "addr", "show"], capture_output=True, text=True,
                         timeout=10, check=True)
    return [{"name": link["ifname"], "up": "UP" in link["flags"], "loopback": "LOOPBACK" in link["flags"],
             "is_device": "info_kind" not in link.get("linkinfo", {}),
             "addrs": [a["local"] for a in link.get("addr_info", []) if a["family"] == "inet"]
             + [a["local"] for a in link.get("addr_info", []) if a["family"] == "inet6"]}
            for link in json.loads(res.stdout)]


def ours() -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(i), "addrs": list(i.addrs)} for i in ifaces.list_interfaces()]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PY_TIMEOUT,
                          check=False)


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 is not installed")
def test_links_and_addresses_match_iproute2() -> None:
    """Names, flags, device-ness and every address in the kernel's order, as ``ip`` reads them."""
    for _ in range(3):  # something else may add or remove a link between the two reads
        if ours() == iproute2_view():
            return
    assert ours() == iproute2_view()


def test_importing_netaddr_or_ifaces_loads_no_pyroute2_until_a_lookup() -> None:
    res = _python("import sys\n"
                  "from swarmd import ifaces, netaddr\n"
                  "netaddr.normalize_listen_flag('eth0:4567')\n"
                  "print('pyroute2' in sys.modules)\n"
                  "ifaces.list_interfaces()\n"
                  "print('pyroute2' in sys.modules)\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "True"]


def test_addresses_survive_pysyncobj_replacing_socket_inet_ntop() -> None:
    """The daemon imports pysyncobj (which swaps in a Windows-only inet_ntop) before its first lookup."""
    res = _python("import socket, pysyncobj\n"
                  "replaced = socket.inet_ntop\n"
                  "from swarmd import ifaces\n"
                  "(lo,) = [i for i in ifaces.list_interfaces() if i.name == 'lo']\n"
                  "print(lo.addrs[0], socket.inet_ntop is replaced)\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["127.0.0.1", "True"]  # and pysyncobj's replacement is left in place


def test_an_address_pyroute2_cannot_decode_is_an_error_not_a_missing_address() -> None:
    """pyroute2 imported after pysyncobj by someone else leaves addresses undecoded: that must fail."""
    res = _python("import pysyncobj, pyroute2\n"
                  "from swarmd import ifaces, netaddr\n"
                  "try:\n"
                  "    ifaces.list_interfaces()\n"
                  "except netaddr.AddrError as e:\n"
                  "    print(e)\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("could not list network interfaces: an address of link ")
    assert res.stdout.rstrip().endswith(" could not be decoded")
