"""The orchestrators' decisions, pure (DESIGN §10): given a service, its tasks and the nodes,
which tasks to create, stop, replace or delete.

``replicated`` and ``global_`` reconcile a service with its mode; ``restart`` applies the
restart policy and times replacements' starts; ``reaper`` trims task history. Each returns a
``tasks.Plan`` whose ``ops`` the leader's components propose; none of them reads the store,
a clock or the network.
"""
