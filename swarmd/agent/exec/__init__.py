"""Executors: what runs a node's tasks. ``api`` is the interface the agent uses, ``process`` the
embedded implementation (programs as supervised host processes, see docs/services.md)."""
