"""Raft messages between managers: one gRPC bidirectional stream per pair (DESIGN §5).

pysyncobj's own TCP transport listens on a port of its own and unpickles whatever arrives; it is
never used. Here pysyncobj's messages travel as ``swarm.v1.Raft/Stream`` frames on the remote API,
under the managers' mutual TLS, encoded with msgpack (never pickle).

Threads and ownership:

* pysyncobj state lives on the store's tick thread and has no locks. Every pysyncobj callback
  (``_onMessageReceived``, ``_onNodeConnected``, ``_onNodeDisconnected``) is made on that thread:
  gRPC threads append events to the transport's queue and write one byte to a pipe that is
  subscribed on ``syncObj._poller``; the poll callback drains the queue on the tick thread.
* ``send`` runs on the tick thread: it encodes the message and appends it to the peer's outbound
  queue, from which gRPC's writer (request iterator on the dialer, response iterator on the
  acceptor) takes it. It returns False when there is no live stream to that peer.
* Exactly one stream per pair: the member with the larger node ID dials (one ``raft-dial-<id>``
  thread per such peer, reconnecting with backoff from 0.1 s to 1 s); the other side accepts.
  The acceptor learns the caller's node ID from its verified certificate and refuses callers
  that are not current Raft members (the member set follows pysyncobj's ``addNode``/``dropNode``).
  The dialer proves the server's identity by TLS: ``ssl_target_name_override`` is the peer's
  node ID, which manager certificates carry as a DNS SAN.
* The acceptor answers a stream with an empty frame (the "accepted" mark); the dialer reports
  the peer connected only once that arrives. Both ends send an empty frame every
  ``HEARTBEAT_INTERVAL`` when idle and close a stream that stays silent for ``DEAD_AFTER``; gRPC
  keepalive pings catch dead TCP connections as well. A closed stream is reported disconnected
  to pysyncobj and the dialer redials.

Wire format: a ``RaftFrame.payload`` is one or more concatenated msgpack maps, each one
pysyncobj message (``use_bin_type``; tuples become arrays). Messages queued while the previous
frame was being written share the next frame. An empty payload is the accepted mark or a
heartbeat. Frames over ``MAX_FRAME``, undecodable frames and messages that do not have the shape
of pysyncobj's (``_SCHEMA``) are dropped whole with a log line.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import msgpack  # type: ignore[import-untyped]  # no stubs; used through encode/decode only
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.transport import Transport

from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc
from swarmd.ca import pki
from swarmd.remotes import open_channel
from swarmd.store.journal import MetaNotDurable

log = logging.getLogger(__name__)

# Largest accepted or sent payload. pysyncobj cuts log entries and snapshots of 64 KiB or more
# into 64 KiB chunks, and one write is at most raft.MAX_OP_BYTES, so real frames stay far below;
# the remote API (server.REMOTE_MAX_MESSAGE) refuses anything larger before it is read whole.
MAX_FRAME = 4 << 20
BATCH_BYTES = 1 << 20             # messages queued together share a frame up to this size
MAX_BACKLOG = 128 << 20           # queued bytes to a peer before the stream is dropped as stuck
HEARTBEAT_INTERVAL = 0.5          # an idle stream carries an empty frame this often ...
DEAD_AFTER = 3.0                  # ... and is closed after this long without any frame
ACK_TIMEOUT = 5.0                 # a dialled stream must be accepted within this
MIN_BACKOFF = 0.02
ATTACH_WAIT = 3.0
MAX_BACKOFF = 1.0
MAX_BAD_FRAMES_IN_A_ROW = 100   # a stream that sends only junk is closed (the peer may redial)
JOIN_TIMEOUT = 2.0                # bound on joining dialer and reader threads when stopping
_MAX_EVENTS_PER_WAKE = 2000       # the tick thread has its own work too
_GRPC_SLACK = 1 << 16

# Options of the dialling channel. Each channel gets its own subchannel pool so a failed attempt
# does not leave a shared subchannel in backoff for the next one.
_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_FRAME + _GRPC_SLACK),
    ("grpc.max_send_message_length", MAX_FRAME + _GRPC_SLACK),
    ("grpc.use_local_subchannel_pool", 1),
]

# -- codec ---------------------------------------------------------------------------------------

class CodecError(ValueError):
    """A frame that is not a well-formed pysyncobj message."""


# pysyncobj 0.3.17's messages (syncobj.py): type -> (required fields, optional fields), each
# field with the kind of value pysyncobj sends. Terms, indexes and request IDs are counters: ints
# (never bools, which msgpack keeps apart) in [0, 2^63), so a peer cannot push a term past what
# the journal and msgpack can hold. Any other field is refused: a message cannot smuggle in, say,
# a sender ID (the sender is the stream's verified certificate).
COUNTER, MAYBE_COUNTER, FLAG, BLOB, TEXT, ENTRIES, CHUNK = range(7)
_Fields = dict[str, int]
_SCHEMA: dict[str, tuple[_Fields, _Fields]] = {
    "request_vote": ({"term": COUNTER, "last_log_index": COUNTER, "last_log_term": COUNTER}, {}),
    "response_vote": ({"term": COUNTER}, {}),
    "timeout_now": ({"term": COUNTER}, {}),
    "append_entries": (
        {"term": COUNTER, "commit_index": COUNTER},
        {"entries": ENTRIES, "prevLogIdx": MAYBE_COUNTER, "prevLogTerm": MAYBE_COUNTER,
         "transmission": TEXT, "data": BLOB, "serialized": CHUNK},
    ),
    "apply_command": ({"command": BLOB}, {"request_id": COUNTER}),
    "apply_command_response": ({"request_id": COUNTER},
                               {"error": COUNTER, "log_idx": COUNTER, "log_term": COUNTER}),
    "next_node_idx": ({"next_node_idx": COUNTER, "reset": FLAG, "success": FLAG}, {}),
    # Ours, not pysyncobj's: the leader's confirmation round for linearizable reads (store.reads).
    "read_probe": ({"term": COUNTER, "round": COUNTER}, {}),
    "read_ack": ({"term": COUNTER, "round": COUNTER}, {}),
}
_READ_MESSAGES = frozenset({"read_probe", "read_ack"})
# Messages whose sender must have its journal on disk before they leave (see send).
_VOUCHING = frozenset({"next_node_idx", "request_vote", "response_vote"})
_COUNTER_LIMIT = 1 << 63
_TRANSMISSIONS = ("start", "process", "finish")
# pysyncobj's command types (syncobj._COMMAND_TYPE): a member forwards only regular writes to
# the leader; membership and version changes are made on the leader itself.
_REGULAR_COMMAND = 0


def _is_counter(value: Any) -> bool:
    return type(value) is int and 0 <= value < _COUNTER_LIMIT


def _valid(kind: int, value: Any) -> bool:
    if kind == COUNTER:
        return _is_counter(value)
    if kind == MAYBE_COUNTER:
        return value is None or _is_counter(value)
    if kind == FLAG:
        return type(value) is bool
    if kind == BLOB:
        return type(value) is bytes
    if kind == TEXT:
        return type(value) is str
    if kind == ENTRIES:  # [command, index, term] each
        return type(value) is list and all(
            type(e) is list and len(e) == 3 and type(e[0]) is bytes and _is_counter(e[1]) and _is_counter(e[2])
            for e in value)
    # CHUNK: a snapshot chunk [data, is_first, is_last], or None when there is none to send
    return value is None or (type(value) is list and len(value) == 3 and type(value[0]) is bytes
                             and type(value[1]) is bool and type(value[2]) is bool)


def _reject_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack extension type {code} is not allowed")


def encode(message: dict[str, Any]) -> bytes:
    """A pysyncobj message as msgpack. Raises TypeError/ValueError for anything else."""
    return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]


def decode(payload: bytes) -> list[dict[str, Any]]:
    """Parse and check one frame (one or more concatenated messages); raises ``CodecError``
    if any part is malformed, and then nothing of the frame is used. Never unpickles."""
    if len(payload) > MAX_FRAME:
        raise CodecError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME} byte limit")
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=False, use_list=True, ext_hook=_reject_ext,
        max_buffer_size=MAX_FRAME, max_bin_len=MAX_FRAME, max_str_len=MAX_FRAME,
        max_array_len=1 << 21, max_map_len=64, max_ext_len=0)
    messages: list[Any] = []
    end = 0  # offset after the last complete message
    try:
        unpacker.feed(payload)
        while True:
            try:
                messages.append(unpacker.unpack())
            except msgpack.OutOfData:
                break
            end = unpacker.tell()
    except CodecError:
        raise
    except Exception as e:  # noqa: BLE001 - msgpack raises several unrelated types
        raise CodecError(f"undecodable frame: {type(e).__name__}: {e}") from None
    if end != len(payload):
        raise CodecError("truncated frame")
    for message in messages:
        _check(message)
    return messages


def _check(message: Any) -> None:
    if not isinstance(message, dict):
        raise CodecError(f"frame is a {type(message).__name__}, not a map")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in _SCHEMA:
        raise CodecError(f"unknown message type {_short(kind)}")
    required, optional = _SCHEMA[kind]
    for name in required:
        if name not in message:
            raise CodecError(f"{kind} without {name}")
    for name, value in message.items():
        if name == "type":
            continue
        field = required.get(name, optional.get(name)) if isinstance(name, str) else None
        if field is None:
            raise CodecError(f"{kind} with an unknown field {_short(name)}")
        if not _valid(field, value):
            raise CodecError(f"{kind}.{name} is not a valid {type(value).__name__} value")
    if kind == "append_entries":
        if ("prevLogIdx" in message) != ("prevLogTerm" in message):
            raise CodecError("append_entries with only one of prevLogIdx and prevLogTerm")
        transmission = message.get("transmission")
        if transmission is not None and transmission not in _TRANSMISSIONS:
            raise CodecError(f"append_entries with an unknown transmission {_short(transmission)}")
        if (transmission is None) != ("data" not in message) or (transmission and "prevLogIdx" not in message):
            raise CodecError("append_entries with a chunk that is not part of a transmission")
    elif kind == "apply_command":
        if message["command"][:1] != bytes([_REGULAR_COMMAND]):
            raise CodecError("apply_command that is not a regular write")
    elif kind == "apply_command_response":
        if "error" not in message and not ("log_idx" in message and "log_term" in message):
            raise CodecError("apply_command_response without an error or a log position")


def _short(value: Any) -> str:
    """A peer-controlled value for a log line: repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- one stream ----------------------------------------------------------------------------------

