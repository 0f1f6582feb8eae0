"""Docker's ``docker swarm`` commands: init, join, join-token, leave, ca, unlock-key, unlock and
update (Docker's cli/command/swarm), the swarm's lifecycle and its cluster-wide settings.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from swarmctl import PROG, params, render
from swarmctl.commands.common import client, command, out, read_stdin_line
from swarmctl.errors import CLIError
from swarmctl.wire import pb
from swarmd import gostr

JOIN_TOKEN_ENV = "SWARM_JOIN_TOKEN"

# Cluster settings that init and update (and ca --rotate) share.
cert_expiry_option = click.option("--cert-expiry", type=params.DURATION, default=None,
              help="Validity period for node certificates (ns|us|ms|s|m|h)  [default: 2160h0m0s]")
heartbeat_option = click.option("--dispatcher-heartbeat", type=params.DURATION, default=None,
              help="Dispatcher heartbeat period (ns|us|ms|s|m|h)  [default: 5s]")
max_snapshots_option = click.option("--max-snapshots", type=params.UINT64, default=None,
              help="Number of additional Raft snapshots to retain")
snapshot_interval_option = click.option("--snapshot-interval", type=params.UINT64, default=None,
              help="Number of log entries between Raft snapshots  [default: 10000]")
task_history_option = click.option("--task-history-limit", type=params.INT, default=None,
              help="Task history retention limit  [default: 5]")


def _spec_fields(cert_expiry: int | None, heartbeat: int | None, task_history: int | None,
                 snapshot_interval: int | None, max_snapshots: int | None) -> dict[str, Any]:
    """The request fields of the shared cluster settings: has_* says the flag was given."""
    return {"has_cert_expiry": cert_expiry is not None, "cert_expiry_ns": cert_expiry or 0,
            "has_dispatcher_heartbeat": heartbeat is not None, "dispatcher_heartbeat_ns": heartbeat or 0,
            "has_task_history_limit": task_history is not None, "task_history_limit": task_history or 0,
            "has_snapshot_interval": snapshot_interval is not None, "snapshot_interval": snapshot_interval or 0,
            "has_max_snapshots": max_snapshots is not None, "max_snapshots": max_snapshots or 0}


def node_address_options(fn: Any) -> Any:
    """The addresses and availability init and join both take, in Docker's order."""
    for option in reversed((
        click.option("--advertise-addr", default="", metavar="string",
                     help='Advertised address (format: "<ip|interface>[:port]")'),
        click.option("--listen-addr", type=params.NODE_ADDR, default="0.0.0.0:2377", show_default=True,
                     help='Listen address (format: "<ip|interface>[:port]")'),
        click.option("--availability", default="active", show_default=True, metavar="string",
                     help='Availability of the node ("active", "pause", "drain")'))):
        fn = option(fn)
    return fn


@command(short_help="Initialize a swarm")
@node_address_options
@click.option("--autolock", is_flag=True,
              help="Enable manager autolocking (requiring an unlock key to start a stopped manager)")
@cert_expiry_option
@click.option("--data-path-addr", default="", metavar="string",
              help='Address or interface to use for data path traffic (format: "<ip|interface>")')
@click.option("--data-path-port", type=params.UINT32, default=0,
              help="Port number to use for data path traffic (1024 - 49151). If no value is set or is set "
                   "to 0, the default port (4789) is used.")
@click.option("--default-addr-pool", type=params.IPNET_LIST, multiple=True,
              help="default address pool in CIDR format")
@click.option("--default-addr-pool-mask-length", type=params.UINT32, default=24, show_default=True,
              help="default address pool subnet mask length")
@heartbeat_option
@click.option("--force-new-cluster", is_flag=True, help="Force create a new cluster from current state")
@max_snapshots_option
@snapshot_interval_option
@task_history_option
@click.pass_context
def init(ctx: click.Context, advertise_addr: str, listen_addr: str, availability: str, autolock: bool,
         cert_expiry: int | None, data_path_addr: str, data_path_port: int,
         default_addr_pool: tuple[list[str], ...], default_addr_pool_mask_length: int,
         dispatcher_heartbeat: int | None, force_new_cluster: bool, max_snapshots: int | None,
         snapshot_interval: int | None, task_history_limit: int | None) -> None:
    """Initialize a swarm: this node becomes its first manager and leader."""
    check_availability(availability)
    req = pb.InitRequest(
        listen_addr=listen_addr, advertise_addr=advertise_addr, data_path_addr=data_path_addr,
        data_path_port=data_path_port, force_new_cluster=force_new_cluster,
        availability=availability.lower(), autolock=autolock,
        default_addr_pool=[p for group in default_addr_pool for p in group],
        subnet_size=default_addr_pool_mask_length,
        **_spec_fields(cert_expiry, dispatcher_heartbeat, task_history_limit, snapshot_interval, max_snapshots))
    try:
        resp = client(ctx).call("Init", req)
    except CLIError as e:
        if ("could not choose an IP address to advertise" in e.message
                or "could not find the system's IP address" in e.message) \
                and not e.message.endswith(" - specify one with --advertise-addr"):
            e.message += " - specify one with --advertise-addr"
        raise
    out(render.init_result(resp))


