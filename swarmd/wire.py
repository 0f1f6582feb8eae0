"""Requests whose bytes are not the message the method takes.

gRPC answers those with INTERNAL and logs a traceback per request, so anyone who can reach a
port can fill the log with tracebacks. This interceptor parses the bytes itself: a request that
does not parse is refused with INVALID_ARGUMENT and one warning line naming the method and the
caller. It sits inside the authorisation interceptor, so only an authorised caller learns that
its bytes were wrong.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from swarmd.handlers import checked, rebuild

from swarmd.logs import LogLimiter

log = logging.getLogger("swarmd.api")
WARN_BURST, WARN_PERIOD = 20, 60.0  # a caller that keeps sending junk cannot flood the log


class MalformedRequest(ValueError):
    """Raised into a streaming handler's request iterator when a message does not parse."""


class _Unparsed:
    """What the deserializer hands on instead of a message it could not parse."""

    def __init__(self, why: str) -> None:
        self.why = why


def _refusal(method: str, why: str) -> str:
    return f"malformed request to {method}: {why}"


class MalformedRequestInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self._warnings = LogLimiter(WARN_BURST, WARN_PERIOD, lambda m: log.warning("%s", m))
        self._warnings_lock = threading.Lock()

    def _warn(self, message: str) -> None:
        with self._warnings_lock:
            self._warnings.warn(message, time.monotonic())

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = details.method
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and whatever else
                return _Unparsed(f"{type(e).__name__}: {e}")

        def refuse(context: grpc.ServicerContext, bad: _Unparsed) -> None:
            self._warn(f"refused a malformed {method} request from {context.peer()}: {bad.why}")

        def check(request: Any, context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
            if isinstance(request, _Unparsed):
                refuse(context, request)
                return grpc.StatusCode.INVALID_ARGUMENT, _refusal(method, request.why)
            return None

        def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def bad_message(context: grpc.ServicerContext, request: _Unparsed) -> MalformedRequest:
                refuse(context, request)
                context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                context.set_details(_refusal(method, request.why))
                return MalformedRequest(request.why)

            if inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior):
                def wrap_async(requests: AsyncIterator[Any], context: grpc.ServicerContext) -> Any:
                    async def parsed() -> AsyncIterator[Any]:
                        async for request in requests:
                            if isinstance(request, _Unparsed):
                                raise bad_message(context, request)
                            yield request
                    return behavior(parsed(), context)
                if inspect.iscoroutinefunction(behavior):
                    async def coroutine(requests: AsyncIterator[Any], context: grpc.ServicerContext) -> Any:
                        return await wrap_async(requests, context)
                    return coroutine

                async def agen(requests: AsyncIterator[Any], context: grpc.ServicerContext) -> AsyncIterator[Any]:
                    async for item in wrap_async(requests, context):
                        yield item
                return agen

            def plain(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                def parsed() -> Iterator[Any]:
                    for request in requests:
                        if isinstance(request, _Unparsed):
                            raise bad_message(context, request)
                        yield request
                return behavior(parsed(), context)
            return plain

        return rebuild(handler, lambda behavior, requests, responses: (
            streaming(behavior) if requests else checked(behavior, check, responses)), deserializer=deserialize)
