"""swarmd: Docker swarm mode's cluster layer, in Python."""

__version__ = "0.1.0"
API_VERSION = "1"