def join_token_from(flag: str, path: str | None) -> str:
    """--token, else --token-file, else $SWARM_JOIN_TOKEN: the last two keep it out of argv.
    The path stays a string so that an error names it as typed ("" is not ".")."""
    if flag and path is not None:
        raise CLIError("--token and --token-file cannot be used together")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CLIError(f"could not read --token-file {path}: {getattr(e, 'strerror', None) or e}") from None
    return flag or os.environ.get(JOIN_TOKEN_ENV, "").strip()


def check_availability(value: str) -> None:
    if value.lower() not in ("active", "pause", "drain"):
        raise CLIError(f"invalid availability {gostr.quote(value)}, only active, pause and drain are supported")


@command(short_help="Join a swarm as a node and/or manager", usage="[OPTIONS] HOST:PORT",
         nargs="one")
@click.option("--token", default="", metavar="string",
              help="Token for entry into the swarm (prefer --token-file or $SWARM_JOIN_TOKEN: "
                   "argv is visible to other users and kept in shell history)")
@click.option("--token-file", type=click.Path(), default=None,
              help="Read the token from this file (one line)")
@node_address_options
@click.option("--data-path-addr", default="", metavar="string",
              help='Address or interface to use for data path traffic (format: "<ip|interface>")')
@click.argument("remote")
@click.pass_context
def join(ctx: click.Context, token: str, token_file: str | None, advertise_addr: str, listen_addr: str,
         availability: str, data_path_addr: str, remote: str) -> None:
    """Join a swarm as a worker or a manager: the role comes from the token."""
    check_availability(availability)
    token = join_token_from(token, token_file)
    resp = client(ctx).call("Join", pb.JoinRequest(
        remote_addr=remote, token=token, listen_addr=listen_addr, advertise_addr=advertise_addr,
        data_path_addr=data_path_addr, availability=availability.lower()))
    out(f"This node joined a swarm as a {resp.role}.\n")


@command("join-token", short_help="Manage join tokens", usage="[OPTIONS] (worker|manager)",
         nargs="one")
@click.option("-q", "--quiet", is_flag=True, help="Only display token")
@click.option("--rotate", is_flag=True, help="Rotate join token")
@click.argument("role")
@click.pass_context
def join_token(ctx: click.Context, quiet: bool, rotate: bool, role: str) -> None:
    """Manage join tokens: show the command (or just the token) to join as ROLE."""
    if role not in ("worker", "manager"):
        raise CLIError(f"unknown role {role}")
    resp = client(ctx).call("GetJoinToken", pb.GetJoinTokenRequest(role=role, rotate=rotate))
    out(render.join_token(role, resp, quiet, rotate))


@command(short_help="Leave the swarm")
@click.option("-f", "--force", is_flag=True, help="Force this node to leave the swarm, ignoring warnings")
@click.pass_context
def leave(ctx: click.Context, force: bool) -> None:
    """Leave the swarm. The last manager must use --force, which erases the swarm's state."""
    client(ctx).call("Leave", pb.LeaveRequest(force=force))
    out("Node left the swarm.\n")


@command(short_help="Display and rotate the root CA")
@click.option("--rotate", is_flag=True,
              help="Rotate the swarm CA - if no certificate or key are provided, new ones will be generated")
@cert_expiry_option
@click.option("--ca-cert", type=params.PEM_FILE, default=None, metavar="pem-file",
              help="Path to the PEM-formatted root CA certificate to use for the new cluster")
@click.option("--ca-key", type=params.PEM_FILE, default=None, metavar="pem-file",
              help="Path to the PEM-formatted root CA key to use for the new cluster")
@click.option("-d", "--detach", is_flag=True,
              help="Exit immediately instead of waiting for the root rotation to converge")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output")
@click.pass_context
def ca(ctx: click.Context, rotate: bool, cert_expiry: int | None, ca_cert: bytes | None,
       ca_key: bytes | None, detach: bool, quiet: bool) -> None:
    """Display the swarm's root CA certificate, exactly as stored; with --rotate, move every node
    to a new root CA (made here, or the --ca-cert/--ca-key given) and show the progress."""
    if not rotate:
        for flag, value in (("ca-cert", ca_cert), ("ca-key", ca_key), ("cert-expiry", cert_expiry)):
            if value is not None:
                raise CLIError(f"`--{flag}` flag requires the `--rotate` flag to update the CA")
        resp = client(ctx).call("GetCluster", pb.GetClusterRequest())
        out(resp.cluster.tls_info.trust_root.rstrip("\n") + "\n")
        return
    if ca_cert is not None and ca_key is None:
        raise CLIError("the --ca-cert flag requires that a --ca-key flag and/or --external-ca flag be provided as well")
    req = pb.UpdateClusterRequest(rotate_root_ca=True, signing_ca_cert=ca_cert or b"",
                                  signing_ca_key=ca_key or b"",
                                  has_cert_expiry=cert_expiry is not None, cert_expiry_ns=cert_expiry or 0)
    desired = client(ctx).call("UpdateCluster", req).cluster.desired_tls_info
    if detach:
        return
    try:
        _follow_root_rotation(ctx, desired, quiet)
    except KeyboardInterrupt:
        sys.stderr.write("Operation continuing in background.\n"
                         f"Use `{PROG} info` to check progress.\n")
        raise
    if not quiet:
        resp = client(ctx).call("GetCluster", pb.GetClusterRequest())
        out(resp.cluster.tls_info.trust_root.rstrip("\n") + "\n")


