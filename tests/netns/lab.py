"""Hosts in network namespaces joined by a bridge that lives in its own namespace, so no traffic
touches the machine's own interfaces. Root only; every namespace is deleted on close."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.harness import SWARMD, Daemon


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=15)


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class Lab:
    def __init__(self, hosts: int, subnet: str = "10.231.0") -> None:
        self.tag = f"sw{os.getpid() % 100000}"
        self.hosts, self.subnet = hosts, subnet
        self.bridge_ns = f"{self.tag}br"

    def ns(self, i: int) -> str:
        return f"{self.tag}h{i}"

    def ip(self, i: int) -> str:
        return f"{self.subnet}.{i}"

    def __enter__(self) -> Lab:
        self.close()
        try:
            sh("ip", "netns", "add", self.bridge_ns)
            sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
            for i in range(1, self.hosts + 1):
                ns, a, b = self.ns(i), f"{self.tag}{i}a", f"{self.tag}{i}b"
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
                sh("ip", "link", "set", a, "netns", ns)
                sh("ip", "link", "set", b, "netns", self.bridge_ns)
                sh("ip", "-n", ns, "link", "set", a, "name", "eth0")
                sh("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "-n", self.bridge_ns, "link", "set", b, "master", "br0")
                sh("ip", "-n", self.bridge_ns, "link", "set", b, "up")
        except BaseException:
            self.close()
            raise
        return self

    def link(self, i: int, up: bool) -> None:
        """Cut or restore host i's cable (its end on the bridge)."""
        sh("ip", "-n", self.bridge_ns, "link", "set", f"{self.tag}{i}b", "up" if up else "down")

    def partition(self, *groups: list[int]) -> None:
        """Cut every path between hosts of different groups (a blackhole route each way inside
        the hosts' namespaces); hosts of one group still reach each other."""
        for group in groups:
            for other in groups:
                if other is not group:
                    for i in group:
                        for j in other:
                            sh("ip", "-n", self.ns(i), "route", "replace", "blackhole", f"{self.ip(j)}/32")

    def heal(self) -> None:
        for i in range(1, self.hosts + 1):
            for j in range(1, self.hosts + 1):
                subprocess.run(["ip", "-n", self.ns(i), "route", "del", "blackhole", f"{self.ip(j)}/32"],
                               capture_output=True, timeout=15)

    def close(self) -> None:
        for i in range(1, self.hosts + 1):
            subprocess.run(["ip", "netns", "del", self.ns(i)], capture_output=True, timeout=15)
        subprocess.run(["ip", "netns", "del", self.bridge_ns], capture_output=True, timeout=15)

    def __exit__(self, *exc: object) -> None:
        self.close()


class NsDaemon(Daemon):
    """A swarmd inside host i's namespace; its control socket is still a file we can reach."""

    def __init__(self, lab: Lab, i: int, root: Path) -> None:
        super().__init__(root, f"h{i}", hostname=f"h{i}")
        self.ip = lab.ip(i)
        self.listen = f"{self.ip}:2377"
        self.netns = lab.ns(i)

    def start(self, wait: bool = True, *args: str) -> Daemon:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", SWARMD, "--state-dir", str(self.state_dir),
             "--control-socket", str(self.socket), "--hostname", self.hostname, "--log-level", "debug", *args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        return super().stop(sig, timeout)
