"""Docker's ``docker info`` and ``docker version`` (cli/command/system): what this node and the
daemon say about themselves.
"""

from __future__ import annotations

import platform
import sys

import click

from swarmctl import render
from swarmctl.commands.common import client, command, out
from swarmctl.errors import CLIError
from swarmctl.wire import pb
from swarmd import API_VERSION, __version__


@command(short_help="Display system-wide information")
@click.option("-f", "--format", "fmt", type=click.Choice(["pretty", "json"]), default="pretty",
              help="pretty: docker info's layout; json: the Swarm section as one JSON object")
@click.pass_context
def info(ctx: click.Context, fmt: str) -> None:
    """Show this node's swarm state (docker info's Swarm section)."""
    resp = client(ctx).call("Info", pb.InfoRequest())
    if fmt == "json":
        out(render.info_json(resp))
        return
    out(render.info(resp, __version__))
    sys.stderr.write(render.two_manager_warning(resp))


@command(short_help="Show the swarmctl and swarmd version information")
@click.pass_context
def version(ctx: click.Context) -> None:
    """Show client and daemon versions."""
    try:
        server = client(ctx).call("Version", pb.VersionRequest())
    except CLIError:
        out(render.version(__version__, API_VERSION, platform.python_version(), None))
        raise
    out(render.version(__version__, API_VERSION, platform.python_version(), server))


COMMANDS: tuple[click.Command, ...] = (info, version)
