"""Rewrapping a gRPC method handler's behaviour, for plain and asyncio handlers alike.

The interceptors (authorisation, malformed requests) serve both the threaded control server
and the remote API's ``grpc.aio`` server, where a handler may be a coroutine or an async
generator: a wrapper must be of the same kind as what it wraps, or gRPC would run it wrongly.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

Refusal = tuple[grpc.StatusCode, str]


def rebuild(handler: Any, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]],
            deserializer: Any = None) -> Any:
    """``handler`` with its behaviour replaced by ``wrap(behaviour, request_streaming)``."""
    parse = deserializer or handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), parse, serialize)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, False), parse, serialize)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, True), parse, serialize)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), parse, serialize)


def checked(behavior: Callable[..., Any], check: Callable[[Any, Any], Refusal | None]) -> Callable[..., Any]:
    """``behavior`` run only when ``check(request, context)`` refuses nothing, of the same kind
    (function, coroutine, generator or async generator) so that gRPC runs it the same way."""
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

    def plain(request: Any, context: Any) -> Any:
        refusal = check(request, context)
        if refusal is not None:
            context.abort(*refusal)
            # Under grpc.aio the abort returned: end here. gRPC sees the call aborted before it
            # looks at what a handler returned, unary or streaming.
            return iter(())
        return behavior(request, context)
    return plain
