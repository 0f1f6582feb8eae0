"""This host's side of the swarm: its lifecycle (inactive -> worker | manager, join, leave, role
changes), its identity and keys, its local state, certificate renewal and autolock.

``runtime.NodeRuntime`` owns all of it; the other modules each do one job for it."""
