"""Network partitions between managers in network namespaces: a leader cut off in a minority
never answers a read with state from before the partition (it refuses with Docker's no-leader
text once the majority may have moved on), whether the read reaches it directly or through a
follower on its side; and writers and readers through every manager keep the invariants of
``tests.faultlib`` while partitions come and go."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faultlib import leader, load, progress
from tests.harness import leader_of, wait_for
from tests.netns.lab import Lab, NsDaemon, unavailable

pytestmark = [pytest.mark.netns, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

NO_LEADER = ("Error response from daemon: rpc error: code = Unknown desc = The swarm does not have a leader. It's "
             "possible that too few managers are online. Make sure more than half of the managers are online.\n")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(5, subnet="10.232.0") as lab:
        yield lab


def start_managers(lab: Lab, tmp_path: Path, count: int) -> list[NsDaemon]:
    hosts = [NsDaemon(lab, i, tmp_path) for i in range(1, count + 1)]
    for h in hosts:
        h.start()
    hosts[0].ok("init", "--advertise-addr", "eth0")
    token = hosts[0].ok("join-token", "-q", "manager").strip()
    for h in hosts[1:]:
        assert h.ok("join", "--token", token, "--advertise-addr", "eth0",
                    f"{lab.ip(1)}:2377") == "This node joined a swarm as a manager.\n"
    return hosts


def check_reads(readers: list[NsDaemon], writer: NsDaemon, budget: float) -> tuple[int, int]:
    """Write through the majority and read through the minority in turns for ``budget`` seconds.
    Every successful read must show every write acknowledged before it began; every failed
    one must be the no-leader text. Returns (acknowledged writes, refused reads)."""
    acked: list[str] = []
    refused = 0
    deadline = time.monotonic() + budget
    n = 0
    while time.monotonic() < deadline:
        n += 1
        name = f"part-{n}"
        if writer.ctl("network", "create", name).returncode == 0:
            acked.append(name)
        for reader in readers:
            before = list(acked)
            r = reader.ctl("network", "ls")
            if r.returncode == 0:
                missing = [x for x in before if x not in r.stdout]
                assert not missing, f"stale read through {reader.hostname}: {missing} acknowledged but not shown"
            else:
                assert r.stderr == NO_LEADER, r.stderr
                refused += 1
    return len(acked), refused


def test_a_cut_off_leader_refuses_reads_instead_of_serving_old_state(lab: Lab, tmp_path: Path) -> None:
    hosts = start_managers(lab, tmp_path, 3)
    try:
        leader = leader_of(hosts)
        majority = [h for h in hosts if h is not leader]
        lab.link(hosts.index(leader) + 1, up=False)
        acked, refused = check_reads([leader], majority[0], budget=6.0)
        assert acked > 0 and refused > 0
        lab.link(hosts.index(leader) + 1, up=True)
        wait_for(lambda: "part-1" in leader.ctl("network", "ls").stdout, 20, step=0.2, what="the old leader to catch up")
    finally:
        for h in hosts:
            h.stop()


def test_a_follower_on_the_minority_side_forwards_no_stale_read(lab: Lab, tmp_path: Path) -> None:
    hosts = start_managers(lab, tmp_path, 5)
    try:
        leader = leader_of(hosts)
        follower = next(h for h in hosts if h is not leader)
        minority = [leader, follower]
        majority = [h for h in hosts if h not in minority]
        lab.partition([hosts.index(h) + 1 for h in minority], [hosts.index(h) + 1 for h in majority])
        acked, refused = check_reads(minority, majority[0], budget=6.0)
        assert acked > 0 and refused > 0
        lab.heal()
        for h in minority:
            wait_for(lambda h=h: "part-1" in h.ctl("network", "ls").stdout, 20, step=0.2, what="catching up")
    finally:
        for h in hosts:
            h.stop()


def test_writers_and_readers_through_every_manager_survive_partitions(lab: Lab, tmp_path: Path) -> None:
    hosts = start_managers(lab, tmp_path, 5)
    index = {h.hostname: i for i, h in enumerate(hosts, start=1)}
    try:
        with load(hosts) as ledger:
            progress(ledger, 5, 30, "writes before any partition")
            for _ in range(2):
                # The leader and one follower on one side, the other three on the other.
                old = leader(hosts)
                pair = [old, next(h for h in hosts if h is not old)]
                lab.partition([index[h.hostname] for h in pair],
                              [index[h.hostname] for h in hosts if h not in pair])
                progress(ledger, len(ledger.acked) + 3, 30, "writes on the majority side")
                lab.heal()
                progress(ledger, len(ledger.acked) + 3, 30, "writes after the partition healed")
    finally:
        lab.heal()
        for h in hosts:
            h.stop()
