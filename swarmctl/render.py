"""Every byte swarmctl prints on success comes from here (Docker's texts, ``swarmctl`` for
``docker swarm``). Functions take wire objects and return strings; the commands only echo them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from swarmctl import PROG
from swarmctl.natsort import sort_naturally
from swarmd.timeutil import human_duration

if TYPE_CHECKING:  # rendering only reads messages: the types annotate, nothing is imported
    from swarmd.api.swarm.v1 import swarm_pb2 as pb


# -- swarm -----------------------------------------------------------------------------------

def join_command(role: str, token: str, addr: str) -> str:
    return (f"To add a {role} to this swarm, run the following command:\n\n"
            f"    {PROG} join --token {token} {addr}\n\n")


def init_result(resp: pb.InitResponse) -> str:
    return (f"Swarm initialized: current node ({resp.node_id}) is now a manager.\n\n"
            + join_command("worker", resp.worker_token, resp.manager_addr)
            + f"To add a manager to this swarm, run '{PROG} join-token manager' and follow the instructions.\n"
            + (unlock_key(resp.unlock_key, False, False) if resp.unlock_key else ""))


def join_token(role: str, resp: pb.GetJoinTokenResponse, quiet: bool, rotated: bool) -> str:
    if quiet:
        return resp.token + "\n"
    prefix = f"Successfully rotated {role} join token.\n\n" if rotated else ""
    return prefix + join_command(role, resp.token, resp.manager_addr)


def unlock_key(key: str, rotated: bool, quiet: bool) -> str:
    if quiet:
        return key + "\n"
    prefix = "Successfully rotated manager unlock key.\n" if rotated else ""
    return (prefix + f"To unlock a swarm manager after it restarts, run the `{PROG} unlock`\n"
            "command and provide the following key:\n\n"
            f"    {key}\n\n"
            "Remember to store this key in a password manager, since without it you\n"
            "will not be able to restart the manager.\n")


# -- root rotation ----------------------------------------------------------------------------

def root_digest(trust_root: str) -> str:
    """``sha256:<hex>`` of the root CA's PEM bytes: Docker's client digests the desired root
    itself (``digest.FromBytes``), the same digest a join token carries."""
    return "sha256:" + hashlib.sha256(trust_root.encode()).hexdigest()


def _bar(current: int, total: int) -> str:
    """Docker's progress bar: 50 columns of '=' then '>'."""
    filled = 50 * current // total if total else 50
    return f"[{'=' * filled}>{' ' * (50 - filled)}] {current}/{total} nodes"


@dataclass
class RootRotationProgress:
    digest: str
    total: int
    tls_done: int
    ca_done: int
    done: bool

    @classmethod
    def of(cls, cluster: pb.Cluster, desired: pb.TLSInfo, nodes: list[pb.Node]) -> RootRotationProgress:
        finished = not cluster.root_rotation_in_progress and cluster.tls_info.trust_root == desired.trust_root
        tls_done = sum(1 for n in nodes if n.tls_info.cert_issuer_public_key == desired.cert_issuer_public_key)
        ca_done = sum(1 for n in nodes if finished and n.tls_info.trust_root == desired.trust_root)
        return cls(root_digest(desired.trust_root), len(nodes),
                   tls_done, ca_done, finished and ca_done == tls_done == len(nodes))

    def text(self) -> str:
        return (f"desired root digest: {self.digest}\n"
                f"  rotated TLS certificates: {_bar(self.tls_done, self.total)}\n"
                f"  rotated CA certificates:  {_bar(self.ca_done, self.total)}\n")


def redraw(previous: str, text: str) -> str:
    """Replace the lines written last on a terminal."""
    up = previous.count("\n")
    return (f"\x1b[{up}A\x1b[J" if up else "") + text


# -- info ------------------------------------------------------------------------------------

def _swarm_json(info: pb.InfoResponse) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "NodeID": info.node_id,
        "NodeAddr": info.node_addr,
        "LocalNodeState": info.local_node_state,
        "ControlAvailable": info.control_available,
        "Error": info.error,
        "RemoteManagers": [{"NodeID": m.node_id, "Addr": m.addr} for m in info.remote_managers] or None,
    }
    if info.control_available:
        doc["Nodes"] = info.nodes
        doc["Managers"] = info.managers
        doc["Cluster"] = cluster_json(info.cluster)
    return doc


