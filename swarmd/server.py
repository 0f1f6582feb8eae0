"""gRPC servers: the local control socket and a manager's mutual-TLS remote API (DESIGN §2)."""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from swarmd import errors
from swarmd.errors import SwarmError
from swarmd.remotes import LEADER_KEY
from swarmd.wire import MalformedRequestInterceptor

log = logging.getLogger("swarmd.api")

MAX_MESSAGE_BYTES = 4 << 20
REMOTE_WORKERS = 4096
# Every caller of port 2377 (joiners included) gets the same limit, so it must suit the largest
# legitimate message: a Raft frame (transport.MAX_FRAME, 4 MiB) plus its protobuf framing.
REMOTE_MAX_MESSAGE = MAX_MESSAGE_BYTES + (64 << 10)

_COMMON_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a second daemon on the same address must fail, not share it
    # Nodes and Raft peers ping every 2 s to notice dead links; accept that instead of
    # answering GOAWAY too_many_pings.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
]


# A TLS handshake takes milliseconds; a connection that has not finished one by then is closed
# by gRPC's core itself (an idle connection holds a descriptor and a handshake slot, nothing more,
# but a flood of them would hold all of them). The failed-handshake guard counts such a close.
REMOTE_HANDSHAKE_TIMEOUT_MS = 5000
_REMOTE_OPTIONS = [("grpc.server_handshake_timeout_ms", REMOTE_HANDSHAKE_TIMEOUT_MS)]


def _new_server(interceptor: grpc.ServerInterceptor, workers: int, max_message: int = MAX_MESSAGE_BYTES,
                extra_options: list[tuple[str, int]] | None = None) -> grpc.Server:
    options = [*_COMMON_OPTIONS, ("grpc.max_receive_message_length", max_message),
               ("grpc.max_send_message_length", max_message), *(extra_options or [])]
    # The authorisation interceptor first: only an authorised caller gets as far as parsing.
    return grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                       interceptors=[interceptor, MalformedRequestInterceptor()], options=options)


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


def start_remote_server(listen: str, credentials: grpc.ServerCredentials,
                        interceptor: grpc.ServerInterceptor, register: Any,
                        on_bound: Callable[[int], None] | None = None) -> grpc.Server:
    """``on_bound`` learns the bound port before the first connection is accepted."""
    # Every node's session stream holds one worker thread for its lifetime (sync gRPC), so the
    # pool is sized for thousands of nodes; idle threads cost little.
    server = _new_server(interceptor, workers=REMOTE_WORKERS, max_message=REMOTE_MAX_MESSAGE,
                         extra_options=_REMOTE_OPTIONS)
    register(server)
    try:
        port = server.add_secure_port(listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        server.stop(None)
        raise SwarmError(f"manager stopped: failed to listen on remote API address: listen tcp {listen}: "
                         "bind: address already in use or not available")
    if on_bound is not None:
        on_bound(port)
    server.start()
    return server


def _abort(context: grpc.ServicerContext, e: Exception, name: str) -> None:
    from swarmd.store.raft import StoreError  # the store's error, should one escape its manager

    if isinstance(e, StoreError):
        e = (SwarmError(errors.NO_LEADER, grpc.StatusCode.UNKNOWN) if e.no_leader
             else SwarmError(f"the write did not commit: {e}", grpc.StatusCode.ABORTED))
    if isinstance(e, SwarmError):
        if e.leader_addr:
            context.set_trailing_metadata(((LEADER_KEY, e.leader_addr),))
        context.abort(e.code, e.message)
    log.exception("internal error in %s", name)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}")


def abort_on_error(fn: Any) -> Any:
    """Servicer decorator: a SwarmError becomes its gRPC status; anything else is logged and
    reported as INTERNAL, and the daemon keeps serving. Works for streaming handlers too."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from fn(self, request, context)
            except Exception as e:  # noqa: BLE001 - a request must never take the daemon down
                if _is_abort(e):
                    raise
                _abort(context, e, fn.__name__)
        return stream

    @functools.wraps(fn)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as e:  # noqa: BLE001 - a request must never take the daemon down
            if _is_abort(e):
                raise
            _abort(context, e, fn.__name__)
    return unary


def _is_abort(e: Exception) -> bool:
    """context.abort() raises an exception of gRPC's own to unwind the handler: let it through."""
    return isinstance(e, grpc.RpcError) or (type(e) is Exception and not e.args)


__all__ = ["start_control_server", "start_remote_server", "abort_on_error", "errors"]
