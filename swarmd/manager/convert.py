"""Store objects (typed JSON dicts) to wire objects (protobuf). The only place that knows both shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import pki
from swarmd.store.objects import Cluster, Network, Node, NodeTLS

VXLAN_OPTION = "com.docker.network.driver.overlay.vxlanid_list"


def tls_info(root_pem: str) -> pb.TLSInfo:
    subject, public_key = pki.tls_info(root_pem.encode())
    return pb.TLSInfo(trust_root=root_pem, cert_issuer_subject=subject, cert_issuer_public_key=public_key)


def _node_tls(reported: NodeTLS | None, trust: pb.TLSInfo) -> pb.TLSInfo:
    """What the node last reported of its TLS; the cluster's until it has reported."""
    if not reported:
        return trust
    return pb.TLSInfo(trust_root=reported.get("trust_root", ""),
                      cert_issuer_subject=reported.get("issuer_subject", ""),
                      cert_issuer_public_key=reported.get("issuer_public_key", ""))


def node(obj: Node, trust: pb.TLSInfo, leader_id: str | None,
         reachable: Callable[[str], bool]) -> pb.Node:
    msg = pb.Node(
        id=obj["id"],
        version=obj["version"],
        created_at=obj["created_at"],
        updated_at=obj["updated_at"],
        role=obj["role"],
        availability=obj["availability"],
        labels=obj.get("labels", {}),
        hostname=obj["hostname"],
        os=obj["os"],
        architecture=obj["architecture"],
        nano_cpus=obj["nano_cpus"],
        memory_bytes=obj["memory_bytes"],
        engine_version=obj["engine_version"],
        tls_info=_node_tls(obj.get("tls"), trust),
        state=obj["state"],
        addr=obj["addr"],
        message=obj.get("message", ""),
    )
    manager = obj.get("manager")
    if manager:
        msg.manager_status.CopyFrom(pb.ManagerStatus(
            leader=obj["id"] == leader_id,
            reachability="reachable" if reachable(obj["id"]) else "unreachable",
            addr=manager["addr"],
        ))
    return msg


def network(obj: Network) -> pb.Network:
    options = dict(obj.get("options", {}))
    options[VXLAN_OPTION] = ",".join(str(v) for v in obj["vxlan_ids"])
    return pb.Network(
        id=obj["id"],
        name=obj["name"],
        created_at=obj["created_at"],
        driver=obj["driver"],
        ingress=obj["ingress"],
        internal=obj["internal"],
        attachable=obj["attachable"],
        ipam=[pb.IPAMConfig(subnet=c["subnet"], gateway=c["gateway"]) for c in obj["ipam"]],
        options=options,
        labels=obj.get("labels", {}),
        version=obj["version"],
    )


def cluster(obj: Cluster) -> pb.Cluster:
    spec = obj["spec"]
    rotation = obj.get("root_rotation")
    return pb.Cluster(
        id=obj["id"],
        version=obj["version"],
        created_at=obj["created_at"],
        updated_at=obj["updated_at"],
        spec=pb.ClusterSpec(
            name=obj["name"],
            task_history_limit=spec["task_history_limit"],
            dispatcher_heartbeat_ns=spec["dispatcher_heartbeat_ns"],
            node_cert_expiry_ns=spec["node_cert_expiry_ns"],
            snapshot_interval=spec["snapshot_interval"],
            keep_old_snapshots=spec["keep_old_snapshots"],
            log_entries_for_slow_followers=spec["log_entries_for_slow_followers"],
            heartbeat_tick=spec["heartbeat_tick"],
            election_tick=spec["election_tick"],
            autolock_managers=spec["autolock_managers"],
        ),
        tls_info=tls_info(obj["root_ca"]["cert"]),
        root_rotation_in_progress=bool(rotation),
        desired_tls_info=tls_info(rotation["cert"] if rotation else obj["root_ca"]["cert"]),
        default_addr_pool=obj["default_addr_pool"],
        subnet_size=obj["subnet_size"],
        data_path_port=obj["data_path_port"],
        force_rotate=obj.get("force_rotate", 0),
    )
