"""The worker side of a node: its session with the leader (``session``) and the executors that run
its tasks (``exec``).

Nothing is re-exported here: importing the executors must not load gRPC and the session with them.
"""
