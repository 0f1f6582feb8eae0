"""``swarmctl``: Docker's swarm commands as a thin gRPC client of ``swarmd``.

This module is the root group (``-H``, ``--tls*``, ``--version``) and the entry point. The
commands live in ``swarmctl.commands``, one module per noun; they gather flags, make one or two
calls and echo ``render``'s text. Failures become one stderr message and an exit status in
``errors``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from swarmctl import PROG, errors
from swarmctl.client import Client, Target, default_host, normalise_host
from swarmctl.commands import network, node, service, swarm, system
from swarmctl.commands.common import DockerGroup
from swarmd import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=DockerGroup, context_settings=CONTEXT)
@click.option("-H", "--host", default=None, metavar="HOST",
              help="Daemon to talk to: unix:///path/swarmd.sock (default: the local control socket, "
                   "or $SWARMCTL_HOST) or tcp://MANAGER:2377 with --tls* files.")
@click.option("--tlscacert", type=click.Path(path_type=Path),
              help="Trust certs signed only by this CA (the swarm's root CA)")
@click.option("--tlscert", type=click.Path(path_type=Path), help="Path to a manager's TLS certificate file")
@click.option("--tlskey", type=click.Path(path_type=Path), help="Path to the TLS key file")
@click.version_option(__version__, "-v", "--version", prog_name=PROG, message="%(prog)s version %(version)s")
@click.pass_context
def cli(ctx: click.Context, host: str | None, tlscacert: Path | None, tlscert: Path | None,
        tlskey: Path | None) -> None:
    """Manage a swarm: the cluster layer of Docker swarm mode, served by swarmd."""
    target = Target(normalise_host(host or default_host()), tlscacert, tlscert, tlskey)
    ctx.obj = Client(target)
    ctx.call_on_close(ctx.obj.close)


for _module in (swarm, system, node, network, service):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv if argv is not None else sys.argv[1:], prog_name=PROG,
                        standalone_mode=False)
    except errors.HANDLED as e:
        errors.exit_with(e)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
