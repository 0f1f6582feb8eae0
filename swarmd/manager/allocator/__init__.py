"""Allocation for the manager: overlay subnets, gateways and VXLAN IDs (DESIGN §7, §8).

``ipam`` holds the pure first-fit rules.
"""