def cluster_json(c: pb.Cluster) -> dict[str, Any]:
    s = c.spec
    return {
        "ID": c.id,
        "Version": {"Index": c.version},
        "CreatedAt": c.created_at,
        "UpdatedAt": c.updated_at,
        "Spec": {
            "Name": s.name,
            "Labels": {},
            "Orchestration": {"TaskHistoryRetentionLimit": s.task_history_limit},
            "Raft": {"SnapshotInterval": s.snapshot_interval, "KeepOldSnapshots": s.keep_old_snapshots,
                     "LogEntriesForSlowFollowers": s.log_entries_for_slow_followers,
                     "ElectionTick": s.election_tick, "HeartbeatTick": s.heartbeat_tick},
            "Dispatcher": {"HeartbeatPeriod": s.dispatcher_heartbeat_ns},
            "CAConfig": {"NodeCertExpiry": s.node_cert_expiry_ns},
            "TaskDefaults": {},
            "EncryptionConfig": {"AutoLockManagers": s.autolock_managers},
        },
        "TLSInfo": _tls_json(c.tls_info),
        "RootRotationInProgress": c.root_rotation_in_progress,
        "DefaultAddrPool": list(c.default_addr_pool) or None,
        "SubnetSize": c.subnet_size,
        "DataPathPort": c.data_path_port,
    }


def _tls_json(t: pb.TLSInfo) -> dict[str, str]:
    return {"TrustRoot": t.trust_root, "CertIssuerSubject": t.cert_issuer_subject,
            "CertIssuerPublicKey": t.cert_issuer_public_key}


def info_json(info: pb.InfoResponse) -> str:
    return json.dumps(_swarm_json(info)) + "\n"


def info(info: pb.InfoResponse, client_version: str) -> str:
    lines = ["Client:", f" Version:    {client_version}", "", "Server:",
             f" Server Version: {info.server_version}", f" Swarm: {info.local_node_state}"]
    if info.local_node_state not in ("inactive", "locked"):
        lines.append(f"  NodeID: {info.node_id}")
        if info.error:
            lines.append(f"  Error: {info.error}")
        lines.append(f"  Is Manager: {str(info.control_available).lower()}")
        if info.control_available and not info.error:
            c, s = info.cluster, info.cluster.spec
            lines += [f"  ClusterID: {c.id}", f"  Managers: {info.managers}", f"  Nodes: {info.nodes}"]
            if c.default_addr_pool:
                lines.append("  Default Address Pool: " + "".join(p + "  " for p in c.default_addr_pool))
                lines.append(f"  SubnetSize: {c.subnet_size}")
            if c.data_path_port:
                lines.append(f"  Data Path Port: {c.data_path_port}")
            lines += [
                "  Orchestration:",
                f"   Task History Retention Limit: {s.task_history_limit}",
                "  Raft:",
                f"   Snapshot Interval: {s.snapshot_interval}",
                f"   Number of Old Snapshots to Retain: {s.keep_old_snapshots}",
                f"   Heartbeat Tick: {s.heartbeat_tick}",
                f"   Election Tick: {s.election_tick}",
                "  Dispatcher:",
                f"   Heartbeat Period: {human_duration(s.dispatcher_heartbeat_ns)}",
                "  CA Configuration:",
                f"   Expiry Duration: {human_duration(s.node_cert_expiry_ns)}",
                f"   Force Rotate: {c.force_rotate}",
                f"  Autolock Managers: {str(s.autolock_managers).lower()}",
                f"  Root Rotation In Progress: {str(c.root_rotation_in_progress).lower()}",
            ]
        lines.append(f"  Node Address: {info.node_addr}")
        if info.remote_managers:
            lines.append("  Manager Addresses:")
            lines += sorted(f"   {m.addr}" for m in info.remote_managers)
    lines.append(f" Name: {info.hostname}")
    return "\n".join(lines) + "\n"


