"""swarmctl: Docker's swarm commands as a thin gRPC client of swarmd (entry point: ``main``)."""

PROG = "swarmctl"
