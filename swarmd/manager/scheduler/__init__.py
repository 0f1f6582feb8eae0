"""The scheduler's decisions, pure: constraints, filters, spread, batch placement (DESIGN §10).

No threads and no I/O here: the leader's scheduler component reads the store, calls
``scheduler.schedule`` and proposes the plan's ``update_tasks`` items as one entry.
"""
