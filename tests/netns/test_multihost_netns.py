"""Hosts joined over veth links through a bridge; a manager cut off by taking its link down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import leader_of, node_rows, wait_for
from tests.netns.lab import Lab, NsDaemon, unavailable

pytestmark = [pytest.mark.netns, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

NO_LEADER = ("Error response from daemon: rpc error: code = Unknown desc = The swarm does not have a leader. It's "
             "possible that too few managers are online. Make sure more than half of the managers are online.\n")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(4) as lab:
        yield lab


def test_two_hosts_over_a_veth_link(lab: Lab, tmp_path: Path) -> None:
    h1, h2 = NsDaemon(lab, 1, tmp_path), NsDaemon(lab, 2, tmp_path)
    try:
        h1.start(), h2.start()
        h1.ok("init", "--advertise-addr", "eth0")
        token = h1.ok("join-token", "-q", "worker").strip()
        # No --advertise-addr: the manager records the address it sees.
        assert h2.ok("join", "--token", token, f"{lab.ip(1)}:2377") == "This node joined a swarm as a worker.\n"
        wait_for(lambda: node_rows(h1).get("h2", [""])[0] == "Ready", 10, what="h2 Ready")
        assert f'"Addr": "{lab.ip(2)}"' in h1.ok("node", "inspect", "h2")
        assert h2.ok("leave") == "Node left the swarm.\n"
        assert node_rows(h1)["h2"][0] == "Down"
    finally:
        h1.stop(), h2.stop()


def test_a_partitioned_manager_loses_writes_and_catches_up(lab: Lab, tmp_path: Path) -> None:
    hosts = [NsDaemon(lab, i, tmp_path) for i in (1, 2, 3)]
    try:
        for h in hosts:
            h.start()
        hosts[0].ok("init", "--advertise-addr", "eth0")
        for h in hosts[1:]:
            token = hosts[0].ok("join-token", "-q", "manager").strip()
            assert h.ok("join", "--token", token, "--advertise-addr", "eth0",
                        f"{lab.ip(1)}:2377") == "This node joined a swarm as a manager.\n"
        leader = leader_of(hosts)
        cut = hosts.index(leader) + 1
        majority = [h for h in hosts if h is not leader]
        lab.link(cut, up=False)
        started = time.monotonic()
        errors: list[str] = []

        def write() -> bool:
            r = majority[0].ctl("network", "create", "during-partition")
            errors.append(r.stderr)
            return r.returncode == 0
        try:
            wait_for(write, 15, step=0.1, what="a write on the majority side")
        except AssertionError:
            raise AssertionError(f"no write on the majority side; last error: {errors[-1:]}") from None
        assert time.monotonic() - started < 10
        assert leader_of(majority) in majority
        # The cut-off manager steps down and refuses writes with Docker's text.
        wait_for(lambda: leader.ctl("network", "create", "lost").stderr == NO_LEADER, 15, step=0.2,
                 what="the cut-off manager to refuse writes")
        lab.link(cut, up=True)
        wait_for(lambda: "during-partition" in leader.ctl("network", "ls").stdout, 20, step=0.2,
                 what="the cut-off manager to catch up")
        assert "lost" not in majority[0].ok("network", "ls")
    finally:
        for h in hosts:
            h.stop()
