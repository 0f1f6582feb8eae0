"""Root CA rotation as a leader-only component: the steps are ``swarmd.ca.rotation``'s, run here
on the leader against this manager's store (the CA imports nothing of the manager)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from swarmd.ca import rotation
from swarmd.manager.leadership import LeaderLoop

if TYPE_CHECKING:
    from swarmd.manager.manager import Manager


class RootRotationReconciler(LeaderLoop):
    """Leader-only (``LeaderSupervisor``): steps a rotation in progress whenever the store
    changes (nodes report their new certificates), and at least every ``RETRY`` seconds while one
    is in progress (a write that failed)."""

    name = "root rotation"
    RETRY = 1.0

    def __init__(self, manager: Manager) -> None:
        super().__init__()
        self._manager = manager

    def step(self) -> float | None:
        return self.RETRY if rotation.reconcile(self._manager.machine.read, self._manager.propose) else None
