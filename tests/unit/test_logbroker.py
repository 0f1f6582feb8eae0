"""The leader's log broker on its own: who is asked, what a node may publish, when a stream
ends, and the bounds (a full subscription makes its publisher wait; a reader that stays behind
is cut)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.manager import logbroker
from swarmd.manager.logbroker import INCOMPLETE, Listener, LogBroker, Subscription


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def received(loop: asyncio.AbstractEventLoop, listener: Listener) -> spb.LogSubscription | None:
    async def get() -> spb.LogSubscription | None:
        return await asyncio.wait_for(listener.queue.get(), 5)
    return asyncio.run_coroutine_threadsafe(get(), loop).result(10)


def task(task_id: str, node_id: str, slot: int = 1) -> spb.LogTask:
    return spb.LogTask(task_id=task_id, service_name="web", slot=slot, node_id=node_id, node_hostname=node_id)


def line(task_id: str, data: bytes = b"x") -> spb.LogMessage:
    return spb.LogMessage(task_id=task_id, timestamp="t", stream="stdout", data=data)


def drain(broker: LogBroker, sub: Subscription) -> list[spb.ServiceLogsMessage]:
    out: list[spb.ServiceLogsMessage] = []
    while (items := broker.take(sub, 5)) is not None:
        out += items
    return out


def subscribe(broker: LogBroker, *tasks: spb.LogTask, follow: bool = False) -> Subscription:
    return broker.subscribe(list(tasks), follow, -1, 0, spb.ServiceLogsMessage(tasks=list(tasks), slot_width=1))


def test_each_node_is_asked_for_its_own_tasks_and_the_stream_ends_when_all_are_done(
        loop: asyncio.AbstractEventLoop) -> None:
    broker = LogBroker()
    a, b = Listener("a", loop), Listener("b", loop)
    broker.listen(a)
    broker.listen(b)
    sub = subscribe(broker, task("t1", "a"), task("t2", "b", 2), task("t3", "a", 3))
    asked_a, asked_b = received(loop, a), received(loop, b)
    assert asked_a is not None and asked_b is not None
    assert (asked_a.id, list(asked_a.task_ids), list(asked_b.task_ids)) == (sub.id, ["t1", "t3"], ["t2"])
    assert broker.publish_check("a", sub.id) is sub
    with pytest.raises(Exception):
        broker.publish_check("c", sub.id)  # not asked: refused
    assert broker.offer(sub, "a", [line("t1", b"one"), line("t2", b"not a's task")]) is True
    broker.done(sub, "a")
    assert broker.offer(sub, "b", [line("t2", b"two")]) is True
    broker.done(sub, "b")
    got = drain(broker, sub)
    assert [m.data for item in got for m in item.messages] == [b"one", b"two"]
    assert got[0].slot_width == 1 and len(got[0].tasks) == 3
    assert broker.finish(sub) is None
    assert received(loop, a) == spb.LogSubscription(id=sub.id, close=True)
    assert broker.open_subscriptions() == 0


def test_a_node_without_a_listener_is_dockers_incomplete_warning(loop: asyncio.AbstractEventLoop) -> None:
    broker = LogBroker()
    a = Listener("a", loop)
    broker.listen(a)
    sub = subscribe(broker, task("t1", "a"), task("t2", "gone"))
    broker.done(sub, "a")
    drain(broker, sub)
    assert broker.finish(sub) == INCOMPLETE + "node gone is not available"


def test_a_listener_that_goes_away_mid_stream_ends_its_part(loop: asyncio.AbstractEventLoop) -> None:
    broker = LogBroker()
    a = Listener("a", loop)
    broker.listen(a)
    sub = subscribe(broker, task("t1", "a"))
    broker.unlisten(a)
    drain(broker, sub)
    assert broker.finish(sub) == INCOMPLETE + "node a is not available"


def test_a_full_subscription_holds_its_publisher_and_a_stalled_reader_is_cut(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = LogBroker()
    broker.listen(Listener("a", loop))
    sub = subscribe(broker, task("t1", "a"), follow=True)
    big = [line("t1", b"y" * 1024) for _ in range(1024)]
    queued = 0
    while broker.offer(sub, "a", big) is True:
        queued += 1
    assert queued * 1024 * 1024 <= logbroker.MAX_QUEUED_BYTES
    assert broker.offer(sub, "a", big) is False  # the publisher waits; nothing was dropped
    assert broker.take(sub, 1) is not None  # the reader takes it all: room again
    assert broker.offer(sub, "a", big) is True
    while broker.offer(sub, "a", big) is True:
        pass
    monkeypatch.setattr(logbroker, "STALL_SECONDS", 0.0)
    assert broker.offer(sub, "a", big) is None  # the reader stayed behind: cut
    assert broker.take(sub, 1) is not None and broker.take(sub, 1) is None
    assert broker.finish(sub) == "the log stream was cut: its reader fell behind"


def test_follow_adds_new_tasks_once_and_a_late_node_is_asked_when_it_listens(
        loop: asyncio.AbstractEventLoop) -> None:
    broker = LogBroker()
    a = Listener("a", loop)
    broker.listen(a)
    sub = subscribe(broker, task("t1", "a"), follow=True)
    assert received(loop, a) is not None
    broker.extend(sub, [task("t1", "a"), task("t2", "a", 2), task("t3", "b", 3)])
    again = received(loop, a)
    assert again is not None and list(again.task_ids) == ["t2"]
    b = Listener("b", loop)
    broker.listen(b)
    late = received(loop, b)
    assert late is not None and list(late.task_ids) == ["t3"]
    items = broker.take(sub, 1)
    assert items is not None and [t.task_id for item in items for t in item.tasks] == ["t1", "t2", "t3"]
    broker.reader_gone(sub)
    assert broker.take(sub, 1) is None


def test_the_number_of_open_streams_is_capped(loop: asyncio.AbstractEventLoop) -> None:
    broker = LogBroker()
    subs = [subscribe(broker, task("t", "a")) for _ in range(logbroker.MAX_SUBSCRIPTIONS)]
    with pytest.raises(Exception, match="too many log streams"):
        subscribe(broker, task("t", "a"))
    broker.finish(subs[0])
    subscribe(broker, task("t", "a"))
