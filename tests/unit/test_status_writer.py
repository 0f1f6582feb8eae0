"""Nodes' status changes reach the store many at once, each change once, within each node's
budget; against a real single-member store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarmd.manager.dispatcher.status import STATUS_WRITES, StatusWriter
from swarmd.manager.manager import Manager
from tests.harness import wait_for
from tests.unit.test_session_view import CLUSTER, LEADER, worker

NODES = 300


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(LEADER["id"], tmp_path / "raft", data_key=bytes(range(32)))
    m.start()
    try:
        assert m.propose("bootstrap", cluster=CLUSTER, node=LEADER)["ok"]
        for i in range(NODES):
            assert m.propose("add_node", node=worker(i))["ok"]
        yield m
    finally:
        m.stop()


def states(m: Manager) -> dict[str, Any]:
    return m.machine.read(lambda state: {i: n.get("state") for i, n in state["nodes"].items()})


def test_changes_queued_together_share_raft_entries(manager: Manager) -> None:
    writer = StatusWriter(lambda: manager)
    for i in range(NODES):
        assert writer.queue(worker(i)["id"], {"state": "ready", "message": ""})
    before = manager.store.status()["commit_idx"]
    writer.start()
    try:
        wait_for(lambda: all(states(manager)[worker(i)["id"]] == "ready" for i in range(NODES)), 20,
                 what="every node Ready")
        # 300 node writes in at most two entries (256 proposals fit in one), not 300.
        assert manager.store.status()["commit_idx"] - before <= 2
    finally:
        writer.close()


def test_a_change_already_queued_is_not_queued_again(manager: Manager) -> None:
    writer = StatusWriter(lambda: manager)
    node = worker(1)["id"]
    assert writer.queue(node, {"state": "ready"})
    assert not writer.queue(node, {"state": "ready"})
    assert writer.queue(node, {"state": "ready", "addr": "10.0.0.9"})  # what is new is queued
    writer.close()


def test_a_nodes_writes_are_budgeted_unless_forced(manager: Manager) -> None:
    writer = StatusWriter(lambda: manager)
    node = worker(2)["id"]
    taken = [writer.queue(node, {"message": f"change {i}"}) for i in range(STATUS_WRITES.burst + 5)]
    assert taken.count(True) <= STATUS_WRITES.burst + 1  # the burst, and at most one more by now
    assert writer.queue(node, {"state": "down", "message": "heartbeat failure"}, budgeted=False)
    writer.close()
