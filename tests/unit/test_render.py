"""Rendering: Docker's table layout, durations and sizes, checked against Docker's own goldens."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmctl import natsort, render
from swarmd.api.swarm.v1 import swarm_pb2 as pb
from swarmd.timeutil import format_go_duration, human_duration, parse_go_duration


def node(id_: str, host: str, leader: bool | None, version: str) -> pb.Node:
    n = pb.Node(id=id_, hostname=host, state="ready", availability="active", engine_version=version)
    if leader is not None:
        n.manager_status.CopyFrom(pb.ManagerStatus(leader=leader, reachability="reachable"))
    return n


def test_node_table_matches_dockers_golden() -> None:
    # docker/cli cli/command/node/testdata/node-list-sort.golden
    nodes = [node("nodeID1", "node-2-foo", True, "."), node("nodeID2", "node-10-foo", False, "18.03.0-ce"),
             node("nodeID3", "node-1-foo", None, "1.13.0")]
    assert render.node_table(nodes, "nodeID1") == (
        "ID          HOSTNAME      STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION\n"
        "nodeID3     node-1-foo    Ready     Active                          1.13.0\n"
        "nodeID1 *   node-2-foo    Ready     Active         Leader           .\n"
        "nodeID2     node-10-foo   Ready     Active         Reachable        18.03.0-ce\n")


@pytest.mark.parametrize("text, ns", [("2160h0m0s", 2160 * 3600 * 10**9), ("5s", 5 * 10**9), ("1.5h", 5400 * 10**9),
                                      ("90m", 5400 * 10**9), ("0", 0), ("-5s", -5 * 10**9), ("1h30m", 5400 * 10**9),
                                      ("300ms", 300 * 10**6)])
def test_go_durations(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("bad", ["", "soon", "5", "1x", "h", "1..5s"])
def test_bad_go_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(bad)


def test_duration_strings() -> None:
    assert format_go_duration(2160 * 3600 * 10**9) == "2160h0m0s"
    assert format_go_duration(5 * 10**9) == "5s"
    assert human_duration(5 * 10**9) == "5 seconds"
    assert human_duration(2160 * 3600 * 10**9) == "3 months"
    assert human_duration(3600 * 10**9) == "About an hour"
    assert human_duration(720 * 3600 * 10**9) == "4 weeks"


def test_bytes_size_like_go_units() -> None:
    assert render.bytes_size(25276502016) == "23.54GiB"
    assert render.bytes_size(512) == "512B"


def test_join_command_block_ends_with_a_blank_line() -> None:
    assert render.join_command("worker", "T", "1.2.3.4:2377") == (
        "To add a worker to this swarm, run the following command:\n\n"
        "    swarmctl join --token T 1.2.3.4:2377\n\n")


def network(name: str) -> pb.Network:
    return pb.Network(id=(name.replace("-", "") + "x" * 25)[:25], name=name, driver="overlay")


def test_network_ls_sorts_names_in_dockers_natural_order() -> None:
    # As docker 28.2.2 lists the same names (bytewise between digits, so "Net-3" first).
    names = ["network-2", "ingress", "network-10", "network-1", "Net-3", "net-01", "net-1"]
    networks = [network(n) for n in names]
    assert render.network_table(networks) == (
        "NETWORK ID     NAME         DRIVER    SCOPE\n"
        "Net3xxxxxxxx   Net-3        overlay   swarm\n"
        "ingressxxxxx   ingress      overlay   swarm\n"
        "net1xxxxxxxx   net-1        overlay   swarm\n"
        "net01xxxxxxx   net-01       overlay   swarm\n"
        "network1xxxx   network-1    overlay   swarm\n"
        "network2xxxx   network-2    overlay   swarm\n"
        "network10xxx   network-10   overlay   swarm\n")
    order = ["Net-3", "ingress", "net-1", "net-01", "network-1", "network-2", "network-10"]
    assert render.network_ids(networks) == "".join(network(n).id[:12] + "\n" for n in order)
    assert [json.loads(line)["Name"] for line in render.network_lines_json(networks).splitlines()] == order


@pytest.mark.parametrize("smaller, larger", [
    ("a2", "a10"), ("a1", "a01"), ("1a", "a"), ("a1", "a_"), ("a", "a1"), ("x9y", "x10"), ("", "a"),
    ("node²", "node³"), ("n\u0663", "n\u0664"),  # not ASCII digits: compared as bytes, never int()
])
def test_natural_less_is_sortorders(smaller: str, larger: str) -> None:
    assert natsort.natural_less(smaller, larger) and not natsort.natural_less(larger, smaller)


@given(st.text(), st.text())
def test_natural_order_is_a_strict_order_on_any_names(a: str, b: str) -> None:
    assert not natsort.natural_less(a, a)
    assert not (natsort.natural_less(a, b) and natsort.natural_less(b, a))


def test_node_ls_takes_any_host_name() -> None:
    nodes = [node("id1", "node1²", None, "1"), node("id2", "node1", None, "1"), node("id3", "node1²", None, "1")]
    assert [n.id for n in render.sorted_nodes(nodes)] == ["id2", "id1", "id3"]
