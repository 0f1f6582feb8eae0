"""Rewrapping a gRPC method handler's behaviour, for plain and asyncio handlers alike.

The interceptors (authorisation, malformed requests) serve both the threaded control server
and the remote API's ``grpc.aio`` server, where a handler may be a coroutine or an async
generator: a wrapper must be of the same kind as what it wraps, or gRPC would run it wrongly.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

Refusal = tuple[grpc.StatusCode, str]


Wrap = Callable[[Callable[..., Any], bool, bool], Callable[..., Any]]


def rebuild(handler: Any, wrap: Wrap, deserializer: Any = None) -> Any:
    """``handler`` with its behaviour replaced by ``wrap(behaviour, request_streaming,
    response_streaming)``."""
    parse = deserializer or handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False, False), parse, serialize)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, False, True), parse, serialize)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, True, False), parse, serialize)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True, True), parse, serialize)


def checked(behavior: Callable[..., Any], check: Callable[[Any, Any], Refusal | None],
            streams_responses: bool) -> Callable[..., Any]:
    """``behavior`` run only when ``check(request, context)`` refuses nothing, of the same kind
    (function, coroutine, generator or async generator) so that gRPC runs it the same way.

    A plain streaming behaviour is wrapped as a generator: grpc.aio calls a streaming handler
    on its loop and only iterates it on a pool thread, and a plain handler's abort waits for
    the loop, so the check must run in the iteration."""
    if inspect.iscoroutinefunction(behavior):
        async def coroutine(request: Any, context: Any) -> Any:
            refusal = check(request, context)
            if refusal is not None:
                await context.abort(*refusal)
            return await behavior(request, context)
        return coroutine
    if inspect.isasyncgenfunction(behavior):
        async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
            refusal = check(request, context)
            if refusal is not None:
                await context.abort(*refusal)
            async for item in behavior(request, context):
                yield item
        return agen

    if streams_responses:
        def generator(request: Any, context: Any) -> Iterator[Any]:
            refusal = check(request, context)
            if refusal is not None:
                context.abort(*refusal)
                return  # (under grpc.aio the abort returned)
            yield from behavior(request, context)
        return generator

    def plain(request: Any, context: Any) -> Any:
        refusal = check(request, context)
        if refusal is not None:
            context.abort(*refusal)
            return None  # (under grpc.aio the abort returned: gRPC sees the call aborted)
        return behavior(request, context)
    return plain