def two_manager_warning(info: pb.InfoResponse) -> str:
    if info.control_available and info.managers == 2:
        return ("WARNING: Running Swarm in a two-manager configuration. This configuration provides\n"
                "         no fault tolerance, and poses a high risk to lose control over the cluster.\n"
                "         Refer to https://docs.docker.com/engine/swarm/admin_guide/ to configure the\n"
                "         Swarm for fault-tolerance.\n")
    return ""


def version(client: str, api: str, python: str, server: pb.VersionResponse | None) -> str:
    lines = ["Client:", f" Version:           {client}", f" API version:       {api}",
             f" Python version:    {python}"]
    if server is not None:
        lines += ["", "Server:", " Engine:", f"  Version:          {server.version}",
                  f"  API version:      {server.api_version}", f"  Python version:   {server.python_version}",
                  f"  OS/Arch:          {server.os}/{server.arch}", " pysyncobj:",
                  f"  Version:          {server.pysyncobj_version}", " grpc:",
                  f"  Version:          {server.grpc_version}"]
    return "\n".join(lines) + "\n"


# -- tables ----------------------------------------------------------------------------------

def table(rows: Sequence[Sequence[str]], minwidth: int = 10, padding: int = 3) -> str:
    """Go's tabwriter as docker uses it: cells padded to the column's widest + padding (at least
    ``minwidth``); the last cell of a line is printed as is."""
    if not rows:
        return ""
    ncols = max(len(r) for r in rows)
    widths = [0] * ncols
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell) + padding, minwidth)
    out = []
    for row in rows:
        parts = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        parts.append(row[-1])
        out.append("".join(parts))
    return "\n".join(out) + "\n"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def manager_status(n: pb.Node) -> str:
    if not n.HasField("manager_status"):
        return ""
    return "Leader" if n.manager_status.leader else _cap(n.manager_status.reachability)


def sorted_nodes(nodes: Sequence[pb.Node]) -> list[pb.Node]:
    return sort_naturally(nodes, lambda n: n.hostname, lambda n: n.id)


def node_table(nodes: Sequence[pb.Node], self_id: str) -> str:
    rows = [["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"]]
    for n in sorted_nodes(nodes):
        rows.append([f"{n.id} {'*' if n.id == self_id else ' '}", n.hostname, _cap(n.state),
                     _cap(n.availability), manager_status(n), n.engine_version])
    return table(rows)


def node_ids(nodes: Sequence[pb.Node]) -> str:
    return "".join(n.id + "\n" for n in sorted_nodes(nodes))


def node_lines_json(nodes: Sequence[pb.Node], self_id: str) -> str:
    out = []
    for n in sorted_nodes(nodes):
        out.append(json.dumps({
            "Availability": _cap(n.availability), "EngineVersion": n.engine_version, "Hostname": n.hostname,
            "ID": n.id, "ManagerStatus": manager_status(n), "Self": n.id == self_id,
            "Status": _cap(n.state), "TLSStatus": "Ready",
        }, sort_keys=True))
    return "".join(line + "\n" for line in out)


def node_json(n: pb.Node) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ID": n.id,
        "Version": {"Index": n.version},
        "CreatedAt": n.created_at,
        "UpdatedAt": n.updated_at,
        "Spec": {"Labels": dict(n.labels), "Role": n.role, "Availability": n.availability},
        "Description": {
            "Hostname": n.hostname,
            "Platform": {"Architecture": n.architecture, "OS": n.os},
            "Resources": {"NanoCPUs": n.nano_cpus, "MemoryBytes": n.memory_bytes},
            "Engine": {"EngineVersion": n.engine_version},
            "TLSInfo": _tls_json(n.tls_info),
        },
        "Status": {"State": n.state, "Addr": n.addr},
    }
    if n.message:
        doc["Status"]["Message"] = n.message
    if n.HasField("manager_status"):
        m = n.manager_status
        doc["ManagerStatus"] = {"Leader": m.leader, "Reachability": m.reachability, "Addr": m.addr}
    return doc


