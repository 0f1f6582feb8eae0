"""Allocation on the leader: overlay subnets, gateways and VXLAN IDs (DESIGN §7, §8).

``ipam`` holds the pure first-fit rules; ``networks`` chooses a new network's values from the
state before the op is proposed, so the op carries them and the store only checks them.
"""
