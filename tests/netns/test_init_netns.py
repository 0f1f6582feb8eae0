"""``swarmctl init`` end to end on a host with two interfaces (a namespace like the transcripts'
sw3): the real daemon runs inside the namespace, with its default listen address 0.0.0.0:2377,
which only exists inside that namespace."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import SWARMCTL, SWARMD, stop_process, wait_for
from tests.netns.test_netaddr_netns import NetNS, make_netns, sw3  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def ctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SWARMCTL, "-H", f"unix://{sock}", *args], capture_output=True, text=True,
                          timeout=30, input="")


def test_init_on_a_two_interface_host(sw3: NetNS, tmp_path: Path) -> None:  # noqa: F811
    sock = tmp_path / "swarmd.sock"
    log = open(tmp_path / "swarmd.log", "wb")
    proc = subprocess.Popen(["nsenter", f"--net={sw3.path}", SWARMD, "--state-dir", str(tmp_path / "state"),
                             "--control-socket", str(sock), "--hostname", "sw3"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: ctl(sock, "info").returncode == 0, 15, what="swarmd in the namespace")
        r = ctl(sock, "init")
        assert r.returncode == 1
        assert r.stderr == ("Error response from daemon: could not choose an IP address to advertise since this "
                            "system has multiple addresses on different interfaces (10.99.0.2 on eth0 and "
                            "10.98.0.2 on eth1) - specify one with --advertise-addr\n")
        r = ctl(sock, "init", "--listen-addr", "eth1")
        assert r.returncode == 1 and "multiple addresses on different interfaces" in r.stderr

        sw3.ip("addr", "add", "10.99.0.3/24", "dev", "eth0")
        r = ctl(sock, "init", "--advertise-addr", "eth0")
        assert (r.returncode, r.stderr) == (1, "Error response from daemon: interface eth0 has more than one IPv4 "
                                               "address (10.99.0.2 and 10.99.0.3)\n")
        sw3.ip("addr", "del", "10.99.0.3/24", "dev", "eth0")

        r = ctl(sock, "init", "--advertise-addr", "eth0")
        assert r.returncode == 0, r.stderr
        assert " 10.99.0.2:2377\n\n" in r.stdout
        info = ctl(sock, "info").stdout
        assert "  Node Address: 10.99.0.2\n" in info and "   10.99.0.2:2377\n" in info
        assert ctl(sock, "leave", "--force").returncode == 0
    finally:
        stop_process(proc)
        log.close()
