"""Nodes' task reports reach the store many at once, the latest per task, never moving a state
back, and each caller learns when its reports are written; against a real single-member store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmd.manager.dispatcher.taskstatus import TaskStatusWriter, Ticket
from swarmd.manager.manager import Manager
from tests.servicelib import raw_spec
from tests.unit.test_session_view import CLUSTER, LEADER, worker

NODES, PER_NODE = 20, 10


def task_id(node: int, k: int) -> str:
    return f"t{node:03d}x{k:03d}"


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(LEADER["id"], tmp_path / "raft", data_key=bytes(range(32)))
    m.start()
    try:
        m.propose("bootstrap", cluster=CLUSTER, node=LEADER)
        m.propose("create_service", id="svc", spec=raw_spec("web", replicas=NODES * PER_NODE), now="t")
        for n in range(NODES):
            m.propose("add_node", node=worker(n))
            ids = [task_id(n, k) for k in range(PER_NODE)]
            m.propose("create_tasks", now="t", tasks=[{"id": i, "service_id": "svc", "slot": n * PER_NODE + k + 1}
                                                      for k, i in enumerate(ids)])
            m.propose("update_tasks", now="t", updates=[{"id": i, "node_id": worker(n)["id"],
                                                         "status": {"state": "assigned"}} for i in ids])
        yield m
    finally:
        m.stop()


def status(m: Manager, tid: str) -> dict[str, Any]:
    return m.machine.read(lambda state: dict(state["tasks"][tid]["status"]))


def report(state: str, message: str = "") -> dict[str, Any]:
    return {"state": state, "timestamp": "", "message": message, "err": "", "exit_code": 0, "pid": 0,
            "container_id": ""}


def test_many_reports_are_one_write_and_callers_learn_when_they_are_written(manager: Manager) -> None:
    async def run() -> None:
        writer = TaskStatusWriter(lambda: manager)
        loop = asyncio.get_running_loop()
        tickets = []
        for n in range(NODES):
            ids = [task_id(n, k) for k in range(PER_NODE)]
            # Several reports of one task before the writer runs: the latest is written; an
            # earlier state queued after a later one does not move it back.
            first = Ticket(loop, PER_NODE)
            assert writer.queue(worker(n)["id"], {i: report("starting", "starting") for i in ids}, first)
            second = Ticket(loop, PER_NODE)
            assert writer.queue(worker(n)["id"], {i: report("running", "started") for i in ids}, second)
            late = Ticket(loop, PER_NODE)
            assert writer.queue(worker(n)["id"], {i: report("preparing", "preparing") for i in ids}, late)
            tickets += [first, second, late]
        before = manager.store.status()["commit_idx"]
        writer.start()
        try:
            await asyncio.wait_for(asyncio.gather(*(t.future for t in tickets)), 20)
        finally:
            writer.close()
        # 200 tasks of 20 nodes: 20 ops in one propose_many, a few entries, not 200 (or 600).
        assert manager.store.status()["commit_idx"] - before <= 3
        assert {(s["state"], s["message"]) for s in (status(manager, task_id(n, k))
                                                    for n in range(NODES) for k in range(PER_NODE))} == {
            ("running", "started")}
    asyncio.run(run())


def test_a_new_term_drops_what_was_queued_and_its_callers_hear_of_it(manager: Manager) -> None:
    async def run() -> None:
        writer = TaskStatusWriter(lambda: manager)  # not started: nothing is written
        ticket = Ticket(asyncio.get_running_loop(), 1)
        assert writer.queue(worker(0)["id"], {task_id(0, 0): report("running")}, ticket)
        writer.clear()
        with pytest.raises(RuntimeError, match="leadership changed"):
            await asyncio.wait_for(ticket.future, 5)
        assert status(manager, task_id(0, 0))["state"] == "assigned"
    asyncio.run(run())
