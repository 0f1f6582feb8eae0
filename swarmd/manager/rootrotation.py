"""Root CA rotation on the leader (swarm-behaviour.md §2.4).

``start`` records the new root, its key and the cross-signed certificate; from then on new node
certificates come from the new key. ``reconcile`` (run by the leader every few hundred ms) asks
nodes to renew in batches of 30 and, once every node that is up (Ready) holds a certificate from the new
root, makes it the trust root and replaces both join tokens. A node that was down meanwhile is not
waited for: its old certificate is no longer trusted, and it rejoins with the new token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from swarmd import errors
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.ca import pki, rotation, tokens
from swarmd.errors import SwarmError
from swarmd.initplan import spec_overrides
from swarmd.manager.leadership import LeaderLoop
from swarmd.timeutil import now_rfc3339

if TYPE_CHECKING:
    from swarmd.manager.manager import Manager

log = logging.getLogger(__name__)

BATCH = 30  # swarmkit's IssuanceStateRotateMaxBatchSize


def signing_material(cluster: Mapping[str, Any]) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, CA key, chain to append) that new node certificates are issued with."""
    current = cluster.get("root_rotation")
    if current:
        return current["cert"].encode(), current["key"].encode(), current["cross_signed"].encode()
    return cluster["root_ca"]["cert"].encode(), cluster["root_ca"]["key"].encode(), b""


def trusted_roots(cluster: Mapping[str, Any]) -> bytes:
    """The roots a manager accepts node certificates from: the new one too while rotating."""
    current = cluster.get("root_rotation")
    roots = str(cluster["root_ca"]["cert"])
    return (roots + current["cert"] if current else roots).encode()


def desired_root(cluster: Mapping[str, Any]) -> str:
    current = cluster.get("root_rotation")
    return str(current["cert"] if current else cluster["root_ca"]["cert"])


def start(manager: Manager, req: pb.UpdateClusterRequest) -> None:
    cluster = manager.cluster()
    old_cert, old_key = cluster["root_ca"]["cert"].encode(), cluster["root_ca"]["key"].encode()
    force: int | None = None
    try:
        if req.signing_ca_cert or req.signing_ca_key:
            if not req.signing_ca_cert:
                raise errors.invalid(errors.rpc_text(
                    "INVALID_ARGUMENT", "if a signing CA key is provided, the signing CA cert must also be provided"))
            new_cert = rotation.check_signing_ca(req.signing_ca_cert, req.signing_ca_key, old_cert)
            new_key = serialization.load_pem_private_key(req.signing_ca_key, password=None).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        else:
            new_cert, new_key = pki.create_root_ca()
            force = int(cluster.get("force_rotate", 0)) + 1
        cross = rotation.cross_sign(new_cert, old_cert, old_key)
    except rotation.RotationError as e:
        raise errors.invalid(errors.rpc_text("INVALID_ARGUMENT", str(e))) from None
    manager.propose("start_root_rotation", now=now_rfc3339(), force_rotate=force, spec=spec_overrides(req),
                    rotation={"cert": new_cert.decode(), "key": new_key.decode(), "cross_signed": cross.decode()})
    log.info("root CA rotation started to %s", rotation.root_digest(new_cert))


def converged(node: Mapping[str, Any], desired_spki: str) -> bool:
    return bool((node.get("tls") or {}).get("issuer_public_key") == desired_spki)


class RootRotationReconciler(LeaderLoop):
    """Leader-only (``LeaderSupervisor``): steps a rotation in progress whenever the store
    changes (nodes report their new certificates), and at least every ``RETRY`` seconds while one
    is in progress (a write that failed)."""

    name = "root rotation"
    RETRY = 1.0

    def __init__(self, manager: Manager) -> None:
        super().__init__()
        self._manager = manager

    def step(self) -> float | None:
        return self.RETRY if reconcile(self._manager) else None


def reconcile(manager: Manager) -> bool:
    """One step of a rotation in progress; True while one is. Cheap when there is none."""
    def read(state: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        cluster = state["cluster"]
        if not cluster or not cluster.get("root_rotation"):
            return None, []
        return dict(cluster["root_rotation"]), [dict(n) for n in state["nodes"].values()]
    current, nodes = manager.machine.read(read)
    if current is None:
        return False
    desired_spki = rotation.spki_b64(current["cert"].encode())
    # Only nodes that are up are waited for: a Down node (or one that never connected) would
    # hold the rotation forever; it rejoins with the new token instead.
    pending = [n for n in nodes if n.get("state") == "ready" and not converged(n, desired_spki)]
    if not pending:
        new_root = current["cert"].encode()
        try:
            manager.propose("finish_root_rotation", cert=current["cert"], now=now_rfc3339(),
                            join_tokens={"worker": tokens.generate_join_token(new_root),
                                         "manager": tokens.generate_join_token(new_root)})
            log.info("root CA rotation finished: the trust root is now %s", rotation.root_digest(new_root))
        except SwarmError as e:
            log.warning("could not finish the root rotation: %s", e.message)
            return True
        return False
    in_flight = sum(1 for n in pending if n.get("cert_rotate"))
    batch = [n["id"] for n in pending if not n.get("cert_rotate")][:max(0, BATCH - in_flight)]
    if batch:
        manager.propose("mark_cert_rotation", ids=batch)
    return True
