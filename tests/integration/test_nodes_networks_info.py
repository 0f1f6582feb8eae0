"""info, node and network commands against a real single-node swarm."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from tests.harness import Daemon, join


def test_info_inactive_and_active(daemon: Daemon) -> None:
    out = daemon.ok("info")
    assert " Swarm: inactive\n" in out and "NodeID" not in out
    assert json.loads(daemon.ok("info", "--format", "json")) == {
        "NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False, "Error": "",
        "RemoteManagers": None}
    daemon.init()
    info = daemon.info()
    out = daemon.ok("info")
    section = out[out.index(" Swarm: active\n"):out.index(" Name:")]
    assert section == (
        " Swarm: active\n"
        f"  NodeID: {info.node_id}\n"
        "  Is Manager: true\n"
        f"  ClusterID: {info.cluster.id}\n"
        "  Managers: 1\n"
        "  Nodes: 1\n"
        "  Data Path Port: 4789\n"
        "  Orchestration:\n"
        "   Task History Retention Limit: 5\n"
        "  Raft:\n"
        "   Snapshot Interval: 10000\n"
        "   Number of Old Snapshots to Retain: 0\n"
        "   Heartbeat Tick: 1\n"
        "   Election Tick: 10\n"
        "  Dispatcher:\n"
        "   Heartbeat Period: 5 seconds\n"
        "  CA Configuration:\n"
        "   Expiry Duration: 3 months\n"
        "   Force Rotate: 0\n"
        "  Autolock Managers: false\n"
        "  Root Rotation In Progress: false\n"
        f"  Node Address: {daemon.ip}\n"
        "  Manager Addresses:\n"
        f"   {daemon.ip}:2377\n")
    doc = json.loads(daemon.ok("info", "--format", "json"))
    assert doc["LocalNodeState"] == "active" and doc["Managers"] == 1 and doc["Nodes"] == 1
    assert doc["RemoteManagers"] == [{"NodeID": info.node_id, "Addr": f"{daemon.ip}:2377"}]
    assert doc["Cluster"]["Spec"]["CAConfig"]["NodeCertExpiry"] == 7776000000000000
    assert doc["Cluster"]["TLSInfo"]["TrustRoot"] == daemon.ok("ca")


def test_init_spec_flags_reach_info(daemon: Daemon) -> None:
    daemon.init("--cert-expiry", "720h", "--dispatcher-heartbeat", "10s", "--task-history-limit", "3",
                "--default-addr-pool", "10.20.0.0/16", "--default-addr-pool-mask-length", "26",
                "--data-path-port", "7789", "--snapshot-interval", "500", "--max-snapshots", "2")
    out = daemon.ok("info")
    for line in ("   Expiry Duration: 4 weeks\n", "   Heartbeat Period: 10 seconds\n",
                 "   Task History Retention Limit: 3\n", "  Default Address Pool: 10.20.0.0/16  \n",
                 "  SubnetSize: 26\n", "  Data Path Port: 7789\n", "   Snapshot Interval: 500\n",
                 "   Number of Old Snapshots to Retain: 2\n"):
        assert line in out
    ingress = json.loads(daemon.ok("network", "inspect", "ingress"))[0]
    assert ingress["IPAM"]["Config"] == [{"Subnet": "10.20.0.0/26", "Gateway": "10.20.0.1"}]


def test_node_ls_inspect_update(manager: Daemon) -> None:
    info = manager.info()
    table = manager.ok("node", "ls")
    assert table == ("ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION\n"
                     f"{info.node_id} *   node       Ready     Active         Leader           0.1.0\n")
    assert manager.ok("node", "ls", "-q") == info.node_id + "\n"
    row = json.loads(manager.ok("node", "ls", "--format", "json"))
    assert row["Self"] is True and row["ManagerStatus"] == "Leader" and row["Hostname"] == "node"

    doc = json.loads(manager.ok("node", "inspect", "self"))
    assert len(doc) == 1
    node = doc[0]
    assert node["ID"] == info.node_id
    assert node["Spec"] == {"Labels": {}, "Role": "manager", "Availability": "active"}
    assert node["Status"] == {"State": "ready", "Addr": manager.ip}
    assert node["ManagerStatus"] == {"Leader": True, "Reachability": "reachable", "Addr": f"{manager.ip}:2377"}
    assert node["Description"]["TLSInfo"]["TrustRoot"] == manager.ok("ca")
    assert node["Description"]["TLSInfo"]["CertIssuerSubject"] == "MBMxETAPBgNVBAMTCHN3YXJtLWNh"
    assert json.loads(manager.ok("node", "inspect", info.node_id[:6])) == doc
    assert json.loads(manager.ok("node", "inspect", "node")) == doc

    pretty = manager.ok("node", "inspect", "--pretty", "self")
    assert pretty.startswith(f"ID:\t\t\t{info.node_id}\nHostname:              \tnode\nJoined at:")
    assert " Leader:\t\tYes\n" in pretty and " State:\t\t\tReady\n" in pretty

    r = manager.ctl("node", "inspect", "nosuchnode")
    assert (r.returncode, r.stdout, r.stderr) == (1, "[]\n", "Error response from daemon: node nosuchnode not found\n")

    assert manager.ok("node", "update", "--availability", "drain", "--label-add", "zone=a", "self") == "self\n"
    assert " Drain " in manager.ok("node", "ls")
    node = json.loads(manager.ok("node", "inspect", "self"))[0]
    assert node["Spec"] == {"Labels": {"zone": "a"}, "Role": "manager", "Availability": "drain"}
    assert node["Version"]["Index"] > doc[0]["Version"]["Index"]
    manager.ok("node", "update", "--label-rm", "zone", "--availability", "active", "self")
    assert json.loads(manager.ok("node", "inspect", "self"))[0]["Spec"]["Labels"] == {}
    r = manager.ctl("node", "update", "--availability", "sleep", "self")
    assert (r.returncode, r.stderr) == (1, 'Error response from daemon: invalid Availability: "sleep"\n')


def test_networks_first_fit_and_reuse(manager: Daemon) -> None:
    assert manager.ok("network", "ls").splitlines()[0] == "NETWORK ID     NAME      DRIVER    SCOPE"
    ingress = json.loads(manager.ok("network", "inspect", "ingress"))[0]
    assert ingress["Ingress"] is True and ingress["Scope"] == "swarm" and ingress["Driver"] == "overlay"
    assert ingress["IPAM"] == {"Driver": "default", "Options": None,
                               "Config": [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]}
    assert ingress["Options"] == {"com.docker.network.driver.overlay.vxlanid_list": "4096"}

    def net(name: str) -> dict[str, object]:
        doc: dict[str, object] = json.loads(manager.ok("network", "inspect", name))[0]
        return doc

    a_id = manager.ok("network", "create", "a").strip()
    assert len(a_id) == 25
    manager.ok("network", "create", "b")
    assert net("a")["IPAM"]["Config"] == [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]  # type: ignore[index]
    assert net("b")["Options"] == {"com.docker.network.driver.overlay.vxlanid_list": "4098"}
    assert manager.ok("network", "rm", "a") == "a\n"
    manager.ok("network", "create", "c")
    assert net("c")["IPAM"]["Config"][0]["Subnet"] == "10.0.1.0/24"  # type: ignore[index]
    assert net("c")["Options"] == {"com.docker.network.driver.overlay.vxlanid_list": "4097"}

    manager.ok("network", "create", "--subnet", "192.168.50.0/24", "--gateway", "192.168.50.254", "d")
    assert net("d")["IPAM"]["Config"] == [{"Subnet": "192.168.50.0/24", "Gateway": "192.168.50.254"}]  # type: ignore[index]

    r = manager.ctl("network", "create", "--subnet", "10.0.0.0/16", "overlapping")
    assert r.returncode == 1 and r.stderr.startswith(
        "Error response from daemon: invalid pool request: Pool overlaps with other one on this address space")
    r = manager.ctl("network", "create", "--subnet", "10.300.0.0/24", "bad")
    assert (r.returncode, r.stderr) == (1, "Error response from daemon: invalid CIDR address: 10.300.0.0/24\n")
    r = manager.ctl("network", "create", "--subnet", "10.9.0.5/24", "hostbits")
    assert r.returncode == 1 and "it should be 10.9.0.0/24" in r.stderr
    r = manager.ctl("network", "create", "b")
    assert (r.returncode, r.stderr) == (1, "Error response from daemon: network with name b already exists\n")
    r = manager.ctl("network", "rm", "nosuch")
    assert (r.returncode, r.stderr) == (1, "Error response from daemon: network nosuch not found\nexit status 1\n")
    assert "overlapping" not in manager.ok("network", "ls")


def test_concurrent_creates_each_get_their_own_subnet_and_vxlan_id(manager: Daemon) -> None:
    """The leader picks before it proposes; creates in flight at once never pick the same."""
    names = [f"par{i}" for i in range(12)]
    with grpc.insecure_channel(f"unix:{manager.socket}") as ch:
        stub = pb_grpc.ControlStub(ch)
        with ThreadPoolExecutor(len(names)) as pool:
            created = list(pool.map(lambda n: stub.CreateNetwork(pb.CreateNetworkRequest(name=n), timeout=30).network,
                                    names))
    assert sorted(n.name for n in created) == sorted(names)
    subnets = [n.ipam[0].subnet for n in created]
    vxlan_ids = [n.options["com.docker.network.driver.overlay.vxlanid_list"] for n in created]
    assert len(set(subnets)) == len(set(vxlan_ids)) == len(names)
    # First fit over the whole lot: 10.0.1.0/24 ... 10.0.12.0/24 and 4097 ... 4108, in some order.
    assert sorted(subnets, key=lambda s: int(s.split(".")[2])) == [f"10.0.{i}.0/24" for i in range(1, 13)]
    assert sorted(map(int, vxlan_ids)) == list(range(4097, 4109))


def test_removing_ingress_asks_first(manager: Daemon) -> None:
    r = manager.ctl("network", "rm", "ingress", input="n\n")
    assert r.returncode == 0
    assert r.stdout.startswith("WARNING! Before removing the routing-mesh network")
    assert r.stdout.endswith("Are you sure you want to continue? [y/N] ")
    assert "ingress" in manager.ok("network", "ls")
    assert manager.ok("network", "rm", "ingress", input="y\n").endswith("ingress\n")
    assert "ingress" not in manager.ok("network", "ls")
    manager.ok("network", "create", "--ingress", "ingress")
    r = manager.ctl("network", "create", "--ingress", "ingress2")
    assert r.returncode == 1 and "ingress network" in r.stderr and "is already present" in r.stderr
    assert manager.ok("network", "rm", "-f", "ingress") == "ingress\n"


def test_lists_larger_than_grpcs_default_message_limit(daemons: Callable[..., Daemon]) -> None:
    """A list answer over 4 MiB (gRPC's default, reached by 10,000 nodes) is served whole, on
    the leader and forwarded from another manager."""
    m1, m2 = daemons("m1"), daemons("m2")
    m1.init()
    join(m2, m1, "manager")
    big = "x" * (100 << 10)
    names = [f"big{i}" for i in range(4)]
    for name in names:  # 4 x 1.2 MiB of labels: each write under the 1.5 MiB limit of one op
        m1.ok("network", "create", *[a for j in range(12) for a in ("--label", f"l{j}={big}")], name)
    for d in (m1, m2):
        listed = [json.loads(line)["Name"] for line in d.ok("network", "ls", "--format", "json").splitlines()]
        assert set(names) <= set(listed)
        labels = json.loads(d.ok("network", "inspect", *names))
        assert [len(n["Labels"]) for n in labels] == [12] * 4
