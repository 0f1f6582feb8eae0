"""Encryption at rest and autolock with real daemons: Docker's texts for every case, the key file's
protection following the cluster setting, and nothing secret in clear under raft/."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from swarmd.ca import keyfile
from tests.harness import Daemon, join, node_rows, wait_for

LOCKED = ('Error response from daemon: Swarm is encrypted and needs to be unlocked before it can be used. '
          'Please use "swarmctl unlock" to unlock it.\n')
UNLOCK_BLOCK = re.compile(
    r"To unlock a swarm manager after it restarts, run the `swarmctl unlock`\n"
    r"command and provide the following key:\n\n"
    r"    (SWMKEY-1-[A-Za-z0-9+/]{43})\n\n"
    r"Remember to store this key in a password manager, since without it you\n"
    r"will not be able to restart the manager.\n")


def key_file(d: Daemon) -> bytes:
    return (d.state_dir / "certificates" / "swarm-node.key").read_bytes()


def local_role(d: Daemon) -> str | None:
    try:
        return str(json.loads((d.state_dir / "state.json").read_text())["role"])
    except (OSError, ValueError, KeyError):
        return None


def test_init_autolock_restart_is_locked_until_unlocked(daemon: Daemon) -> None:
    out = daemon.init("--autolock")
    match = UNLOCK_BLOCK.search(out)
    assert match and out.endswith(match.group(0))
    assert "and follow the instructions.\nTo unlock a swarm manager" in out
    key = match.group(1)
    assert daemon.ok("unlock-key", "-q") == key + "\n"
    assert keyfile.is_encrypted(key_file(daemon))
    node_id = daemon.info().node_id

    daemon.restart()
    for args in (("node", "ls"), ("join-token", "worker"), ("update", "--autolock=false"), ("leave",)):
        r = daemon.ctl(*args)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", LOCKED), args
    r = daemon.ctl("unlock-key")
    assert (r.returncode, r.stderr) == (1, "could not fetch unlock key: " + LOCKED)
    doc = json.loads(daemon.ok("info", "--format", "json"))
    assert doc == {"NodeID": "", "NodeAddr": daemon.ip, "LocalNodeState": "locked", "ControlAvailable": False,
                   "Error": LOCKED[len("Error response from daemon: "):-1], "RemoteManagers": None}
    assert " Swarm: locked\n" in daemon.ok("info")

    wrong = daemon.ctl("unlock", input="SWMKEY-1-" + "A" * 43 + "\n")
    assert (wrong.returncode, wrong.stderr) == (
        1, "Error response from daemon: swarm could not be unlocked: invalid key provided\n")
    for garbage in ("notakey\n", ""):
        r = daemon.ctl("unlock", input=garbage)
        assert (r.returncode, r.stderr) == (1, "Error response from daemon: invalid key string\n"), garbage
    assert daemon.info().local_node_state == "locked"

    r = daemon.ctl("unlock", input=key + "\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert daemon.info().node_id == node_id
    assert node_rows(daemon)[daemon.hostname] == ["Ready", "Active", "Leader"]
    again = daemon.ctl("unlock", input=key + "\n")
    assert (again.returncode, again.stderr) == (1, "Error: swarm is not locked\n")
    assert key not in daemon.log() and key[9:] not in daemon.log()


def test_update_autolock_and_unlock_key_rotation(manager: Daemon) -> None:
    assert not keyfile.is_encrypted(key_file(manager))
    clear_data_key = keyfile.decode(key_file(manager), None).dek
    r = manager.ctl("unlock-key")
    assert (r.returncode, r.stderr) == (1, "no unlock key is set\n")
    r = manager.ctl("unlock-key", "--rotate")
    assert (r.returncode, r.stderr) == (1, "cannot rotate because autolock is not turned on\n")

    out = manager.ok("update", "--autolock=true")
    assert out.startswith("Swarm updated.\nTo unlock a swarm manager")
    match = UNLOCK_BLOCK.search(out)
    assert match
    first = match.group(1)
    def data_keys() -> tuple[bytes | None, bytes | None] | None:
        try:
            k = keyfile.decode(key_file(manager), keyfile.parse_unlock_key(first))
        except keyfile.KeyFileError:
            return None
        return k.dek, k.pending_dek
    # Turning autolock on also replaces the data key that was stored in clear until now.
    dek, pending = wait_for(lambda: (keys := data_keys()) and keys[1] is None and keys, 10,
                            what="the key file sealed and the data key rotated")
    assert dek != clear_data_key and pending is None
    assert "raft journal and snapshot sealed under a new data key" in manager.log()
    assert manager.ok("unlock-key") == UNLOCK_BLOCK.search(manager.ok("unlock-key")).group(0)  # type: ignore[union-attr]
    assert "  Autolock Managers: true\n" in manager.ok("info")
    assert manager.ok("update", "--autolock=true") == "Swarm updated.\n"  # already on: same key
    assert manager.ok("unlock-key", "-q") == first + "\n"

    rotated = manager.ok("unlock-key", "--rotate")
    assert rotated.startswith("Successfully rotated manager unlock key.\nTo unlock a swarm manager")
    second = UNLOCK_BLOCK.search(rotated).group(1)  # type: ignore[union-attr]
    assert second != first
    third = manager.ok("unlock-key", "--rotate", "-q").strip()
    assert keyfile.parse_unlock_key(third) and third not in (first, second)

    def sealed_under(key: str) -> bool:
        try:
            keyfile.decode(key_file(manager), keyfile.parse_unlock_key(key))
            return True
        except keyfile.KeyFileError:
            return False
    wait_for(lambda: sealed_under(third), 5, what="the key file to be resealed under the rotated key")

    manager.restart()
    assert manager.info().local_node_state == "locked"
    old = manager.ctl("unlock", input=first + "\n")
    assert old.stderr == "Error response from daemon: swarm could not be unlocked: invalid key provided\n"
    manager.ok("unlock", input=third + "\n")
    assert manager.info().local_node_state == "active"

    assert manager.ok("update", "--autolock=false") == "Swarm updated.\n"
    wait_for(lambda: not keyfile.is_encrypted(key_file(manager)), 5, what="the key file to be stored plain")
    r = manager.ctl("unlock-key")
    assert (r.returncode, r.stderr) == (1, "no unlock key is set\n")
    manager.restart()
    assert manager.info().local_node_state == "active"
    for key in (first, second, third):
        assert key[9:] not in manager.log()


def test_update_flags_and_errors(manager: Daemon) -> None:
    helptext = manager.ok("update")
    assert helptext.startswith("Usage: swarmctl update [OPTIONS]") and "--autolock" in helptext
    r = manager.ctl("update", "--cert-expiry", "30m")
    assert (r.returncode, r.stderr) == (1, "Error response from daemon: rpc error: code = InvalidArgument desc = "
                                           "minimum certificate expiry time is: 1h0m0s\n")
    r = manager.ctl("update", "--autolock=maybe")
    assert r.returncode == 125 and r.stderr.startswith(
        'invalid argument "maybe" for "--autolock" flag: strconv.ParseBool: parsing "maybe": invalid syntax')
    assert manager.ok("update", "--cert-expiry", "2h", "--dispatcher-heartbeat", "3s",
                      "--task-history-limit", "7", "--snapshot-interval", "500") == "Swarm updated.\n"
    info = manager.ok("info")
    assert "  Expiry Duration: 2 hours\n" in info
    assert "  Heartbeat Period: 3 seconds\n" in info
    assert "  Task History Retention Limit: 7\n" in info
    assert "  Snapshot Interval: 500\n" in info


def test_unlock_outside_a_locked_manager(daemons: Callable[..., Daemon]) -> None:
    inactive = daemons("inactive")
    r = inactive.ctl("unlock", input="x\n")
    assert (r.returncode, r.stderr) == (1, "Error: This node is not part of a swarm\n")
    m = daemons("m")
    m.init()
    w = daemons("w")
    join(w, m)
    r = w.ctl("unlock", input="x\n")
    assert (r.returncode, r.stderr) == (1, "Error: swarm is not locked\n")
    r = w.ctl("unlock-key")
    assert r.stderr.startswith("could not fetch unlock key: Error response from daemon: This node is not a swarm "
                               "manager. Worker nodes")


def test_nothing_secret_in_clear_under_raft(daemons: Callable[..., Daemon]) -> None:
    m = daemons("m")
    m.init("--autolock")
    w = daemons("w")
    join(w, m)
    m.ok("join-token", "--rotate", "worker")
    m.ok("network", "create", "--driver", "overlay", "secretnet")
    tokens = [m.ok("join-token", "-q", r).strip() for r in ("worker", "manager")]
    unlock = m.ok("unlock-key", "-q").strip()
    cluster_key_marker = b"BEGIN EC PRIVATE KEY"
    raft = m.state_dir / "raft"
    blobs = {p.name: p.read_bytes() for p in raft.iterdir() if p.is_file()}
    assert "journal" in blobs
    for name, data in blobs.items():
        for token in tokens:
            assert token.rsplit("-", 1)[1].encode() not in data, name
        assert unlock[9:].encode() not in data, name
        assert cluster_key_marker not in data and b"PRIVATE KEY" not in data, name
        assert b"secretnet" not in data and b"ingress" not in data, name


def test_locked_manager_of_three_catches_up_after_unlock(daemons: Callable[..., Daemon]) -> None:
    m1 = daemons("m1")
    m1.init()
    m2, m3 = daemons("m2"), daemons("m3")
    join(m2, m1, "manager")
    join(m3, m1, "manager")
    out = m1.ok("update", "--autolock=true")
    key = UNLOCK_BLOCK.search(out).group(1)  # type: ignore[union-attr]
    for m in (m1, m2, m3):  # every manager seals its own key file under the cluster's unlock key
        wait_for(lambda m=m: keyfile.is_encrypted(key_file(m)), 10, what=f"{m.hostname}'s key file sealed")
    m3.restart()
    assert m3.info().local_node_state == "locked"
    m1.ok("network", "create", "--driver", "overlay", "while-locked")
    r = m3.ctl("unlock", input=key + "\n")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "while-locked" in m3.ok("network", "ls"), 10, what="the unlocked manager to catch up")
    assert {row[2] for row in node_rows(m3).values()} == {"Leader", "Reachable"}


def test_promoted_worker_is_sealed_and_locks_and_a_demoted_one_is_not(daemons: Callable[..., Daemon]) -> None:
    m1 = daemons("m1")
    key = UNLOCK_BLOCK.search(m1.init("--autolock")).group(1)  # type: ignore[union-attr]
    w1 = daemons("w1")
    join(w1, m1)
    assert not keyfile.is_encrypted(key_file(w1))  # workers are never locked
    m1.ok("node", "promote", "w1")
    def sealed_and_rotated() -> bool:
        if not keyfile.is_encrypted(key_file(w1)):
            return False
        sealed = keyfile.decode(key_file(w1), keyfile.parse_unlock_key(key))
        return sealed.dek is not None and sealed.pending_dek is None  # its clear data key replaced
    wait_for(sealed_and_rotated, 30, what="the promoted node's key file sealed and its data key rotated")
    # Restart only once the node itself recorded that it is a manager (its promotion is over).
    wait_for(lambda: local_role(w1) == "manager", 30, what="the promotion to finish on the node")
    w1.restart()
    assert w1.info().local_node_state == "locked"
    w1.ok("unlock", input=key + "\n")
    wait_for(lambda: node_rows(m1)["w1"][2] == "Reachable" or None, 15, what="the unlocked manager reachable")
    m1.ok("node", "demote", "w1")
    wait_for(lambda: local_role(w1) == "worker" and not keyfile.is_encrypted(key_file(w1)), 30,
             what="the demoted node's key file plain")
    w1.restart()
    assert w1.info().local_node_state == "active"
    assert key[9:] not in w1.log()
