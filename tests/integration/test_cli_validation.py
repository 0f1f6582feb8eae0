"""Validation and Docker's texts of node and network commands, against a real swarm: stdout,
stderr and exit code of each, and nothing changed by a refused command."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from tests.harness import SWARMCTL, Daemon, join


def spec(d: Daemon) -> dict[str, object]:
    doc: dict[str, object] = json.loads(d.ok("node", "inspect", "self"))[0]["Spec"]
    return doc


def outcome(d: Daemon, *args: str, input: str | None = None) -> tuple[int, str, str]:
    r = d.ctl(*args, input=input)
    return r.returncode, r.stdout, r.stderr


def test_node_update_checks_like_docker(manager: Daemon) -> None:
    manager.ok("node", "update", "--label-add", "zone=a", "self")
    before = spec(manager)

    assert outcome(manager, "node", "update", "--availability", "", "self") == (
        1, "", 'Error response from daemon: invalid Availability: ""\n')
    assert outcome(manager, "node", "update", "--availability", "sleep", "self") == (
        1, "", 'Error response from daemon: invalid Availability: "sleep"\n')
    assert outcome(manager, "node", "update", "--label-rm", "missing", "self") == (
        1, "", "key missing doesn't exist in node's labels\n")
    assert outcome(manager, "node", "update", "--label-rm", "", "self") == (
        1, "", "key  doesn't exist in node's labels\n")
    # The node is read first, as Docker does: an unknown node wins over a bad flag value.
    assert outcome(manager, "node", "update", "--availability", "", "nosuch") == (
        1, "", "Error response from daemon: node nosuch not found\n")
    assert spec(manager) == before

    assert outcome(manager, "node", "update", "--availability", "DRAIN", "--label-rm", "zone", "node") == (
        0, "node\n", "")
    assert spec(manager) == {"Labels": {}, "Role": "manager", "Availability": "drain"}

    # Docker adds labels first, then removes: a key both added and removed ends up absent.
    manager.ok("node", "update", "--label-add", "zone=a", "--label-add", "rack=1", "self")
    assert outcome(manager, "node", "update", "--label-add", "zone=b", "--label-rm", "zone",
                   "--label-add", "new=1", "--label-rm", "new", "self") == (0, "self\n", "")
    assert spec(manager)["Labels"] == {"rack": "1"}
    assert outcome(manager, "node", "update", "--label-rm", "rack", "--label-rm", "rack", "self") == (
        1, "", "key rack doesn't exist in node's labels\n")
    assert spec(manager)["Labels"] == {"rack": "1"}

    # Docker names a node that already has the role by its ID, not as typed.
    assert outcome(manager, "node", "promote", " self") == (
        0, f"Node {manager.info().node_id} is already a manager.\n", "")


def test_node_rm_echoes_each_argument_as_typed(daemons: Callable[..., Daemon]) -> None:
    manager = daemons("manager")
    manager.init()
    worker = daemons("worker")
    join(worker, manager)
    worker_id = worker.info().node_id
    typed = f" {worker_id[:7]}\t"  # Docker's client trims the reference, and echoes it as typed
    assert outcome(manager, "node", "rm", "--force", typed, "nosuch", " ") == (
        1, typed + "\n", "Error response from daemon: node nosuch not found\ninvalid node name or ID: value is empty\n")
    assert "worker" not in manager.ok("node", "ls")


def test_network_commands_check_like_docker(manager: Daemon) -> None:
    for name in ("network-2", "network-10", "network-1"):
        manager.ok("network", "create", name)
    rows = manager.ok("network", "ls").splitlines()[1:]
    assert [row.split()[1] for row in rows] == ["ingress", "network-1", "network-2", "network-10"]
    by_id = {json.loads(line)["Id"][:12]: json.loads(line)["Name"]
             for line in manager.ok("network", "ls", "--format", "json").splitlines()}
    assert [by_id[i] for i in manager.ok("network", "ls", "-q").split()] == [
        "ingress", "network-1", "network-2", "network-10"]

    created = manager.ok("network", "create", "--subnet", "10.10.0.0/24,10.11.0.0/24",
                         "--gateway", "10.11.0.254", "multi").strip()
    assert json.loads(manager.ok("network", "inspect", "multi"))[0]["IPAM"]["Config"] == [
        {"Subnet": "10.10.0.0/24", "Gateway": "10.10.0.1"}, {"Subnet": "10.11.0.0/24", "Gateway": "10.11.0.254"}]
    assert len(created) == 25

    listed = manager.ok("network", "ls")
    assert outcome(manager, "network", "create", "--subnet", "10.20.0.0/24,10.20.0.0/16", "x") == (
        1, "", "multiple overlapping subnet configuration is not supported\n")
    assert outcome(manager, "network", "create", "--subnet", "10.20.0.0/24", "--gateway", "10.20.0.1,10.20.0.2",
                   "x") == (1, "", "every ip-range or gateway must have a corresponding subnet\n")
    assert outcome(manager, "network", "create", "--subnet", "10.20.0.0/24", "--gateway", "10.21.0.1", "x") == (
        1, "", "no matching subnet for gateway 10.21.0.1\n")
    assert outcome(manager, "network", "create", " x") == (
        1, "", "Error response from daemon: rpc error: code = InvalidArgument desc = "
               "name must be valid as a DNS name component\n")
    assert manager.ok("network", "ls") == listed


def test_removing_ingress_without_an_answer_refuses(manager: Daemon) -> None:
    prompt = ("WARNING! Before removing the routing-mesh network, make sure all the nodes in your swarm run the "
              "same docker engine version. Otherwise, removal may not be effective and functionality of newly "
              "create ingress networks will be impaired.\nAre you sure you want to continue? [y/N] ")
    assert outcome(manager, "network", "rm", "ingress", input="") == (
        1, prompt, "ingress was not removed: no answer to the confirmation prompt (end of input); "
                   "answer y on standard input, or use -f\nexit status 1\n")
    assert outcome(manager, "network", "rm", "ingress", input="yes\n") == (0, prompt, "")
    assert outcome(manager, "network", "rm", "ingress", input="\n") == (0, prompt, "")
    assert "ingress" in manager.ok("network", "ls")
    assert outcome(manager, "network", "rm", "ingress", input=" Y\n") == (0, prompt + "ingress\n", "")
    assert "ingress" not in manager.ok("network", "ls")


def test_unlock_takes_any_bytes_on_stdin_and_a_closed_stdin(daemon: Daemon) -> None:
    daemon.init("--autolock")
    daemon.restart()
    assert daemon.info().local_node_state == "locked"
    ctl = [SWARMCTL, "-H", f"unix://{daemon.socket}", "unlock"]
    not_utf8 = subprocess.run(ctl, input=b"SWMKEY-1-\xff\xfe\n", capture_output=True, timeout=30, env=daemon.env)
    closed = subprocess.run(["sh", "-c", '"$@" <&-', "sh", *ctl], capture_output=True, timeout=30, env=daemon.env)
    for r in (not_utf8, closed):
        assert (r.returncode, r.stdout, r.stderr) == (1, b"", b"Error response from daemon: invalid key string\n")
    assert daemon.info().local_node_state == "locked"
