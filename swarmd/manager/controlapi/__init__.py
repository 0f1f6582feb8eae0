"""The Control API: the calls ``swarmctl`` makes, one module per object kind (DESIGN §8).

- ``swarm``: this host's calls, served by the node that was asked (info, version, init, join,
  leave, unlock);
- ``cluster``, ``node``, ``network``, ``service``, ``task``: one object kind each, served by
  the leader: validate, then the store update;
- ``logs``: ``service logs``, a stream from the leader's log broker (``streambridge`` serves it
  as a coroutine on the remote API);
- ``forwarding``: where a call is served (the leader, or forwarded there) and when its answer
  may leave (once what it read is confirmed);
- ``servicer``: the one ``ControlServicer`` gRPC registers.

Each kind is a mixin of ``ControlAPI`` holding that kind's RPC methods, with its logic beside
them as functions of the ``Manager``; ``ControlServicer`` inherits them all. Mixins rather than
delegation: an RPC is written once, under its gRPC name (which ``on_leader`` forwards by), with
no second list of methods that forward to per-kind objects and can drift from the first. Adding
a kind is its module plus one base class in ``servicer``; ``tests/unit/test_layout.py`` fails
while a Control RPC of the proto has no kind serving it.
"""
