"""Node sessions, heartbeats and liveness, served by the leader (DESIGN §6, §11).

- ``service``: the Dispatcher servicer (coroutines on the remote API's loop) and liveness;
- ``view``: what the leader tells sessions, kept up to date from the store's events;
- ``status``: what nodes report, written to the store coalesced and budgeted.
"""

from swarmd.manager.dispatcher.service import GRACE_MULTIPLIER, Dispatcher, Liveness
from swarmd.manager.dispatcher.status import STATUS_WRITES

__all__ = ["Dispatcher", "Liveness", "GRACE_MULTIPLIER", "STATUS_WRITES"]
