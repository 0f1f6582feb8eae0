"""Keeps a manager's key file sealed the way the cluster's autolock setting says.

The unlock key lives in the replicated store, so every manager learns of ``update --autolock``
and ``unlock-key --rotate`` through its store; it then re-seals its own key file (node key and
Raft data key) under the new key, or stores it plain when autolock was turned off.

Turning autolock on also replaces the Raft data key, as Docker does: the old one was stored in
clear, so a copy of the disk taken before must not open the files written after. The new key is
recorded beside the old one first, then the journal and snapshot are rewritten under it, then it
becomes the data key; a crash at any step leaves keys that open every file, and the rotation is
finished at the next start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from swarmd.ca import keyfile
from swarmd.node.identity import NodeIdentity

log = logging.getLogger(__name__)


class KeySealer:
    def __init__(self, identity: NodeIdentity, wanted: Callable[[], str | None],
                 rekey: Callable[[bytes], None]) -> None:
        """``wanted`` reads the cluster's unlock key from the store (None: no store now);
        ``rekey`` seals this manager's Raft files under a new data key."""
        self._identity = identity
        self._wanted = wanted
        self._rekey = rekey
        self._lock = threading.Lock()
        self._sealed_with: str | None = None

    def assume(self, unlock_key: str | None) -> None:
        """The key file was just written under ``unlock_key`` (init, demotion)."""
        self._sealed_with = unlock_key or None

    def observe(self) -> None:
        """A store listener (on the Raft thread): cheap unless the unlock key changed."""
        wanted = self._wanted()
        if wanted is None or (wanted or None) == self._sealed_with:
            return
        self._sealed_with = wanted or None
        threading.Thread(target=self._reseal, name="reseal-key", daemon=True).start()

    def _reseal(self) -> None:
        with self._lock:
            wanted = self._wanted()
            if wanted is None:
                return
            try:
                kek = keyfile.parse_unlock_key(wanted) if wanted else None
                if kek is not None and self._identity.kek is None:
                    self._rotate_data_key(kek)
                    log.info("node key sealed under the unlock key")
                elif self._identity.set_kek(kek):
                    log.info("node key %s", "sealed under the unlock key" if kek else "stored without autolock")
            except Exception as e:  # noqa: BLE001 - retried on the next change
                log.error("could not reseal the node key: %s", type(e).__name__)
                self._sealed_with = "?"

    def _rotate_data_key(self, kek: bytes | None) -> None:
        self._rekey(self._identity.begin_data_key_rotation(kek))
        self._identity.finish_data_key_rotation()

    def finish_interrupted_rotation(self) -> None:
        """At start: a data-key rotation a crash interrupted is completed."""
        with self._lock:
            pending = self._identity.pending_data_key
            if pending is not None:
                self._rekey(pending)
                self._identity.finish_data_key_rotation()
                log.info("finished the data key rotation a restart interrupted")
