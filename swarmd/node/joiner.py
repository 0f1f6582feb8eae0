"""The joining side of the token-bound handshake (DESIGN §4): from a token and a manager
address to this node's certificate, without ever sending the token."""

from __future__ import annotations

import hashlib
import logging
import socket
from dataclasses import dataclass, field

import grpc
from cryptography import x509

from swarmd import errors, netaddr
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import join, pki, tokens
from swarmd.errors import SwarmError
from swarmd.remotes import open_channel

log = logging.getLogger(__name__)

DEFAULT_PORT = "2377"
CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 15.0
PROBE_AFTER_TIMEOUT = 2.0   # the TCP check after a call timed out: the call already waited
INVALID_TOKEN_TEXT = errors.rpc_text("INVALID_ARGUMENT", "A valid join token is necessary to join this cluster")


@dataclass
class JoinResult:
    node_id: str
    cluster_id: str
    role: str
    root_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    advertise_addr: str = ""
    managers: list[tuple[str, str]] = field(default_factory=list)
    heartbeat_ns: int = 5 * 10**9


def normalise_remote(remote: str) -> str:
    """Docker's rule: a manager address without a port means port 2377."""
    if not remote:
        raise errors.invalid("at least 1 RemoteAddr is required to join")
    try:
        host, port = netaddr.split_host_port(remote)
    except ValueError:
        host, port = remote, DEFAULT_PORT
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.invalid(f'invalid remoteAddr "{remote}": invalid address')
    return netaddr.join_host_port(host, port)


def check_reachable(remote: str, timeout: float = CONNECT_TIMEOUT) -> str:
    """A plain TCP connect, so "nobody listens" is not mistaken for a refused token. Made only
    after a join failed: the manager counts a connection without a call as a failed handshake,
    and a join that works must never cost its source address one.
    Returns this host's address on the route to the manager (what the manager will see)."""
    host, port = netaddr.split_host_port(remote)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            return str(sock.getsockname()[0])
    except ConnectionRefusedError:
        why = "connect: connection refused"
    except TimeoutError:
        why = "i/o timeout"
    except OSError as e:
        why = e.strerror or str(e)
    raise SwarmError(errors.rpc_text("UNAVAILABLE", 'connection error: desc = "transport: Error while dialing '
                                     f'dial tcp {remote}: {why}"'), grpc.StatusCode.UNKNOWN)


def route_source(remote: str) -> str:
    """This host's address on the route to the manager, without sending a packet (a UDP
    socket's connect only picks the route); where that fails, the TCP check tells why."""
    host, port = netaddr.split_host_port(remote)
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, int(port)))
            return str(sock.getsockname()[0])
    except OSError:
        return check_reachable(remote)


def _unreachable_or_refused(remote: str, e: grpc.RpcError) -> SwarmError:
    """Why the first call failed: nobody listens (the TCP check raises its error), the
    token-bound handshake failed (a wrong or rotated token), or the manager is too slow."""
    if e.code() == grpc.StatusCode.UNAVAILABLE:
        check_reachable(remote)
        return SwarmError(INVALID_TOKEN_TEXT, grpc.StatusCode.INVALID_ARGUMENT)
    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        check_reachable(remote, timeout=PROBE_AFTER_TIMEOUT)
    return SwarmError(f"rpc error: {e.details()}", e.code())


def _check_root(root_pem: bytes, token: tokens.JoinToken) -> None:
    if hashlib.sha256(root_pem).hexdigest() != token.digest_hex:
        raise SwarmError(f"remote CA does not match fingerprint. Expected: {token.digest_hex}")
    try:
        root = x509.load_pem_x509_certificate(root_pem)
        root.verify_directly_issued_by(root)
    except Exception as e:  # noqa: BLE001 - any defect is the same refusal
        raise SwarmError(f"error while validating Root CA Certificate: {e}") from None


def request_certificate(remote: str, token_text: str, availability: str, advertise_addr: str,
                        description: pb.NodeDescription) -> JoinResult:
    if not token_text:
        raise SwarmError(INVALID_TOKEN_TEXT, grpc.StatusCode.INVALID_ARGUMENT)
    try:
        token = tokens.parse_join_token(token_text)
    except tokens.InvalidJoinToken:
        raise errors.invalid("invalid join token") from None
    remote = normalise_remote(remote)
    source_ip = route_source(remote) if advertise_addr.startswith(":") else ""
    if advertise_addr.startswith(":"):
        advertise_addr = netaddr.join_host_port(source_ip, advertise_addr[1:])
    ca = join.join_ca(token.secret)
    client_key, client_cert = ca.client_credentials()
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem, private_key=client_key,
                                         certificate_chain=client_cert)
    with open_channel(remote, creds, ca.sni, common=False) as channel:
        stub = pb_grpc.CAStub(channel)
        try:
            root_pem = stub.GetRootCACertificate(pb.GetRootCACertificateRequest(), timeout=CALL_TIMEOUT).certificate
        except grpc.RpcError as e:
            raise _unreachable_or_refused(remote, e) from None
        _check_root(root_pem, token)
        key = pki.generate_key()
        try:
            resp = stub.IssueNodeCertificate(pb.IssueNodeCertificateRequest(
                csr=pki.make_csr(key), availability=availability, advertise_addr=advertise_addr,
                description=description), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise SwarmError(str(e.details()), e.code()) from None
    identity = pki.verify_node_cert(resp.certificate, root_pem)
    issued_key = x509.load_pem_x509_certificate(resp.certificate).public_key()
    if identity.node_id != resp.node_id or issued_key != key.public_key():
        raise SwarmError("the manager returned a certificate that is not ours")
    return JoinResult(node_id=resp.node_id, cluster_id=resp.cluster_id, role=resp.role, root_pem=root_pem,
                      advertise_addr=advertise_addr,
                      cert_pem=resp.certificate, key_pem=pki.key_to_pem(key),
                      managers=[(m.node_id, m.addr) for m in resp.managers],
                      heartbeat_ns=resp.heartbeat_period_ns or 5 * 10**9)