def json_array(docs: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(docs), indent=4) + "\n"


def bytes_size(n: int) -> str:
    """go-units BytesSize: binary units, four significant digits (23.54GiB)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    size = float(n)
    i = 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    return f"{size:.4g}{units[i]}"


def _go_time(rfc3339: str) -> str:
    """Go's Time.String(), lower-cased by docker's pretty printer: 2026-11-27 04:41:45.6 +0000 utc."""
    date, _, rest = rfc3339.partition("T")
    clock = rest.rstrip("Z")
    if "." in clock:
        whole, frac = clock.split(".")
        frac = frac.rstrip("0")
        clock = f"{whole}.{frac}" if frac else whole
    return f"{date} {clock} +0000 utc"


def node_pretty(n: pb.Node) -> str:
    lines = [f"ID:\t\t\t{n.id}"]
    if n.labels:
        lines.append("Labels:")
        lines += [f" - {k}={v}" for k, v in sorted(n.labels.items())]
    lines += [
        f"Hostname:              \t{n.hostname}",
        f"Joined at:             \t{_go_time(n.created_at)}",
        "Status:",
        f" State:\t\t\t{_cap(n.state)}",
    ]
    if n.message:
        lines.append(f" Message:              \t{_cap(n.message)}")
    lines += [f" Availability:         \t{_cap(n.availability)}", f" Address:\t\t{n.addr}"]
    if n.HasField("manager_status"):
        m = n.manager_status
        lines += ["Manager Status:", f" Address:\t\t{m.addr}", f" Raft Status:\t\t{_cap(m.reachability)}",
                  f" Leader:\t\t{'Yes' if m.leader else 'No'}"]
    lines += [
        "Platform:",
        f" Operating System:\t{n.os}",
        f" Architecture:\t\t{n.architecture}",
        "Resources:",
        f" CPUs:\t\t\t{n.nano_cpus // 10**9}",
        f" Memory:\t\t{bytes_size(n.memory_bytes)}",
        f"Engine Version:\t\t{n.engine_version}",
        "TLS Info:",
        " TrustRoot:",
        n.tls_info.trust_root,
        f" Issuer Subject:\t{n.tls_info.cert_issuer_subject}",
        f" Issuer Public Key:\t{n.tls_info.cert_issuer_public_key}",
    ]
    return "\n".join(lines) + "\n"


# -- networks --------------------------------------------------------------------------------

def sorted_networks(networks: Sequence[pb.Network]) -> list[pb.Network]:
    """Docker sorts ``network ls`` by name in natural order, whatever the format."""
    return sort_naturally(networks, lambda n: n.name, lambda n: n.id)


def network_table(networks: Sequence[pb.Network]) -> str:
    rows = [["NETWORK ID", "NAME", "DRIVER", "SCOPE"]]
    for n in sorted_networks(networks):
        rows.append([n.id[:12], n.name, n.driver, "swarm"])
    return table(rows)


def network_lines_json(networks: Sequence[pb.Network]) -> str:
    return "".join(json.dumps(network_json(n)) + "\n" for n in sorted_networks(networks))


def network_ids(networks: Sequence[pb.Network]) -> str:
    return "".join(n.id[:12] + "\n" for n in sorted_networks(networks))


def network_json(n: pb.Network) -> dict[str, Any]:
    return {
        "Name": n.name,
        "Id": n.id,
        "Created": n.created_at,
        "Scope": "swarm",
        "Driver": n.driver,
        "EnableIPv6": n.enable_ipv6,
        "IPAM": {"Driver": "default", "Options": None,
                 "Config": [{"Subnet": c.subnet, "Gateway": c.gateway} for c in n.ipam]},
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": n.ingress,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {},
        "Options": dict(sorted(n.options.items())),
        "Labels": dict(n.labels),
    }


INGRESS_REMOVAL_WARNING = (
    "WARNING! Before removing the routing-mesh network, make sure all the nodes in your swarm run "
    "the same docker engine version. Otherwise, removal may not be effective and functionality of "
    "newly create ingress networks will be impaired.\nAre you sure you want to continue?")
