"""gRPC servers: the local control socket and a manager's mutual-TLS remote API (DESIGN §2, §11).

The control socket is a plain (threaded) gRPC server: one local user, a few calls at a time. The
remote API runs on ``grpc.aio`` in one event loop of its own (``RemoteServer``): thousands of
node sessions are coroutines there, not threads. Handlers written as coroutines run on the
loop and must not block; the rest (the CA, forwarding, membership) are plain functions that
gRPC runs on a bounded pool of threads (``REMOTE_POOL``), so the hand-off is explicit.

Interceptors and ``abort_on_error`` work for both kinds of handler. Under ``grpc.aio`` a plain
handler's ``context.abort`` does not raise: every such call is followed by a return.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from swarmd import errors
from swarmd.errors import SwarmError
from swarmd.remotes import LEADER_KEY
from swarmd.handlers import Refusal
from swarmd.wire import MalformedRequestInterceptor

log = logging.getLogger("swarmd.api")

MAX_MESSAGE_BYTES = 4 << 20
# What the daemon answers may be larger than what it accepts: a list of 10,000 nodes is over
# 10 MiB (Docker lifts the limit for list answers too). Requests stay capped at the limits below.
MAX_ANSWER_BYTES = 256 << 20
# Threads for the remote API's plain handlers (CA signing, forwarded control calls, Raft
# membership); sessions, heartbeats and Raft streams are coroutines and take none.
REMOTE_POOL = 32
STOP_TIMEOUT = 5.0
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


def _options(max_request: int, *extra: tuple[str, int]) -> list[tuple[str, int]]:
    """Both servers' options: requests capped at ``max_request``, answers at MAX_ANSWER_BYTES."""
    return [*_COMMON_OPTIONS, ("grpc.max_receive_message_length", max_request),
            ("grpc.max_send_message_length", MAX_ANSWER_BYTES), *extra]


def start_control_server(socket_path: Path, interceptor: grpc.ServerInterceptor,
                         register: Any) -> grpc.Server:
    """Serve the control API on a Unix socket that only its owner can use (0600)."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.is_socket() or socket_path.exists():
        socket_path.unlink()
    # The authorisation interceptor first: only an authorised caller gets as far as parsing.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc"),
                         interceptors=[interceptor, MalformedRequestInterceptor()],
                         options=_options(MAX_MESSAGE_BYTES))
    register(server)
    old_umask = os.umask(0o177)  # the socket is private from the moment it exists
    try:
        server.add_insecure_port(f"unix:{socket_path}")
        server.start()
    finally:
        os.umask(old_umask)
    os.chmod(socket_path, 0o600)
    return server


class RemoteServer:
    """The remote API: a ``grpc.aio`` server on an event loop in a thread of its own."""

    def __init__(self, listen: str, credentials: grpc.ServerCredentials, interceptors: list[Any],
                 register: Any, on_bound: Callable[[int], None] | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._pool = futures.ThreadPoolExecutor(max_workers=REMOTE_POOL, thread_name_prefix="grpc-remote")
        self._thread = threading.Thread(target=self._loop.run_forever, name="remote-api", daemon=True)
        self._thread.start()
        try:
            self._server: grpc.aio.Server = self.call(self._start(listen, credentials, interceptors, register,
                                                                  on_bound))
        except BaseException:
            self._close_loop()
            raise

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def call(self, coro: Any, timeout: float = STOP_TIMEOUT) -> Any:
        """Run ``coro`` on the server's loop and wait for it (from another thread: waiting on
        the loop's own thread could only time out)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("RemoteServer.call from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self, listen: str, credentials: grpc.ServerCredentials, interceptors: list[Any],
                     register: Any, on_bound: Callable[[int], None] | None) -> grpc.aio.Server:
        options = _options(REMOTE_MAX_MESSAGE, *_REMOTE_OPTIONS)
        server = grpc.aio.server(migration_thread_pool=self._pool, interceptors=interceptors, options=options)
        register(server)
        try:
            port = server.add_secure_port(listen, credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            await server.stop(None)
            raise SwarmError(f"manager stopped: failed to listen on remote API address: listen tcp {listen}: "
                             "bind: address already in use or not available")
        if on_bound is not None:
            on_bound(port)
        await server.start()
        return server

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving (calls still running get ``grace`` seconds), bounded."""
        try:
            self.call(self._server.stop(grace), timeout=grace + STOP_TIMEOUT)
        except Exception:  # noqa: BLE001 - stopping goes on regardless
            log.exception("the remote API did not stop cleanly")
        self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def start_remote_server(listen: str, credentials: grpc.ServerCredentials, interceptors: list[Any],
                        register: Any, on_bound: Callable[[int], None] | None = None) -> RemoteServer:
    """``on_bound`` learns the bound port before the first connection is accepted.
    ``interceptors`` are plain ones (``intercept_service``); they run on the loop."""
    return RemoteServer(listen, credentials, [AioInterceptor(i) for i in (*interceptors, MalformedRequestInterceptor())],
                        register, on_bound)


class AioInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """One of our interceptors on the aio server: they only rewrap the handler they are given,
    synchronously, so the same class serves both servers."""

    def __init__(self, inner: grpc.ServerInterceptor) -> None:
        self._inner = inner

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        return self._inner.intercept_service(lambda _: handler, details)


def _refusal(context: Any, e: Exception, name: str) -> Refusal:
    """What a handler's exception becomes: its gRPC status (and the leader hint)."""
    from swarmd.store.raft import StoreError  # the store's error, should one escape its manager

    if isinstance(e, StoreError):
        e = (SwarmError(errors.NO_LEADER, grpc.StatusCode.UNKNOWN) if e.no_leader
             else SwarmError(f"the write did not commit: {e}", grpc.StatusCode.ABORTED))
    if isinstance(e, SwarmError):
        if e.leader_addr:
            context.set_trailing_metadata(((LEADER_KEY, e.leader_addr),))
        return e.code, e.message
    log.exception("internal error in %s", name)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}"


