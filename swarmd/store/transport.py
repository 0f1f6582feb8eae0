"""The pysyncobj transport of a manager.

pysyncobj's own TCP transport listens on a port of its own and unpickles whatever arrives; it is
never used. Raft messages between managers travel as a gRPC stream on the remote API (2377),
under the managers' mutual TLS (DESIGN §5). A one-member cluster has no peer to reach, so the
transport has nothing to send; peer streams plug in here with multi-manager swarms.
"""

from __future__ import annotations

from typing import Any

from pysyncobj.transport import Transport


class ClusterTransport(Transport):  # type: ignore[misc]
    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803
        super().__init__(syncObj, selfNode, otherNodes)
        self._peers: set[Any] = set(otherNodes)

    def addNode(self, node: Any) -> None:  # noqa: N802 - pysyncobj's interface
        self._peers.add(node)

    def dropNode(self, node: Any) -> None:  # noqa: N802
        self._peers.discard(node)

    def send(self, node: Any, message: Any) -> bool:
        # No stream to any peer exists in a single-manager swarm.
        return False

    def destroy(self) -> None:
        self._peers.clear()
