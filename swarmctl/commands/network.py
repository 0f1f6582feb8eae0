"""Docker's ``docker network`` commands (cli/command/network) for the swarm's network registry:
ls, inspect, create, rm.
"""

from __future__ import annotations

import sys

import click

from swarmctl import ipamflags, params, render
from swarmctl.commands.common import (DockerGroup, client, fetch_each, format_option, object_ref, out,
                                      read_stdin_line)
from swarmctl.errors import CLIError
from swarmctl.wire import pb


@click.group(cls=DockerGroup, short_help="Manage swarm networks")
def network() -> None:
    """Manage the swarm's overlay networks (control-plane registry)."""


@network.command("ls", short_help="List networks")
@click.option("-q", "--quiet", is_flag=True, help="Only display network IDs")
@format_option
@click.pass_context
def network_ls(ctx: click.Context, quiet: bool, fmt: str) -> None:
    """List the swarm's networks."""
    resp = client(ctx).call("ListNetworks", pb.ListNetworksRequest())
    if quiet:
        out(render.network_ids(resp.networks))
    elif fmt == "json":
        out(render.network_lines_json(resp.networks))
    else:
        out(render.network_table(resp.networks))


@network.command("inspect", short_help="Display detailed information on one or more networks",
                 usage="[OPTIONS] NETWORK [NETWORK...]", nargs="min1")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def network_inspect(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Display detailed information on one or more networks (name or ID)."""
    found, failures = fetch_each(refs, lambda ref: client(ctx).call(
        "GetNetwork", pb.GetNetworkRequest(ref=object_ref("network", ref))).network)
    out(render.json_array([render.network_json(n) for n in found]))
    if failures:
        raise CLIError("\n".join(failures))


def _key_values(items: tuple[str, ...]) -> dict[str, str]:
    result = {}
    for item in items:
        key, _, value = item.partition("=")
        result[key] = value
    return result


@network.command("create", short_help="Create a network", usage="[OPTIONS] NETWORK", nargs="one")
@click.option("-d", "--driver", default="overlay", show_default=True, help="Driver to manage the Network")
@click.option("--subnet", type=params.STRING_SLICE, multiple=True, metavar="strings",
              help="Subnet in CIDR format that represents a network segment (default: next free /24 of the pool)")
@click.option("--gateway", type=params.STRING_SLICE, multiple=True, metavar="strings",
              help="IPv4 Gateway for the master subnet")
@click.option("--ingress", is_flag=True, help="Create swarm routing-mesh network")
@click.option("--internal", is_flag=True, help="Restrict external access to the network")
@click.option("--attachable", is_flag=True, help="Enable manual container attachment")
@click.option("--label", type=params.LABEL, multiple=True, metavar="list", help="Set metadata on a network")
@click.option("-o", "--opt", multiple=True, metavar="map", help="Set driver specific options")
@click.argument("name")
@click.pass_context
def network_create(ctx: click.Context, driver: str, subnet: tuple[list[str], ...], gateway: tuple[list[str], ...],
                   ingress: bool, internal: bool, attachable: bool, label: tuple[str, ...],
                   opt: tuple[str, ...], name: str) -> None:
    """Create an overlay network; without --subnet it gets the next free subnet of the pool."""
    pairs = ipamflags.pair_gateways([s for values in subnet for s in values],
                                    [g for values in gateway for g in values])
    ipam = [pb.IPAMConfig(subnet=s, gateway=g) for s, g in pairs]
    resp = client(ctx).call("CreateNetwork", pb.CreateNetworkRequest(
        name=name, driver=driver, ipam=ipam, ingress=ingress, internal=internal, attachable=attachable,
        labels=_key_values(label), options=_key_values(opt)))
    out(resp.network.id + "\n")


@network.command("rm", short_help="Remove one or more networks", usage="NETWORK [NETWORK...]", nargs="min1")
@click.option("-f", "--force", is_flag=True, help="Do not error if the network does not exist, and do not ask "
                                                  "for confirmation before removing the ingress network")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def network_rm(ctx: click.Context, force: bool, refs: tuple[str, ...]) -> None:
    """Remove networks. Removing the ingress network asks for confirmation unless -f is given."""
    failures = []
    for ref in refs:
        try:
            found = client(ctx).call("GetNetwork", pb.GetNetworkRequest(ref=object_ref("network", ref))).network
            if found.ingress and not force and not confirm_removal(render.INGRESS_REMOVAL_WARNING, ref):
                continue
            client(ctx).call("RemoveNetwork", pb.RemoveNetworkRequest(ref=found.id))
            out(ref + "\n")
        except CLIError as e:
            if force and "not found" in e.message:
                continue
            failures.append(e.message)
    if failures:  # Docker's client ends the list with its status line
        raise CLIError("\n".join([*failures, "exit status 1"]))


def confirm_removal(question: str, name: str) -> bool:
    """Docker's prompt: '[y/N] ' on stdout, then one line of stdin; only y or Y (spaces aside)
    is yes, any other answer is no.

    Docker takes the end of input as no too, and exits 0: a script without a terminal then
    reads success while ``name`` is still there. Without any answer this fails instead.
    """
    sys.stdout.write(f"{question} [y/N] ")
    sys.stdout.flush()
    line = read_stdin_line()
    if not line:
        if sys.stdout.isatty():
            out("\n")
        raise CLIError(f"{name} was not removed: no answer to the confirmation prompt (end of input); "
                       "answer y on standard input, or use -f")
    return line.decode(errors="replace").strip() in ("y", "Y")


COMMANDS: tuple[click.Command, ...] = (network,)
