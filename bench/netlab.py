"""Hosts of a lab on one machine: network namespaces joined by a bridge that lives in a namespace
of its own, so no lab traffic touches the machine's interfaces. Needs root and iproute2.

    with Lab("bsv", 3, "10.207.0") as lab:    # hosts bsv1..bsv3 at 10.207.0.1..3/24
        lab.spawn(1, ["dockerd", ...], log)   # runs in host 1's network namespace

Only the network namespace is switched (``nsenter --net``): ``ip netns exec`` would remount /sys
and hide the cgroup tree from what runs inside. Processes go through ``clusterlib.PROCS``, so the
benches' usual clean-up stops them by PID.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from clusterlib import PROCS, BenchError


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Lab:
    def __init__(self, name: str, hosts: int, subnet: str) -> None:
        self.name, self.hosts, self.subnet = name, hosts, subnet
        self.switch = f"{name}sw"

    def ns(self, i: int) -> str:
        return f"{self.name}{i}"

    def ip(self, i: int) -> str:
        return f"{self.subnet}.{i}"

    def __enter__(self) -> Lab:
        self.down()
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i in range(1, self.hosts + 1):
            ns, host_end, switch_end = self.ns(i), f"{self.name}{i}a", f"{self.name}{i}b"
            _ip("netns", "add", ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", switch_end)
            _ip("link", "set", host_end, "netns", ns)
            _ip("link", "set", switch_end, "netns", self.switch)
            _ip("-n", ns, "link", "set", host_end, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "set", switch_end, "master", "br0")
            _ip("-n", self.switch, "link", "set", switch_end, "up")
        return self

    def argv(self, i: int, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns(i)}", *argv]

    def spawn(self, i: int, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """A long-running process in host i (nsenter execs it: the PID is the program's)."""
        with open(log, "ab") as logf:
            return PROCS.spawn(self.argv(i, argv), stdin=subprocess.DEVNULL, stdout=logf,
                               stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, i: int, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(i, argv), capture_output=True, text=True, **kwargs)

    def down(self) -> None:
        """Deleting a namespace takes its veth end, and so the pair, with it."""
        for i in range(1, self.hosts + 1):
            subprocess.run(["ip", "netns", "del", self.ns(i)], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True)

    def __exit__(self, *exc: object) -> None:
        self.down()
