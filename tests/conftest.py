from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon
from tests.tasklib import stop_all


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory of started swarmd processes; all are stopped (by PID) when the test ends, and
    the tasks they ran are removed (tasks outlive their daemon by design)."""
    started: list[Daemon] = []

    def make(name: str = "node", start: bool = True, **kwargs: object) -> Daemon:
        d = Daemon(tmp_path, name, **kwargs)  # type: ignore[arg-type]
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    stop_all(started)


@pytest.fixture
def daemon(daemons: Callable[..., Daemon]) -> Daemon:
    return daemons()


@pytest.fixture
def manager(daemon: Daemon) -> Daemon:
    daemon.init()
    return daemon