_NOTHING_YET = pb.RaftFrame(payload=b"\0")  # a marker from frames(block=False), never sent


class _Link:
    """One live stream to a peer, either direction. Thread-safe."""

    def __init__(self, peer: str, on_close: Callable[[_Link, str], None]) -> None:
        self.peer = peer
        self._on_close = on_close
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._backlog = 0
        self._closed = threading.Event()
        self.last_recv = time.monotonic()
        self.last_sent = time.monotonic()
        self.bad_frames = 0
        self.bad_in_a_row = 0
        # An accepted stream's writer is a coroutine on the remote API's loop: a thread that
        # queues a payload wakes it through the loop (the one explicit hand-off).
        self._waker: Callable[[], None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def enqueue(self, payload: bytes) -> bool:
        if self._closed.is_set():
            return False
        with self._lock:
            self._backlog += len(payload)
            backlog = self._backlog
        if backlog > MAX_BACKLOG:
            self.close(f"more than {MAX_BACKLOG} bytes queued (peer not reading)")
            return False
        self.last_sent = time.monotonic()
        self._out.put(payload)
        waker = self._waker
        if waker is not None:
            waker()
        return True

    async def async_frames(self) -> AsyncIterator[pb.RaftFrame]:
        """``frames`` for a coroutine: waits on the loop, not in a thread."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop is closed: the server stopped, the stream is gone
                pass
        self._waker = wake
        try:
            frames = self.frames(accepted_mark=True, block=False)
            while True:
                frame = next(frames, None)
                if frame is None:
                    return
                if frame is _NOTHING_YET:
                    await ready.wait()
                    ready.clear()
                    continue
                yield frame
        finally:
            self._waker = None

    def frames(self, accepted_mark: bool, block: bool = True) -> Iterator[pb.RaftFrame]:
        """The outbound frames, for gRPC's writer; ends when the link closes.

        Messages queued while the previous frame was being written travel together in one
        frame (up to ``BATCH_BYTES``): fewer gRPC messages, fewer thread hand-offs."""
        if accepted_mark:
            yield pb.RaftFrame()
        pending: bytes | None = None  # taken from the queue but too big for the last frame
        while True:
            if pending is None:
                if block:
                    payload = self._out.get()
                else:
                    try:
                        payload = self._out.get_nowait()
                    except queue.Empty:
                        yield _NOTHING_YET  # the caller waits for a wake-up and asks again
                        continue
                if payload is None:
                    return
            else:
                payload, pending = pending, None
            if self._closed.is_set():
                return
            parts = [payload]
            size = len(payload)
            last = False
            while size < BATCH_BYTES:
                try:
                    more = self._out.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    last = True
                    break
                if size + len(more) > BATCH_BYTES:
                    pending = more
                    break
                parts.append(more)
                size += len(more)
            with self._lock:
                self._backlog -= size
            yield pb.RaftFrame(payload=parts[0] if len(parts) == 1 else b"".join(parts))
            if last:
                return

    def close(self, reason: str) -> None:
        if self._closed.is_set():
            return
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._out.put(None)
        waker = self._waker
        if waker is not None:
            waker()
        self._on_close(self, reason)


# -- the pysyncobj side --------------------------------------------------------------------------

_CONNECTED, _DISCONNECTED, _MESSAGE = 0, 1, 2


class _RaftTransport(Transport):  # type: ignore[misc]
    """pysyncobj's view of the network. Everything but the ``post`` methods runs on the tick
    thread."""

    def __init__(self, network: PeerNetwork, syncObj: Any, selfNode: Any,  # noqa: N803
                 otherNodes: Any) -> None:  # noqa: N803
        super().__init__(syncObj, selfNode, otherNodes)
        if selfNode is None or selfNode.id != network.self_id:
            raise ValueError(f"the raft transport of {network.self_id} needs that node as selfNode")
        self._network = network
        self._syncobj = syncObj
        self._nodes: dict[str, Any] = {str(n.id): n for n in otherNodes}
        self._current: dict[str, _Link] = {}    # links reported connected to pysyncobj
        self.connected_ids: frozenset[str] = frozenset()  # read by other threads
        self._events: collections.deque[tuple[int, _Link, Any]] = collections.deque()
        self._rfd, self._wfd = os.pipe()
        for fd in (self._rfd, self._wfd):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self._poller = syncObj._poller
        self._poller.subscribe(self._rfd, self._on_wake, POLL_EVENT_TYPE.READ)
        self._destroyed = False
        self._fd_lock = threading.Lock()
        self._next_heartbeat = 0.0
        self._chunks_from: str | None = None  # the member whose chunked entry is arriving
        # (syncobj, send, peer, node, message) for read_probe / read_ack; set by the RaftStore
        self.read_handler: Callable[[Any, Any, str, Any, dict[str, Any]], None] | None = None
        syncObj.addOnTickCallback(self._on_tick)
        try:
            network._attach(self, list(self._nodes))
        except BaseException:
            self._release()
            raise

    # -- from any thread ---------------------------------------------------------------------------
    def post(self, kind: int, link: _Link) -> None:
        self._post([(kind, link, None)])

    def post_messages(self, link: _Link, messages: list[dict[str, Any]]) -> None:
        self._post([(_MESSAGE, link, m) for m in messages])

    def _post(self, events: list[tuple[int, _Link, Any]]) -> None:
        """Queue events for the tick thread and wake it (its poller watches the pipe)."""
        with self._fd_lock:  # never write to a closed (maybe reused) descriptor
            if self._destroyed:
                return
            self._events.extend(events)
            try:
                os.write(self._wfd, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: a wake-up is pending anyway

    # -- tick thread -------------------------------------------------------------------------------
    def _on_wake(self, fd: int, event: int) -> None:
        try:
            while os.read(self._rfd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        for _ in range(_MAX_EVENTS_PER_WAKE):
            try:
                kind, link, message = self._events.popleft()
            except IndexError:
                return
            try:
                self._handle(kind, link, message)
            except MetaNotDurable:
                pass  # this member's own storage fault, already reported (rate-limited) by the journal
            except Exception as e:  # noqa: BLE001 - one bad message must not stop the others
                # Messages come from other hosts: what they make pysyncobj raise is their fault,
                # so one warning line (no traceback) says who sent what.
                what = message.get("type") if isinstance(message, dict) else kind
                log.warning("raft: a %s message from %s could not be handled: %s: %s",
                            what, link.peer, type(e).__name__, _short(str(e)))
        if self._events:
            self._post([])  # more than one wake-up's worth: come back after the tick

    def _handle(self, kind: int, link: _Link, message: Any) -> None:
        peer = link.peer
        node = self._nodes.get(peer)
        if kind == _MESSAGE:
            if node is not None and self._current.get(peer) is link:
                self._deliver(node, message)
        elif kind == _CONNECTED:
            if node is None:
                link.close("not a raft member")
                return
            if link.closed:
                return
            previous = self._current.get(peer)
            if previous is not None and previous is not link:
                previous.close("replaced by a new stream")
            self._current[peer] = link
            self._set_connected()
            self._onNodeConnected(node)
        elif kind == _DISCONNECTED:
            if self._current.get(peer) is link:
                del self._current[peer]
                self._set_connected()
                if node is not None:
                    self._onNodeDisconnected(node)

    def _deliver(self, node: Any, message: dict[str, Any]) -> None:
        """Hand ``message`` to pysyncobj, keeping its leader from rewinding on stale acks.

        pysyncobj advances a follower's next index when it sends entries, but sets it back to
        whatever a successful ``next_node_idx`` reply names. With appends pipelined on one
        stream, the reply to an earlier append often arrives after later entries were sent: the
        leader then sends those entries again and the follower truncates and rewrites its log
        (pysyncobj-notes §4, "truncating already-applied log entries"). A success reply only
        proves the follower holds everything before the index it names, so the index is kept
        where it was; a follower that really misses entries answers the next append with a
        reset, which pysyncobj still honours.
        """
        if message["type"] in _READ_MESSAGES:
            if self.read_handler is not None:
                self.read_handler(self._syncobj, self.send, str(node.id), node, message)
            return
        if message["type"] == "append_entries" and not self._chunk_in_order(node, message):
            return
        if message["type"] != "next_node_idx" or not message["success"] or message["reset"]:
            self._onMessageReceived(node, message)
            return
        next_index: dict[Any, int] = self._syncobj._SyncObj__raftNextIndex
        before = next_index.get(node)
        self._onMessageReceived(node, message)
        after = next_index.get(node)
        if before is not None and after is not None and after < before:
            next_index[node] = before

    def _chunk_in_order(self, node: Any, message: dict[str, Any]) -> bool:
        """Whether pysyncobj can take this piece of a chunked log entry.

        pysyncobj keeps one buffer for an incoming chunked entry and appends every "process"
        or "finish" chunk to it, so a chunk that continues no transfer (or another member's)
        would make it raise or mix two entries: such chunks are dropped here. Only chunks that
        pysyncobj reads at all (current term, with a previous-entry position) count.
        """
        transmission = message.get("transmission")
        if transmission is None or "prevLogIdx" not in message:
            return True
        if message["term"] < self._syncobj._SyncObj__raftCurrentTerm:
            return True  # pysyncobj ignores it
        peer = str(node.id)
        if transmission == "start":
            self._chunks_from = peer
            return True
        if self._chunks_from != peer:
            log.warning("raft: dropped a %r chunk from %s that continues no transfer it started",
                        transmission, peer)
            return False
        if transmission == "finish":
            self._chunks_from = None
        return True

    def _set_connected(self) -> None:
        self.connected_ids = frozenset(self._current)

    def _on_tick(self) -> None:
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_INTERVAL / 2
        for link in list(self._current.values()):
            if now - link.last_recv > DEAD_AFTER:
                link.close(f"no frame for {DEAD_AFTER:.0f}s")
            elif now - link.last_sent >= HEARTBEAT_INTERVAL:
                link.enqueue(b"")

    def addNode(self, node: Any) -> None:  # noqa: N802 - pysyncobj's interface
        peer = str(node.id)
        if peer == self._network.self_id:
            return
        self._nodes[peer] = node
        self._network._set_member(peer, True)

    def dropNode(self, node: Any) -> None:  # noqa: N802
        peer = str(node.id)
        self._nodes.pop(peer, None)
        self._network._set_member(peer, False)
        link = self._current.pop(peer, None)
        if link is not None:
            link.close("removed from the raft cluster")
            self._set_connected()
            self._onNodeDisconnected(node)

    def send(self, node: Any, message: Any) -> bool:
        link = self._current.get(str(node.id))
        if link is None or link.closed:
            return False
        if isinstance(message, dict) and message.get("type") in _VOUCHING:
            # This message vouches for the log (an acknowledgement, a candidacy): the entries it
            # stands for must be on disk first. One fsync covers every entry appended since.
            sync = getattr(self._syncobj._SyncObj__raftLog, "sync_if_dirty", None)
            if sync is not None:
                sync()
        try:
            payload = encode(message)
        except (TypeError, ValueError, OverflowError) as e:
            log.error("raft: cannot encode a %r message for %s: %s",
                      message.get("type") if isinstance(message, dict) else type(message), node.id, e)
            return False
        if len(payload) > MAX_FRAME:
            log.error("raft: dropping a %d byte %r message for %s (limit %d)",
                      len(payload), message.get("type"), node.id, MAX_FRAME)
            return False
        return link.enqueue(payload)

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._network._detach(self)
        self._current.clear()
        self._set_connected()
        self._events.clear()
        self._release()

    def _release(self) -> None:
        with self._fd_lock:
            if self._destroyed:
                return
            self._destroyed = True
        try:
            self._poller.unsubscribe(self._rfd)
        except Exception:  # noqa: BLE001 - the poller may already be gone
            pass
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass


class LoneTransport(Transport):  # type: ignore[misc]
    """A member without a network (single-manager tests): sends nothing, hears nothing."""

    def send(self, node: Any, message: Any) -> bool:
        return False


# -- the gRPC side -------------------------------------------------------------------------------

class _Dialer:
    """Keeps one stream open to a peer with a smaller node ID."""

    def __init__(self, network: PeerNetwork, peer: str) -> None:
        self._net = network
        self.peer = peer
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None
        self._link: _Link | None = None
        self.thread = threading.Thread(target=self._run, name=f"raft-dial-{peer[:12]}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            call, link = self._call, self._link
        if link is not None:
            link.close("stopping")
        if call is not None:
            call.cancel()

    def _run(self) -> None:
        backoff = MIN_BACKOFF
        failures = 0
        while not self._stop.is_set():
            try:
                connected, reason = self._session()
            except Exception as e:  # noqa: BLE001 - keep dialling whatever happened
                if failures == 0:
                    log.exception("raft: dialling %s failed", self.peer)
                connected, reason = False, f"{type(e).__name__}: {e}"
            if self._stop.is_set():
                break
            if connected:
                log.info("raft: stream to %s closed: %s", self.peer, reason)
                backoff, failures = MIN_BACKOFF, 0
            else:
                failures += 1
                level = logging.INFO if failures == 1 else logging.DEBUG
                log.log(level, "raft: cannot reach %s: %s (retrying)", self.peer, reason)
                backoff = min(backoff * 2, MAX_BACKOFF) if failures > 1 else MIN_BACKOFF
            self._stop.wait(backoff)

    def _session(self) -> tuple[bool, str]:
        """One stream; (whether it was accepted, why it ended)."""
        try:
            addr = self._net._address_of(self.peer)
        except Exception as e:  # noqa: BLE001 - the caller's lookup, whatever it raises
            return False, f"no address: {e}"
        if not addr:
            return False, "its address is not known yet"
        try:
            credentials = self._net._channel_credentials()
        except Exception as e:  # noqa: BLE001
            return False, f"no TLS credentials: {e}"
        channel = open_channel(addr, credentials, self.peer, _CHANNEL_OPTIONS)
        link = _Link(self.peer, self._net._link_closed)
        connected = False
        try:
            call = pb_grpc.RaftStub(channel).Stream(link.frames(accepted_mark=False))
            with self._lock:
                self._call, self._link = call, link
            if self._stop.is_set():
                return False, "stopping"
            timer = threading.Timer(ACK_TIMEOUT, call.cancel)
            timer.daemon = True
            timer.start()
            try:
                next(call)  # the accepted mark
            finally:
                timer.cancel()
            link.last_recv = time.monotonic()
            if not self._net._register(link):
                return False, "stopping"
            connected = True
            log.info("raft: connected to %s at %s", self.peer, addr)
            for frame in call:
                if link.closed:
                    break
                self._net._receive(link, frame.payload)
            return True, "the peer ended it"
        except StopIteration:
            return connected, "the peer ended it"
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            name = code.name if code is not None else "UNKNOWN"
            return connected, f"{name}: {details}"
        finally:
            link.close("stream ended")
            with self._lock:
                self._call = self._link = None
            channel.close()


class _RaftServicer(pb_grpc.RaftServicer):
    def __init__(self, network: PeerNetwork) -> None:
        self._net = network

    async def Stream(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.RaftFrame]:  # noqa: N802
        async for frame in self._net._accept(request_iterator, context):
            yield frame


def _caller_id(context: Any) -> tuple[str | None, str | None]:
    """(node ID, role) from the caller's verified certificate."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    if pems:
        try:
            identity = pki.identity_from_cert(pems[0])
        except ValueError:
            return None, None
        return identity.node_id, identity.role
    names = auth.get("x509_common_name") or []
    if names:
        return names[0].decode("utf-8", "replace"), None
    return None, None


class PeerNetwork:
    """The manager's Raft links: dials peers, accepts their streams, feeds pysyncobj.

    Lives as long as the manager's remote API; a ``RaftStore`` attaches to it when it starts and
    detaches when it stops. Without an attached store, incoming streams are refused
    (UNAVAILABLE) and nothing is dialled.
    """

    def __init__(self, self_id: str,
                 address_of: Callable[[str], str | None],
                 channel_credentials: Callable[[], grpc.ChannelCredentials]) -> None:
        self.self_id = self_id
        self._address_of = address_of
        self._channel_credentials = channel_credentials
        self._lock = threading.Lock()
        self._sink: _RaftTransport | None = None
        self._members: set[str] = set()
        self._links: dict[str, _Link] = {}
        self._dialers: dict[str, _Dialer] = {}
        self._closed = False

    # -- public ------------------------------------------------------------------------------------
    def servicer(self) -> pb_grpc.RaftServicer:
        """Register with ``add_RaftServicer_to_server`` on the remote API server."""
        return _RaftServicer(self)

    def is_connected(self, node_id: str) -> bool:
        """Whether a live stream to ``node_id`` is reported connected to pysyncobj."""
        sink = self._sink
        return sink is not None and node_id in sink.connected_ids

    def close(self) -> None:
        """Refuse new streams, close every stream, stop the dialers (bounded)."""
        with self._lock:
            self._closed = True
        self._shutdown()

    # -- RaftStore side (tick thread) -------------------------------------------------------------
    def _attach(self, sink: _RaftTransport, members: list[str]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the raft network is closed")
            if self._sink is not None:
                raise RuntimeError("a raft store is already attached to this network")
            self._sink = sink
        for peer in members:
            self._set_member(peer, True)

    def _detach(self, sink: _RaftTransport) -> None:
        with self._lock:
            if self._sink is not sink:
                return
            self._sink = None
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            dialers = list(self._dialers.values())
            self._dialers.clear()
            self._members.clear()
            links = list(self._links.values())
        for dialer in dialers:
            dialer.stop()
        for link in links:
            link.close("stopping")
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in [d.thread for d in dialers]:
            if thread is not threading.current_thread() and thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    log.warning("raft: thread %s did not stop within %.0fs", thread.name, JOIN_TIMEOUT)

    def _set_member(self, peer: str, member: bool) -> None:
        if peer == self.self_id:
            return
        stop: _Dialer | None = None
        link: _Link | None = None
        with self._lock:
            if self._closed or self._sink is None:
                return
            if member:
                self._members.add(peer)
                if self.self_id > peer and peer not in self._dialers:
                    dialer = _Dialer(self, peer)
                    self._dialers[peer] = dialer
                    dialer.start()
            else:
                self._members.discard(peer)
                stop = self._dialers.pop(peer, None)
                link = self._links.get(peer)
        if stop is not None:
            stop.stop()  # its thread ends on its own; not joined on the tick thread
        if link is not None:
            link.close("removed from the raft cluster")

    # -- gRPC side ---------------------------------------------------------------------------------
    def _register(self, link: _Link) -> bool:
        """Make ``link`` the peer's live stream and report it connected."""
        with self._lock:
            sink = self._sink
            if self._closed or sink is None or link.closed or link.peer not in self._members:
                return False
            previous = self._links.get(link.peer)
            self._links[link.peer] = link
            sink.post(_CONNECTED, link)
        if previous is not None and previous is not link:
            previous.close("replaced by a new stream")
        return True

    def _link_closed(self, link: _Link, reason: str) -> None:
        with self._lock:
            if self._links.get(link.peer) is not link:
                return
            del self._links[link.peer]
            sink = self._sink
        log.debug("raft: stream with %s closed: %s", link.peer, reason)
        if sink is not None:
            sink.post(_DISCONNECTED, link)

    def _receive(self, link: _Link, payload: bytes) -> None:
        link.last_recv = time.monotonic()
        if not payload:
            return  # accepted mark or heartbeat
        try:
            messages = decode(payload)
        except CodecError as e:
            link.bad_frames += 1
            link.bad_in_a_row += 1
            if link.bad_frames <= 10 or link.bad_frames % 1000 == 0:
                log.warning("raft: dropped a bad frame from %s (%d so far): %s", link.peer, link.bad_frames, e)
            if link.bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW:
                log.warning("raft: closing the stream with %s: %d bad frames in a row", link.peer, link.bad_in_a_row)
                link.close("too many bad frames")
            return
        link.bad_in_a_row = 0
        sink = self._sink
        if sink is not None:
            sink.post_messages(link, messages)

    async def _accept(self, request_iterator: Any, context: Any) -> AsyncIterator[pb.RaftFrame]:
        """A peer's stream, on the remote API's loop: a reader task hands its frames to the
        store, and the link's queue feeds the writer."""
        peer, role = _caller_id(context)
        if not peer:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "raft: no verified peer certificate")
        assert peer is not None
        if role is not None and role != pki.MANAGER_ROLE:
            log.warning("raft: refused a stream from %s (role %s)", peer, role)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"raft: {role} certificates may not join raft")
        # A manager that is joining starts its store right after the leader added it: give the
        # store a moment instead of sending the leader into its reconnect backoff.
        deadline = time.monotonic() + ATTACH_WAIT
        while True:
            with self._lock:
                attached = self._sink is not None and not self._closed
                member = peer in self._members
            if attached or time.monotonic() >= deadline or context.done():
                break
            await asyncio.sleep(0.005)
        if not attached:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "raft: the store of this manager is not running")
        if not member:
            log.info("raft: refused a stream from %s: not a raft member", peer)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"raft: {peer} is not a member of the raft cluster")
        if peer <= self.self_id:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"raft: {self.self_id} dials {peer}, not the other way round")
        link = _Link(peer, self._link_closed)
        if not self._register(link):
            link.close("not registered")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "raft: this manager is stopping or changed membership")
        reader = asyncio.get_running_loop().create_task(self._read(link, request_iterator))
        log.info("raft: accepted a stream from %s", peer)
        reason = "stream ended"
        try:
            async for frame in link.async_frames():
                yield frame
        except asyncio.CancelledError:
            reason = "the peer went away"
            raise
        finally:
            reader.cancel()
            link.close(reason)

    async def _read(self, link: _Link, request_iterator: Any) -> None:
        reason = "the peer ended it"
        try:
            async for frame in request_iterator:
                if link.closed:
                    break
                self._receive(link, frame.payload)
        except asyncio.CancelledError:
            reason = "stream ended"
        except grpc.RpcError as e:
            reason = f"rpc error: {e}"
        except Exception as e:  # noqa: BLE001 - gRPC raises plain exceptions on cancellation
            reason = f"{type(e).__name__}: {e}"
        finally:
            link.close(reason)


def transport_class(network: PeerNetwork) -> Callable[[Any, Any, Any], Transport]:
    """The ``transportClass`` that makes a SyncObj talk through ``network``."""

    def build(syncObj: Any, selfNode: Any, otherNodes: Any) -> Transport:  # noqa: N803
        return _RaftTransport(network, syncObj, selfNode, otherNodes)

    return build


__all__ = ["PeerNetwork", "LoneTransport", "transport_class", "encode", "decode", "CodecError",
           "MAX_FRAME"]
