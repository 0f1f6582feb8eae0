"""Demoting or removing the leader hands leadership over first; a demoted manager keeps no
manager secret; role changes that fail are retried (real daemons, real Raft)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from swarmd.ca import keyfile
from tests.harness import Daemon, join, leader_of, node_rows, wait_for

Factory = Callable[..., Daemon]


def managers_of(d: Daemon) -> dict[str, str]:
    return {name: row[2] for name, row in node_rows(d).items() if row[2]}


def secrets_of(m: Daemon) -> list[bytes]:
    """What a demoted manager must not keep anywhere: the CA key, both join tokens' secrets, the
    unlock key, and the Raft data key of the key file."""
    found = [m.ok("join-token", "-q", role).strip().rsplit("-", 1)[1].encode() for role in ("worker", "manager")]
    unlock = m.ctl("unlock-key", "-q")
    if unlock.returncode == 0 and unlock.stdout.strip():
        found.append(unlock.stdout.strip()[9:].encode())
    return found


def assert_keeps_no_manager_secret(node: Daemon, secrets: list[bytes], dek: bytes | None) -> None:
    assert not (node.state_dir / "raft").exists()
    key = keyfile.decode((node.state_dir / "certificates" / "swarm-node.key").read_bytes(), None)
    assert key.dek is None and key.pending_dek is None
    for path in node.state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in secrets:
                assert secret not in data, path
            assert b"BEGIN EC PRIVATE KEY" not in data, path  # the CA key is stored in this form
            if dek is not None:
                assert base64.b64encode(dek) not in data, path


def data_key(d: Daemon, kek: bytes | None = None) -> bytes | None:
    return keyfile.decode((d.state_dir / "certificates" / "swarm-node.key").read_bytes(), kek).dek


def test_demoting_the_leader_of_two_hands_leadership_over(daemons: Factory) -> None:
    m1, m2 = daemons("m1"), daemons("m2")
    m1.init()
    join(m2, m1, "manager")
    assert leader_of([m1, m2]) is m1
    secrets, dek = secrets_of(m1), data_key(m1)
    r = m1.ctl("node", "demote", "self")
    assert (r.returncode, r.stdout, r.stderr) == (0, "Manager self demoted in the swarm.\n", "")
    # The other manager leads, and the demoted one is a worker that keeps nothing of Raft.
    assert managers_of(m2) == {"m2": "Leader"}
    wait_for(lambda: m1.info().control_available is False and not (m1.state_dir / "raft").exists(), 15,
             what="the demoted manager to become a worker")
    assert_keeps_no_manager_secret(m1, secrets, dek)
    m2.ok("network", "create", "after-demotion")
    wait_for(lambda: node_rows(m2)["m1"][0] == "Ready", 15, what="the demoted node's session")


def test_demoting_leader_after_leader_keeps_a_leader(daemons: Factory) -> None:
    ms = [daemons(f"m{i}") for i in (1, 2, 3)]
    ms[0].init()
    for m in ms[1:]:
        join(m, ms[0], "manager")
    first = leader_of(ms)
    follower = next(m for m in ms if m is not first)
    r = follower.ctl("node", "demote", first.hostname)  # by name, from another manager
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    rest = [m for m in ms if m is not first]
    second = leader_of(rest)
    r = second.ctl("node", "demote", "self")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    last = next(m for m in rest if m is not second)
    assert managers_of(last) == {last.hostname: "Leader"}
    last.ok("network", "create", "still-led")


def test_leave_of_the_leader_hands_leadership_over(daemons: Factory) -> None:
    ms = [daemons(f"m{i}") for i in (1, 2, 3)]
    ms[0].init()
    for m in ms[1:]:
        join(m, ms[0], "manager")
    leader = leader_of(ms)
    assert leader.ok("leave", "--force") == "Node left the swarm.\n"
    rest = [m for m in ms if m is not leader]
    new = leader_of(rest)
    assert node_rows(new)[leader.hostname][0] == "Down"
    new.ok("network", "create", "after-leave")


def test_a_demoted_manager_of_an_autolocked_swarm_keeps_no_secret(daemons: Factory, tmp_path: Path) -> None:
    m1, m2 = daemons("m1"), daemons("m2")
    m1.init("--autolock")
    join(m2, m1, "manager")
    unlock = m1.ok("unlock-key", "-q").strip()
    kek = keyfile.parse_unlock_key(unlock)
    wait_for(lambda: keyfile.is_encrypted((m2.state_dir / "certificates" / "swarm-node.key").read_bytes()), 15,
             what="the new manager's key file sealed")
    secrets, dek = secrets_of(m1), data_key(m2, kek)
    m1.ok("node", "demote", "m2")
    wait_for(lambda: not (m2.state_dir / "raft").exists(), 15, what="the demoted manager to drop its raft data")
    wait_for(lambda: not keyfile.is_encrypted((m2.state_dir / "certificates" / "swarm-node.key").read_bytes()), 15,
             what="the demoted node's key file stored plain")
    assert_keeps_no_manager_secret(m2, secrets, dek)
    m2.restart()
    assert m2.info().local_node_state == "active"


def test_a_worker_that_starts_with_leftover_raft_data_wipes_it(daemons: Factory) -> None:
    m1, m2 = daemons("m1"), daemons("m2")
    m1.init()
    join(m2, m1, "manager")
    secrets = secrets_of(m1)
    m2.stop()
    leftover = m2.state_dir.parent / "raft-copy"
    import shutil

    shutil.copytree(m2.state_dir / "raft", leftover)
    m2.start()
    m1.ok("node", "demote", "m2")
    wait_for(lambda: not (m2.state_dir / "raft").exists(), 15, what="the demotion")
    m2.stop()
    shutil.copytree(leftover, m2.state_dir / "raft")  # as if it had crashed before wiping it
    shutil.rmtree(leftover)
    m2.start()
    assert_keeps_no_manager_secret(m2, secrets, None)
