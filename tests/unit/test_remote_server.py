"""The remote API's grpc.aio server with the interceptors the daemon uses: a refused call never
reaches its handler, whether the handler is a coroutine, an async generator or a plain function
(under grpc.aio a plain handler's ``context.abort`` returns instead of raising)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from swarmd.manager.authz import AuthzInterceptor
from swarmd.server import RemoteServer, abort_on_error, start_remote_server
from swarmd.errors import SwarmError
from tests.raft_transport_cluster import TestPKI

ALLOWED = "swarm-worker"


class Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Four handlers of every kind; each records that it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def service(self, details: Any) -> Any:
        name = details.method.rsplit("/", 1)[-1]
        ran = self.ran

        async def coroutine(request: bytes, context: Any) -> bytes:
            ran.append(name)
            return request

        async def agen(request: bytes, context: Any) -> AsyncIterator[bytes]:
            ran.append(name)
            yield request

        def plain(request: bytes, context: Any) -> bytes:
            ran.append(name)
            return request

        def generator(request: bytes, context: Any) -> Iterator[bytes]:
            ran.append(name)
            yield request

        kinds: dict[str, Any] = {
            "Coroutine": grpc.unary_unary_rpc_method_handler(coroutine),
            "AsyncGen": grpc.unary_stream_rpc_method_handler(agen),
            "Plain": grpc.unary_unary_rpc_method_handler(plain),
            "Generator": grpc.unary_stream_rpc_method_handler(generator),
        }
        return kinds.get(name)


class Failing:
    """Servicer methods that fail, decorated as the daemon's are."""

    @abort_on_error
    async def coroutine(self, request: bytes, context: Any) -> bytes:
        raise SwarmError("refused by the servicer", grpc.StatusCode.FAILED_PRECONDITION)

    @abort_on_error
    async def agen(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        raise SwarmError("refused mid-stream", grpc.StatusCode.UNAVAILABLE)

    @abort_on_error
    def plain(self, request: bytes, context: Any) -> bytes:
        raise ValueError("a bug")


@pytest.fixture
def pki_() -> TestPKI:
    return TestPKI.create()


def serve(pki_: TestPKI, role: str | None, handlers: Any) -> tuple[RemoteServer, str]:
    cert, key = pki_.issue("server" + "x" * 19)
    creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=pki_.cert, require_client_auth=True)
    rules = {f"/t.T/{n}": frozenset({ALLOWED}) for n in ("Coroutine", "AsyncGen", "Plain", "Generator")}
    ports: list[int] = []
    server = start_remote_server("127.0.0.1:0", creds, [AuthzInterceptor(lambda _: role, rules)],
                                 lambda s: s.add_generic_rpc_handlers([handlers]), on_bound=ports.append)
    return server, f"127.0.0.1:{ports[0]}"


def channel(pki_: TestPKI, addr: str) -> grpc.Channel:
    cert, key = pki_.issue("client" + "y" * 19, role="swarm-worker")
    return grpc.secure_channel(addr, pki_.channel_credentials(cert, key),
                               options=[("grpc.ssl_target_name_override", "swarm-manager")])


def call(ch: grpc.Channel, name: str) -> Any:
    if name in ("AsyncGen", "Generator"):
        return list(ch.unary_stream(f"/t.T/{name}")(b"hi", timeout=5))
    return ch.unary_unary(f"/t.T/{name}")(b"hi", timeout=5)


@pytest.mark.parametrize("name", ["Coroutine", "AsyncGen", "Plain", "Generator"])
def test_a_refused_call_never_reaches_its_handler(pki_: TestPKI, name: str) -> None:
    handlers = Handlers()
    server, addr = serve(pki_, None, handlers)
    try:
        with channel(pki_, addr) as ch:
            with pytest.raises(grpc.RpcError) as e:
                call(ch, name)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert e.value.details() == "Permission denied: unauthorized peer role: none"
        assert handlers.ran == []
    finally:
        server.stop(0)


@pytest.mark.parametrize("name", ["Coroutine", "AsyncGen", "Plain", "Generator"])
def test_an_allowed_call_runs_its_handler_once(pki_: TestPKI, name: str) -> None:
    handlers = Handlers()
    server, addr = serve(pki_, ALLOWED, handlers)
    try:
        with channel(pki_, addr) as ch:
            assert call(ch, name) in (b"hi", [b"hi"])
        assert handlers.ran == [name]
    finally:
        server.stop(0)


def test_servicer_errors_become_their_status_for_every_kind(pki_: TestPKI) -> None:
    failing = Failing()

    class Routes(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            return {"/t.T/Coroutine": grpc.unary_unary_rpc_method_handler(failing.coroutine),
                    "/t.T/AsyncGen": grpc.unary_stream_rpc_method_handler(failing.agen),
                    "/t.T/Plain": grpc.unary_unary_rpc_method_handler(failing.plain)}.get(details.method)

    server, addr = serve(pki_, ALLOWED, Routes())
    try:
        with channel(pki_, addr) as ch:
            outcomes = {}
            for name in ("Coroutine", "AsyncGen", "Plain"):
                got: list[bytes] = []
                with pytest.raises(grpc.RpcError) as e:
                    if name == "AsyncGen":
                        for item in ch.unary_stream(f"/t.T/{name}")(b"hi", timeout=5):
                            got.append(item)
                    else:
                        ch.unary_unary(f"/t.T/{name}")(b"hi", timeout=5)
                outcomes[name] = (e.value.code(), e.value.details(), got)
        assert outcomes == {
            "Coroutine": (grpc.StatusCode.FAILED_PRECONDITION, "refused by the servicer", []),
            "AsyncGen": (grpc.StatusCode.UNAVAILABLE, "refused mid-stream", [b"first"]),
            "Plain": (grpc.StatusCode.INTERNAL, "internal error: ValueError", []),
        }
    finally:
        server.stop(0)


def test_a_second_server_on_the_same_address_is_refused(pki_: TestPKI) -> None:
    server, addr = serve(pki_, ALLOWED, Handlers())
    try:
        with pytest.raises(SwarmError) as e:
            serve_at(pki_, addr)
        assert "failed to listen on remote API address" in e.value.message
    finally:
        server.stop(0)


def serve_at(pki_: TestPKI, addr: str) -> RemoteServer:
    cert, key = pki_.issue("other" + "z" * 20)
    creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=pki_.cert, require_client_auth=True)
    return start_remote_server(addr, creds, [], lambda s: None)
