"""A manager's TLS: what its remote API serves and trusts, and who a verified peer is.

The remote API serves the node certificate by default and, for each live join token, a server
certificate under that token's join-CA SNI name; it trusts the cluster root and the live join
CAs as client anchors. The configuration is rebuilt before the next handshake whenever a token
is rotated or the node's certificate changes (gRPC asks ``fetch`` before every handshake).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.x509.oid import NameOID

from swarmd.ca import join, pki, tokens
from swarmd.manager import authz

log = logging.getLogger(__name__)

# The desired role ("manager" | "worker") the store holds for a node ID; None: not in the swarm.
RoleOf = Callable[[str], "str | None"]
# (cluster_id, {"worker": token, "manager": token}, role_of)
TrustSource = Callable[[], tuple[str, dict[str, str], RoleOf]]
# Certificates kept parsed and verified: every node calls every few seconds, so the cache must
# hold a whole fleet (10,000 nodes, with two certificates each during a root rotation).
CERT_CACHE = 1 << 15


@functools.lru_cache(maxsize=16)
def _join_ca(secret: str) -> join.JoinCA:
    return join.join_ca(secret)


@functools.lru_cache(maxsize=CERT_CACHE)
def _parse(pem: bytes) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


@functools.lru_cache(maxsize=CERT_CACHE)
def _root_identity(pem: bytes, roots_pem: bytes) -> pki.Identity | None:
    """The identity in a leaf one of the roots signed directly (cached: nodes call every few
    seconds). During a root rotation the roots are the old and the new one."""
    cert = _parse(pem)
    if cert is None:
        return None
    try:
        roots = x509.load_pem_x509_certificates(roots_pem)
    except ValueError:
        return None
    for root in roots:
        try:
            cert.verify_directly_issued_by(root)
            return pki.identity_from_cert(pem)
        except Exception:  # noqa: BLE001 - any failure means "not from this root"
            continue
    return None


@functools.lru_cache(maxsize=1024)
def _join_issued(pem: bytes, ca: join.JoinCA) -> bool:
    cert = _parse(pem)
    return cert is not None and ca.issued(cert)


def _issuer_cn(cert: x509.Certificate) -> str:
    values = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


class ManagerSecurity:
    def __init__(self, root_pem: bytes, cert_pem: bytes, key_pem: bytes, trust: TrustSource,
                 roots: Callable[[], bytes] = lambda: b"") -> None:
        self._lock = threading.Lock()
        self._root_pem, self._cert_pem, self._key_pem = root_pem, cert_pem, key_pem
        self._trust = trust
        self._roots = roots
        self._served: tuple[Any, ...] | None = None   # what the current config was built from
        self._join_servers: dict[str, tuple[bytes, bytes]] = {}  # secret -> served (key, cert)

    # -- material ------------------------------------------------------------------------------
    @property
    def root_pem(self) -> bytes:
        return self._root_pem

    def trusted_roots(self) -> bytes:
        """The cluster's roots from the store (both during a rotation); the node's own root file
        until the store holds the cluster."""
        return self._roots() or self._root_pem

    def node_credentials(self) -> tuple[bytes, bytes]:
        with self._lock:
            return self._cert_pem, self._key_pem

    def update_node_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        with self._lock:
            self._cert_pem, self._key_pem = cert_pem, key_pem

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For this manager's own calls to other managers (Raft, forwarding, membership)."""
        cert, key = self.node_credentials()
        return grpc.ssl_channel_credentials(root_certificates=self.trusted_roots(), private_key=key,
                                            certificate_chain=cert)

    def _join_cas(self, join_tokens: dict[str, str]) -> dict[str, join.JoinCA]:
        cas = {}
        for role, token in join_tokens.items():
            if token:
                cas[role] = _join_ca(tokens.token_secret(token))
        return cas

    # -- the server's configuration ----------------------------------------------------------------
    def _current(self) -> tuple[tuple[Any, ...], Any]:
        _, join_tokens, _ = self._trust()
        roots = self.trusted_roots()
        with self._lock:
            key = (self._cert_pem, self._key_pem, tuple(sorted(join_tokens.items())), roots)
            if key == self._served:
                return key, None
            pairs = [(self._key_pem, self._cert_pem)]
            anchors = [roots]
            for ca in self._join_cas(join_tokens).values():
                secret_key = ca.short
                if secret_key not in self._join_servers:
                    self._join_servers[secret_key] = ca.server_credentials()
                pairs.append(self._join_servers[secret_key])
                anchors.append(ca.cert_pem)
            config = grpc.ssl_server_certificate_configuration(pairs, root_certificates=b"".join(anchors))
            self._served = key
            return key, config

    def server_credentials(self, on_connection: Callable[[], None] | None = None) -> grpc.ServerCredentials:
        """``on_connection`` runs before each handshake too (gRPC calls ``fetch`` on every new
        connection, on one of its I/O threads): it must be O(1), the guard only wakes there."""
        _, initial = self._current()

        def fetch() -> Any:
            if on_connection is not None:
                try:
                    on_connection()
                except Exception:  # the guard must never stop a handshake
                    log.exception("the failed-handshake guard failed")
            try:
                _, config = self._current()
                return config
            except Exception:  # noqa: BLE001 - keep serving the last good configuration
                log.exception("could not rebuild the TLS configuration")
                return None

        return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=True)

    # -- who is calling ----------------------------------------------------------------------------
    def identify(self, context: grpc.ServicerContext) -> str | None:
        certs = context.auth_context().get("x509_pem_cert")
        if not certs:
            return None
        cert = _parse(certs[0])
        if cert is None:
            return None
        cluster_id, join_tokens, role_of = self._trust()
        issuer = _issuer_cn(cert)
        if not issuer.startswith(join.JOIN_CA_PREFIX):
            identity = _root_identity(certs[0], self.trusted_roots())
            if (identity is None or identity.cluster_id != cluster_id
                    or identity.role not in (authz.MANAGER, authz.WORKER)):
                return None
            desired = role_of(identity.node_id)
            if desired is None:
                return None  # removed from the swarm: refused even with a valid certificate
            if identity.role == authz.MANAGER and desired != "manager":
                return authz.WORKER  # demoted: its manager certificate no longer speaks for a manager
            return identity.role
        else:
            for role, ca in self._join_cas(join_tokens).items():
                if ca.name == issuer and _join_issued(certs[0], ca):
                    return authz.JOIN_MANAGER if role == "manager" else authz.JOIN_WORKER
        return None

    def peer_node_id(self, context: grpc.ServicerContext) -> str:
        """The CN of an already-authorised node certificate."""
        certs = context.auth_context().get("x509_pem_cert")
        return pki.identity_from_cert(certs[0]).node_id
