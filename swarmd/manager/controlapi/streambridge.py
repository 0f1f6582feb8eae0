"""A plain streaming handler served from the remote API's event loop, as a coroutine.

``grpc.aio`` runs a plain generator handler's steps on its thread pool, and when the caller
goes away it just stops asking for the next item: the generator stays suspended, its
``finally`` never runs, and ``add_callback`` is never called. A ``service logs -f`` forwarded
from another manager would then hold its subscription on the leader forever. ``bridge`` runs
the generator on a thread of its own instead, hands its items to the loop through a small
queue (so a slow caller slows the generator, never the loop), and, however the call ends,
runs the callbacks the handler registered and lets the generator finish.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

QUEUED = 4
_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class CallbackContext:
    """What the handler sees of its call: only ``add_callback`` (run when the call ends)."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self.callbacks.append(callback)
        return True


Handler = Callable[[Any, CallbackContext], Generator[Any, None, None]]


async def bridge(handler: Handler, request: Any) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUED)
    context = CallbackContext()
    gone = threading.Event()

    def put(item: Any) -> bool:
        try:
            future = asyncio.run_coroutine_threadsafe(items.put(item), loop)
        except RuntimeError:  # the loop is closed: so is the call
            return False
        while True:
            try:
                future.result(0.5)
                return True
            except concurrent.futures.TimeoutError:
                if gone.is_set():
                    future.cancel()
                    return False
            except (concurrent.futures.CancelledError, RuntimeError):
                return False

    def pump() -> None:
        stream = handler(request, context)
        try:
            for item in stream:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - delivered to the call, which words it
            put(_Failed(e))
        finally:
            stream.close()

    threading.Thread(target=pump, name="stream-bridge", daemon=True).start()
    try:
        while True:
            item = await items.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        gone.set()
        for callback in context.callbacks:
            callback()
