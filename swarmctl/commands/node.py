"""Docker's ``docker node`` commands (cli/command/node): ls, inspect, promote, demote, rm, update."""

from __future__ import annotations

import time
from typing import Any

import click

from swarmctl import render, render_service
from swarmctl.commands.common import DockerGroup, client, fetch_each, format_option, object_ref, out
from swarmctl.errors import CLIError
from swarmctl.wire import pb, spb


@click.group(cls=DockerGroup, short_help="Manage Swarm nodes")
def node() -> None:
    """Manage Swarm nodes."""


@node.command("ls", short_help="List nodes in the swarm")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@format_option
@click.pass_context
def node_ls(ctx: click.Context, quiet: bool, fmt: str) -> None:
    """List nodes in the swarm; '*' marks the node you are talking to."""
    resp = client(ctx).call("ListNodes", pb.ListNodesRequest())
    if quiet:
        out(render.node_ids(resp.nodes))
    elif fmt == "json":
        out(render.node_lines_json(resp.nodes, resp.self_id))
    else:
        out(render.node_table(resp.nodes, resp.self_id))


@node.command("inspect", short_help="Display detailed information on one or more nodes",
              usage="[OPTIONS] self|NODE [NODE...]", nargs="min1")
@click.option("--pretty", is_flag=True, help="Print the information in a human friendly format")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def node_inspect(ctx: click.Context, pretty: bool, refs: tuple[str, ...]) -> None:
    """Display detailed information on one or more nodes (ID, name, or "self")."""
    nodes, failures = fetch_each(refs, lambda ref: client(ctx).call(
        "GetNode", pb.GetNodeRequest(ref=object_ref("node", ref))).node)
    if pretty:
        out("\n\n".join(render.node_pretty(n).rstrip("\n") for n in nodes) + ("\n" if nodes else ""))
    else:
        out(render.json_array([render.node_json(n) for n in nodes]))
    if failures:
        raise CLIError("\n".join(failures))


def _each_node(ctx: click.Context, refs: tuple[str, ...], act: Any) -> None:
    """Run ``act`` per node, print its line; one error line per failed node, exit 1 if any."""
    failures = []
    for ref in refs:
        try:
            out(act(ref))
        except CLIError as e:
            failures.append(e.message)
    if failures:
        raise CLIError("\n".join(failures))


def _change_role(ctx: click.Context, ref: str, role: str) -> str:
    current = client(ctx).call("GetNode", pb.GetNodeRequest(ref=object_ref("node", ref))).node
    if current.role == role:  # Docker names the node by its ID here, and as typed below
        return f"Node {current.id} is already a {role}.\n"
    client(ctx).call("UpdateNode", pb.UpdateNodeRequest(ref=current.id, role=role))
    return (f"Node {ref} promoted to a manager in the swarm.\n" if role == "manager"
            else f"Manager {ref} demoted in the swarm.\n")


@node.command("promote", short_help="Promote one or more nodes to manager in the swarm",
              usage="NODE [NODE...]", nargs="min1")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def node_promote(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Promote nodes to managers (they join the Raft cluster)."""
    _each_node(ctx, refs, lambda ref: _change_role(ctx, ref, "manager"))


@node.command("demote", short_help="Demote one or more nodes from manager in the swarm",
              usage="NODE [NODE...]", nargs="min1")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def node_demote(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Demote managers to workers (they leave the Raft cluster)."""
    _each_node(ctx, refs, lambda ref: _change_role(ctx, ref, "worker"))


@node.command("rm", short_help="Remove one or more nodes from the swarm", usage="[OPTIONS] NODE [NODE...]",
              nargs="min1")
@click.option("-f", "--force", is_flag=True, help="Force remove a node from the swarm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def node_rm(ctx: click.Context, force: bool, refs: tuple[str, ...]) -> None:
    """Remove nodes: a node must be Down (or use --force) and must not be a manager. Each
    removed node is echoed as it was named, as Docker does."""
    def remove(ref: str) -> str:
        client(ctx).call("RemoveNode", pb.RemoveNodeRequest(ref=object_ref("node", ref), force=force))
        return ref + "\n"
    _each_node(ctx, refs, remove)


@node.command("update", short_help="Update a node", usage="[OPTIONS] NODE", nargs="one")
@click.option("--availability", default=None, metavar="string",
              help='Availability of the node ("active", "pause", "drain")')
@click.option("--label-add", multiple=True, metavar="list", help="Add or update a node label (key=value)")
@click.option("--label-rm", multiple=True, metavar="list", help="Remove a node label if exists")
@click.argument("ref")
@click.pass_context
def node_update(ctx: click.Context, availability: str | None, label_add: tuple[str, ...], label_rm: tuple[str, ...],
                ref: str) -> None:
    """Update a node's availability or labels.

    As Docker does, the node is read first, its labels get the additions, then each removal
    must name a label it has by then (checked here, so the error is Docker's client-side
    text): a key both added and removed ends up absent. The availability is the daemon's to
    check, except an empty one, which the request cannot carry (empty means unchanged).
    """
    current = client(ctx).call("GetNode", pb.GetNodeRequest(ref=object_ref("node", ref))).node
    labels = dict(current.labels)
    labels.update(item.partition("=")[::2] for item in label_add)
    for key in label_rm:
        if key not in labels:
            raise CLIError(f"key {key} doesn't exist in node's labels")
        del labels[key]
    if availability == "":
        raise CLIError('Error response from daemon: invalid Availability: ""')
    # The daemon removes before it adds: send only what makes Docker's result.
    adds = [item for item in label_add if item.partition("=")[0] not in label_rm]
    removals = [key for key in label_rm if key in current.labels]
    client(ctx).call("UpdateNode", pb.UpdateNodeRequest(ref=current.id, availability=availability or "",
                                                       label_add=adds, label_rm=removals))
    out(ref + "\n")


@node.command("ps", short_help="List tasks running on one or more nodes, defaults to current node",
              usage="[OPTIONS] [NODE...]")
@click.option("-f", "--filter", "filters", multiple=True, metavar="filter",
              help="Filter output based on conditions provided (desired-state=, id=, name=)")
@format_option
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.option("-q", "--quiet", is_flag=True, help="Only display task IDs")
@click.argument("refs", nargs=-1)
@click.pass_context
def node_ps(ctx: click.Context, filters: tuple[str, ...], fmt: str, no_trunc: bool, quiet: bool,
            refs: tuple[str, ...]) -> None:
    """List the tasks on nodes ("self" by default), each task once (Docker 20.10 lists a
    node's tasks twice when several nodes are named)."""
    ids, failures = [], []
    for ref in refs or ("self",):
        try:
            ids.append(client(ctx).call("GetNode", pb.GetNodeRequest(ref=object_ref("node", ref))).node.id)
        except CLIError as e:
            failures.append(f"Error: No such node: {ref}" if e.code == "NOT_FOUND" else e.message)
    tasks = []
    if ids:
        tasks = list(client(ctx).call("ListTasks", spb.ListTasksRequest(nodes=ids, filters=list(filters))).tasks)
    if not failures or tasks:
        now = time.time_ns()
        if quiet:
            out(render_service.task_ids(tasks, trunc=not no_trunc))
        elif fmt == "json":
            out(render_service.task_lines_json(tasks, now, not no_trunc))
        else:
            out(render_service.task_table(tasks, now, not no_trunc))
    if failures:
        raise CLIError("\n".join(failures))


COMMANDS: tuple[click.Command, ...] = (node,)
