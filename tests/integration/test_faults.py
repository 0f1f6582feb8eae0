"""Fault injection with real daemons: three managers, a writer and a reader through each of them,
while the leader is killed with SIGKILL and later frozen with SIGSTOP.

What must hold throughout (``tests.faultlib``): no acknowledged write is lost, no read misses a
write acknowledged before the read began, every failed call ends with a text the CLI reference
documents (never a raw transport error such as "Channel closed!"), no write is applied twice
(each name is created once, so "already exists" would mean a retried write was applied again),
and in the end every manager holds the same networks.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from tests.faultlib import leader, load, progress
from tests.harness import Daemon, join

Factory = Callable[..., Daemon]


def test_writes_and_reads_through_every_manager_survive_leader_kills_and_freezes(daemons: Factory) -> None:
    managers = [daemons(f"m{i}") for i in (1, 2, 3)]
    managers[0].init()
    for m in managers[1:]:
        join(m, managers[0], "manager")
    with load(managers) as ledger:
        progress(ledger, 5, 30, "writes before any fault")
        # 1. kill -9 the leader; the others elect a new one and go on; it comes back and catches up.
        first = leader(managers)
        first.kill9()
        progress(ledger, len(ledger.acked) + 3, 30, "writes after the leader was killed")
        first.start()
        # 2. freeze the (new) leader for longer than an election takes, then let it go.
        second = leader(managers)
        assert second.proc is not None
        second.proc.send_signal(signal.SIGSTOP)
        try:
            progress(ledger, len(ledger.acked) + 3, 30, "writes while the leader is frozen")
        finally:
            second.proc.send_signal(signal.SIGCONT)
        progress(ledger, len(ledger.acked) + 3, 30, "writes after the frozen leader woke up")
