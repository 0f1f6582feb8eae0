"""The node's side of ``service logs``: it listens for the leader's log subscriptions on its
session's channel and publishes each one's lines on a ``PublishLogs`` stream of its own.

One thread per subscription (at most ``MAX_PUBLISHERS``) reads its tasks' files
(``logread``): the backlog first, task after task; then, following, what the tasks append,
looked at every ``POLL_SECONDS``. Lines go in batches of at most ``BATCH_LINES`` lines or
``BATCH_BYTES`` bytes; gRPC's flow control holds a thread whose reader is slow.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from swarmd.agent.exec.api import ExecError
from swarmd.agent.logread import Line, TaskLogReader
from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MAX_PUBLISHERS = 32
POLL_SECONDS = 0.1
BATCH_LINES = 256
BATCH_BYTES = 64 << 10
RELISTEN_SECONDS = 1.0

LogDir = Callable[[str], "Path | None"]


class _Publication:
    """One subscription this node serves."""

    def __init__(self, message: spb.LogSubscription) -> None:
        self.id = message.id
        self.follow = message.follow
        self.tail = message.tail if message.tail >= 0 else -1
        self.since_ns = message.since_ns
        self.added: queue.Queue[list[str]] = queue.Queue()
        self.added.put(list(message.task_ids))
        self.stop = threading.Event()


class LogPublisher:
    def __init__(self, log_dir: LogDir) -> None:
        self._log_dir = log_dir
        self._lock = threading.Lock()
        self._active: dict[str, _Publication] = {}

    def serve(self, channel: grpc.Channel, stop: threading.Event) -> None:
        """Listen for subscriptions while the session lasts (its channel closing ends the call)."""
        stub = pb_grpc.DispatcherStub(channel)
        mine: set[str] = set()
        try:
            while not stop.is_set():
                try:
                    for message in stub.ListenLogSubscriptions(spb.ListenLogSubscriptionsRequest()):
                        self._take(channel, message, mine)
                except grpc.RpcError as e:
                    if not stop.is_set():
                        log.debug("log subscriptions ended: %s", e.details() or e.code())
                except ValueError:  # the channel was closed under us: the session ended
                    return
                self._stop(mine)
                stop.wait(RELISTEN_SECONDS)
        finally:
            self._stop(mine)

    def _stop(self, ids: set[str]) -> None:
        with self._lock:
            for sub_id in ids:
                pub = self._active.pop(sub_id, None)
                if pub is not None:
                    pub.stop.set()
        ids.clear()

    def _take(self, channel: grpc.Channel, message: spb.LogSubscription, mine: set[str]) -> None:
        if not message.id:  # the leader's greeting: the stream is open
            return
        with self._lock:
            pub = self._active.get(message.id)
            if message.close:
                if pub is not None:
                    pub.stop.set()
                    del self._active[message.id]
                mine.discard(message.id)
                return
            if pub is not None:
                pub.added.put(list(message.task_ids))
                return
            pub = _Publication(message)
            busy = len(self._active) >= MAX_PUBLISHERS
            if not busy:
                self._active[pub.id] = pub
                mine.add(pub.id)
        if busy:
            pub.stop.set()
        threading.Thread(target=self._publish, args=(channel, pub, busy), name="log-publish", daemon=True).start()

    def _publish(self, channel: grpc.Channel, pub: _Publication, busy: bool) -> None:
        try:
            pb_grpc.DispatcherStub(channel).PublishLogs(self._messages(pub, busy))
        except grpc.RpcError as e:
            log.debug("publishing logs of %s ended: %s", pub.id, e.details() or e.code())
        except ValueError:  # the channel closed: the session ended
            pass
        finally:
            pub.stop.set()
            with self._lock:
                if self._active.get(pub.id) is pub:
                    del self._active[pub.id]

    def _messages(self, pub: _Publication, busy: bool) -> Iterator[spb.PublishLogsMessage]:
        if busy:
            yield spb.PublishLogsMessage(subscription_id=pub.id, close=True,
                                         error=f"too many log streams on this node (at most {MAX_PUBLISHERS})")
            return
        readers: list[TaskLogReader] = []
        batch = _Batch(pub.id)
        try:
            while not pub.stop.is_set():
                while True:
                    try:
                        task_ids = pub.added.get_nowait()
                    except queue.Empty:
                        break
                    for task_id in task_ids:
                        reader = self._reader(pub, task_id)
                        if reader is None:
                            continue
                        for line in reader.backlog():
                            if pub.stop.is_set():
                                return
                            if (full := batch.add(reader.task_id, line)) is not None:
                                yield full
                        if pub.follow:
                            readers.append(reader)
                        else:
                            reader.close()
                if not pub.follow:
                    yield batch.take(close=True)
                    return
                for reader in readers:
                    for line in reader.poll():
                        if (full := batch.add(reader.task_id, line)) is not None:
                            yield full
                if batch.lines:
                    yield batch.take()
                pub.stop.wait(POLL_SECONDS)
        finally:
            for reader in readers:
                reader.close()

    def _reader(self, pub: _Publication, task_id: str) -> TaskLogReader | None:
        try:
            task_dir = self._log_dir(task_id)
        except ExecError:
            return None  # not held here (any more): nothing to read
        if task_dir is None:
            return None
        return TaskLogReader(task_id, task_dir, pub.tail, pub.since_ns)


class _Batch:
    def __init__(self, sub_id: str) -> None:
        self.sub_id = sub_id
        self.lines: list[spb.LogMessage] = []
        self.size = 0

    def add(self, task_id: str, line: Line) -> spb.PublishLogsMessage | None:
        self.lines.append(spb.LogMessage(task_id=task_id, timestamp=line.timestamp, stream=line.stream,
                                         data=line.data))
        self.size += len(line.data)
        if len(self.lines) >= BATCH_LINES or self.size >= BATCH_BYTES:
            return self.take()
        return None

    def take(self, close: bool = False) -> spb.PublishLogsMessage:
        message = spb.PublishLogsMessage(subscription_id=self.sub_id, messages=self.lines, close=close)
        self.lines, self.size = [], 0
        return message
