"""gRPC servers: the local control socket and a manager's mutual-TLS remote API (DESIGN §2)."""

from __future__ import annotations

import os
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from swarmd import errors
from swarmd.errors import SwarmError

MAX_MESSAGE_BYTES = 4 << 20

_COMMON_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a second daemon on the same address must fail, not share it
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class ServerCredentials:
    """The remote API's TLS material, swappable at run time (renewal, join CAs later on)."""

    def __init__(self, root_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
        self._lock = threading.Lock()
        self._config = self._build(root_pem, cert_pem, key_pem)
        self._changed = False

    @staticmethod
    def _build(root_pem: bytes, cert_pem: bytes, key_pem: bytes) -> Any:
        return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], root_certificates=root_pem)

    def update(self, root_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
        with self._lock:
            self._config = self._build(root_pem, cert_pem, key_pem)
            self._changed = True

    def _fetch(self) -> Any:
        # gRPC asks before every handshake; None means "keep the current configuration".
        with self._lock:
            if not self._changed:
                return None
            self._changed = False
            return self._config

    def credentials(self) -> grpc.ServerCredentials:
        with self._lock:
            initial = self._config
        return grpc.dynamic_ssl_server_credentials(initial, self._fetch,
                                                   require_client_authentication=True)


def _new_server(interceptor: grpc.ServerInterceptor, workers: int) -> grpc.Server:
    return grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                       interceptors=[interceptor], options=_COMMON_OPTIONS)


def start_control_server(socket_path: Path, interceptor: grpc.ServerInterceptor,
                         register: Any) -> grpc.Server:
    """Serve the control API on a Unix socket that only its owner can use (0600)."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.is_socket() or socket_path.exists():
        socket_path.unlink()
    server = _new_server(interceptor, workers=8)
    register(server)
    old_umask = os.umask(0o177)  # the socket is private from the moment it exists
    try:
        server.add_insecure_port(f"unix:{socket_path}")
        server.start()
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    return server


def start_remote_server(listen: str, credentials: ServerCredentials,
                        interceptor: grpc.ServerInterceptor, register: Any) -> grpc.Server:
    server = _new_server(interceptor, workers=16)
    register(server)
    try:
        port = server.add_secure_port(listen, credentials.credentials())
    except RuntimeError:
        port = 0
    if port == 0:
        server.stop(None)
        raise SwarmError(f"manager stopped: failed to listen on remote API address: listen tcp {listen}: "
                         "bind: address already in use or not available")
    server.start()
    return server


def abort_on_error(fn: Any) -> Any:
    """Servicer decorator: a SwarmError becomes its gRPC status; anything else is logged and
    reported as INTERNAL, and the daemon keeps serving."""
    import functools
    import logging

    log = logging.getLogger("swarmd.api")

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except SwarmError as e:
            context.abort(e.code, e.message)
        except Exception as e:  # noqa: BLE001 - a request must never take the daemon down
            if isinstance(e, grpc.RpcError) or type(e).__name__ == "_AbortError":
                raise
            log.exception("internal error in %s", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}")
    return wrapper


__all__ = ["ServerCredentials", "start_control_server", "start_remote_server", "abort_on_error", "errors"]