def _follow_root_rotation(ctx: click.Context, desired: pb.TLSInfo, quiet: bool) -> None:
    """Poll every 200 ms until every node that is up has a certificate from the new root and
    trusts it (Docker's progress display)."""
    import time

    tty = sys.stdout.isatty()
    shown = ""
    while True:
        cluster = client(ctx).call("GetCluster", pb.GetClusterRequest()).cluster
        nodes = [n for n in client(ctx).call("ListNodes", pb.ListNodesRequest()).nodes if n.state == "ready"]
        progress = render.RootRotationProgress.of(cluster, desired, nodes)
        text = progress.text()
        if not quiet and text != shown:
            out(render.redraw(shown, text) if tty else text)
            sys.stdout.flush()
            shown = text
        if progress.done:
            return
        time.sleep(0.2)


@command("unlock-key", short_help="Manage the unlock key")
@click.option("-q", "--quiet", is_flag=True, help="Only display token")
@click.option("--rotate", is_flag=True, help="Rotate unlock key")
@click.pass_context
def unlock_key(ctx: click.Context, quiet: bool, rotate: bool) -> None:
    """Show (or rotate) the key that unlocks an autolocked manager after a restart."""
    if rotate:
        cluster = client(ctx).call("GetCluster", pb.GetClusterRequest()).cluster
        if not cluster.spec.autolock_managers:
            raise CLIError("cannot rotate because autolock is not turned on")
        client(ctx).call("UpdateCluster", pb.UpdateClusterRequest(rotate_unlock_key=True))
        if not quiet:
            out("Successfully rotated manager unlock key.\n")
    try:
        resp = client(ctx).call("GetUnlockKey", pb.GetUnlockKeyRequest())
    except CLIError as e:
        raise CLIError(f"could not fetch unlock key: {e.message}") from None
    if not resp.unlock_key:
        raise CLIError("no unlock key is set")
    out(render.unlock_key(resp.unlock_key, False, quiet))


@command(short_help="Unlock swarm")
@click.pass_context
def unlock(ctx: click.Context) -> None:
    """Unlock a locked manager after a restart. The key is read without echo from a terminal,
    or as one line from standard input (never from the command line, where others could see it)."""
    state = client(ctx).call("Info", pb.InfoRequest()).local_node_state
    if state == "inactive":
        raise CLIError("Error: This node is not part of a swarm")
    if state != "locked":
        raise CLIError("Error: swarm is not locked")
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass
        key = getpass.getpass("Enter unlock key: ")
    else:
        key = read_stdin_line().decode(errors="replace")
    client(ctx).call("Unlock", pb.UnlockRequest(key=key.strip()))


@command(short_help="Update the swarm", context_settings={"ignore_unknown_options": False})
@click.option("--autolock", type=params.GO_BOOL, is_flag=False, flag_value="true", default=None,
              help="Change manager autolocking setting (true|false)")
@cert_expiry_option
@heartbeat_option
@max_snapshots_option
@snapshot_interval_option
@task_history_option
@click.pass_context
def update(ctx: click.Context, autolock: bool | None, cert_expiry: int | None, dispatcher_heartbeat: int | None,
           max_snapshots: int | None, snapshot_interval: int | None, task_history_limit: int | None) -> None:
    """Update the swarm's settings. Only the flags given change; without flags this help is shown."""
    given = (autolock, cert_expiry, dispatcher_heartbeat, max_snapshots, snapshot_interval, task_history_limit)
    if all(v is None for v in given):
        out(ctx.get_help() + "\n")
        return
    before = client(ctx).call("GetCluster", pb.GetClusterRequest()).cluster
    req = pb.UpdateClusterRequest(
        has_autolock=autolock is not None, autolock=bool(autolock),
        **_spec_fields(cert_expiry, dispatcher_heartbeat, task_history_limit, snapshot_interval, max_snapshots))
    resp = client(ctx).call("UpdateCluster", req)
    out("Swarm updated.\n")
    if autolock and not before.spec.autolock_managers and resp.unlock_key:
        out(render.unlock_key(resp.unlock_key, False, False))


COMMANDS: tuple[click.Command, ...] = (init, join, join_token, leave, ca, unlock_key, unlock, update)
