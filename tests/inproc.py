"""A real swarmd manager run inside the test process, so a test can write to its store directly.

It is the daemon's own ``Daemon`` class (its control socket, its remote API with mutual TLS, its
Raft store), run on a thread instead of in a process of its own; the only difference is that
the test holds its ``Manager`` and can propose store ops (services and tasks, before the control
API that makes them exists). Other nodes are real ``swarmd`` processes (``harness.Daemon``).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from swarmd.manager.manager import Manager
from swarmd.timeutil import now_rfc3339
from tests.harness import Daemon, wait_for


class InProcessManager(Daemon):
    def __init__(self, root: Path, name: str = "mgr") -> None:
        super().__init__(root, name)
        self.swarmd: Any = None
        self.thread: threading.Thread | None = None
        self.exit_code: int | None = None

    def start(self, wait: bool = True, *args: str) -> InProcessManager:
        from swarmd.daemon import Daemon as SwarmDaemon, parse_args

        ns = parse_args(["--state-dir", str(self.state_dir), "--control-socket", str(self.socket),
                         "--hostname", self.hostname, "--executor", "none", *args])
        self.swarmd = SwarmDaemon(ns)

        def run() -> None:
            self.exit_code = self.swarmd.run()
        self.thread = threading.Thread(target=run, name=f"swarmd-{self.hostname}", daemon=True)
        self.thread.start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            assert self.thread is not None
            if not self.thread.is_alive():
                raise AssertionError(f"the in-process swarmd stopped ({self.exit_code})")
            try:
                self.info()
                return True
            except Exception:  # noqa: BLE001 - not serving yet
                return False
        wait_for(ready, timeout, what="the in-process swarmd to serve its control socket")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        thread, self.thread = self.thread, None
        if thread is None:
            return None
        self.swarmd.on_signal(signal.SIGTERM, None)
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"the in-process swarmd did not stop within {timeout}s")
        return self.exit_code

    @property
    def manager(self) -> Manager:
        manager = self.swarmd.runtime.manager
        assert manager is not None, "not a manager"
        return manager  # type: ignore[no-any-return]

    def propose(self, kind: str, **fields: Any) -> dict[str, Any]:
        fields.setdefault("now", now_rfc3339())
        return self.manager.propose(kind, **fields)

    def task(self, task_id: str) -> dict[str, Any] | None:
        return self.manager.machine.read(lambda state: state["tasks"].get(task_id))  # type: ignore[no-any-return]