def abort_on_error(fn: Any) -> Any:
    """Servicer decorator: a SwarmError becomes its gRPC status; anything else is logged and
    reported as INTERNAL, and the daemon keeps serving. For plain and generator handlers, and
    for coroutines and async generators (the remote API's loop)."""
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as e:  # noqa: BLE001 - a request must never take the daemon down
                if _is_abort(e):
                    raise
                await context.abort(*_refusal(context, e, fn.__name__))
        return agen

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coroutine(self: Any, request: Any, context: Any) -> Any:
            try:
                return await fn(self, request, context)
            except Exception as e:  # noqa: BLE001 - a request must never take the daemon down
                if _is_abort(e):
                    raise
                await context.abort(*_refusal(context, e, fn.__name__))
        return coroutine

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from fn(self, request, context)
            except Exception as e:  # noqa: BLE001 - a request must never take the daemon down
                if _is_abort(e):
                    raise
                context.abort(*_refusal(context, e, fn.__name__))
        return stream

    @functools.wraps(fn)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as e:  # noqa: BLE001 - a request must never take the daemon down
            if _is_abort(e):
                raise
            context.abort(*_refusal(context, e, fn.__name__))
            return None  # (grpc.aio's abort from a plain handler returns)
    return unary


def peer_ip(context: Any) -> str:
    """The caller's IP from gRPC's peer string (ipv4:1.2.3.4:5 / ipv6:[::1]:5)."""
    peer = str(context.peer())
    kind, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]") if kind in ("ipv4", "ipv6") else ""


def _is_abort(e: Exception) -> bool:
    """context.abort() raises an exception of gRPC's own to unwind the handler: let it through
    (grpc's plain Exception() in the threaded server, AbortError under grpc.aio)."""
    return (isinstance(e, grpc.RpcError) or (type(e) is Exception and not e.args)
            or isinstance(e, grpc.aio.AbortError))


__all__ = ["start_control_server", "start_remote_server", "RemoteServer", "abort_on_error", "errors"]
