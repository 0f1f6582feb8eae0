"""``swarmctl service`` and ``node ps`` against a real manager: the client's own refusals come
before any call, and the daemon's refusals are one line of error with exit 1 (never a
traceback). The end-to-end tests with running tasks are in ``test_service_e2e.py``."""

from __future__ import annotations

from tests.harness import Daemon

def outcome(d: Daemon, *args: str) -> tuple[int, str, str]:
    r = d.ctl(*args)
    return r.returncode, r.stdout, r.stderr


def test_client_refusals_come_before_any_call(manager: Daemon) -> None:
    assert outcome(manager, "service", "create", "-p", "8080:80", "bb:latest") == (
        1, "", "Error: publishing ports is not supported yet\n")
    assert outcome(manager, "service", "update", "--publish-add", "8080:80", "web") == (
        1, "", "Error: publishing ports is not supported yet\n")
    assert outcome(manager, "service", "create", "-d", "--mode", "global", "--replicas", "2", "bb") == (
        1, "", "replicas can only be used with replicated or replicated-job mode\n")
    assert outcome(manager, "service", "create", "-d", "--mode", "bogus", "bb") == (
        1, "", "Unknown mode: bogus, only replicated and global supported\n")
    assert outcome(manager, "service", "create", "-d", "--limit-memory", "10Q", "bb") == (
        125, "", "invalid argument \"10Q\" for \"--limit-memory\" flag: invalid size: '10Q'\n"
                 "See 'swarmctl service create --help'.\n")
    assert outcome(manager, "service", "scale", "web2") == (1, "", (
        "Invalid scale specifier 'web2'.\nSee 'swarmctl service scale --help'.\n\n"
        "Usage:  swarmctl service scale SERVICE=REPLICAS [SERVICE=REPLICAS...]\n\n"
        "Scale one or multiple replicated services\n"))


def test_node_ps_names_a_missing_node_as_docker_does(manager: Daemon) -> None:
    assert outcome(manager, "node", "ps", "nosuch") == (1, "", "Error: No such node: nosuch\n")
    assert outcome(manager, "node", "ps", "nosuch", "other") == (
        1, "", "Error: No such node: nosuch\nError: No such node: other\n")


def test_without_a_swarm_the_daemons_refusal_is_shown(daemon: Daemon) -> None:
    code, out, err = outcome(daemon, "service", "ls")
    assert (code, out) == (1, "") and err.startswith("Error response from daemon: ") and err.count("\n") == 1
