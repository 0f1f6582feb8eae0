"""``swarmctl``: Docker's swarm commands as a thin gRPC client of ``swarmd``.

The commands only gather flags, make one or two calls and echo ``render``'s text. Errors are
``CLIError``s, turned into one stderr message and an exit status in ``main``.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from swarmctl import ipamflags, params, render
from swarmctl.client import Client, Target, default_host, normalise_host
from swarmctl.errors import CLIError, ExitStatus
from swarmd import API_VERSION, __version__, gostr
from swarmd.api.swarm.v1 import swarm_pb2 as pb

PROG = "swarmctl"
JOIN_TOKEN_ENV = "SWARM_JOIN_TOKEN"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class DockerCommand(click.Command):
    """Knows Docker's usage line and argument-count rule, to word errors the way Docker does."""

    def __init__(self, *args: Any, usage: str = "[OPTIONS]", nargs: str = "none", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.docker_usage = usage
        self.nargs = nargs  # none | one | min1

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [self.docker_usage]


class DockerGroup(click.Group):
    command_class = DockerCommand


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

format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                             help="table, or json: one JSON object per line (for scripts)")


def _spec_fields(cert_expiry: int | None, heartbeat: int | None, task_history: int | None,
                 snapshot_interval: int | None, max_snapshots: int | None) -> dict[str, Any]:
    """The request fields of the shared cluster settings: has_* says the flag was given."""
    return {"has_cert_expiry": cert_expiry is not None, "cert_expiry_ns": cert_expiry or 0,
            "has_dispatcher_heartbeat": heartbeat is not None, "dispatcher_heartbeat_ns": heartbeat or 0,
            "has_task_history_limit": task_history is not None, "task_history_limit": task_history or 0,
            "has_snapshot_interval": snapshot_interval is not None, "snapshot_interval": snapshot_interval or 0,
            "has_max_snapshots": max_snapshots is not None, "max_snapshots": max_snapshots or 0}


def client(ctx: click.Context) -> Client:
    obj: Client = ctx.find_root().obj
    return obj


def out(text: str) -> None:
    sys.stdout.write(text)


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


# -- swarm lifecycle -------------------------------------------------------------------------

@cli.command(short_help="Initialize a swarm")
@click.option("--advertise-addr", default="", metavar="string",
              help='Advertised address (format: "<ip|interface>[:port]")')
@click.option("--listen-addr", type=params.NODE_ADDR, default="0.0.0.0:2377", show_default=True,
              help='Listen address (format: "<ip|interface>[:port]")')
@click.option("--availability", default="active", show_default=True, metavar="string",
              help='Availability of the node ("active", "pause", "drain")')
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


@cli.command(short_help="Join a swarm as a node and/or manager", usage="[OPTIONS] HOST:PORT", nargs="one")
@click.option("--token", default="", metavar="string",
              help="Token for entry into the swarm (prefer --token-file or $SWARM_JOIN_TOKEN: "
                   "argv is visible to other users and kept in shell history)")
@click.option("--token-file", type=click.Path(), default=None,
              help="Read the token from this file (one line)")
@click.option("--advertise-addr", default="", metavar="string",
              help='Advertised address (format: "<ip|interface>[:port]")')
@click.option("--listen-addr", type=params.NODE_ADDR, default="0.0.0.0:2377", show_default=True,
              help='Listen address (format: "<ip|interface>[:port]")')
@click.option("--availability", default="active", show_default=True, metavar="string",
              help='Availability of the node ("active", "pause", "drain")')
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


@cli.command("join-token", short_help="Manage join tokens", usage="[OPTIONS] (worker|manager)", nargs="one")
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


@cli.command(short_help="Leave the swarm")
@click.option("-f", "--force", is_flag=True, help="Force this node to leave the swarm, ignoring warnings")
@click.pass_context
def leave(ctx: click.Context, force: bool) -> None:
    """Leave the swarm. The last manager must use --force, which erases the swarm's state."""
    client(ctx).call("Leave", pb.LeaveRequest(force=force))
    out("Node left the swarm.\n")


@cli.command(short_help="Display and rotate the root CA")
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


@cli.command("unlock-key", short_help="Manage the unlock key")
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


@cli.command(short_help="Unlock swarm")
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


def read_stdin_line() -> bytes:
    """One line of standard input, b"" at its end: a pipe may carry bytes that are not UTF-8,
    and fd 0 may be closed or a directory, none of which may end in a traceback."""
    try:
        return sys.stdin.buffer.readline() if sys.stdin is not None else b""
    except (OSError, ValueError):
        return b""


@cli.command(short_help="Update the swarm", context_settings={"ignore_unknown_options": False})
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


@cli.command(short_help="Display system-wide information")
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


@cli.command(short_help="Show the swarmctl and swarmd version information")
@click.pass_context
def version(ctx: click.Context) -> None:
    """Show client and daemon versions."""
    try:
        server = client(ctx).call("Version", pb.VersionRequest())
    except CLIError:
        out(render.version(__version__, API_VERSION, platform.python_version(), None))
        raise
    out(render.version(__version__, API_VERSION, platform.python_version(), server))


# -- nodes -----------------------------------------------------------------------------------

@cli.group(cls=DockerGroup, short_help="Manage Swarm nodes")
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
    nodes, failures = _fetch_each(refs, lambda ref: client(ctx).call(
        "GetNode", pb.GetNodeRequest(ref=object_ref("node", ref))).node)
    if pretty:
        out("\n\n".join(render.node_pretty(n).rstrip("\n") for n in nodes) + ("\n" if nodes else ""))
    else:
        out(render.json_array([render.node_json(n) for n in nodes]))
    if failures:
        raise CLIError("\n".join(failures))


# Go's unicode.IsSpace, which strings.TrimSpace strips (Python's str.strip also takes \x1c-\x1f).
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
           "\u2028\u2029\u202f\u205f\u3000"


def object_ref(kind: str, ref: str) -> str:
    """A node or network as the request names it: Docker's client trims the reference and
    refuses an empty one before any call (what is echoed stays as typed)."""
    trimmed = ref.strip(GO_SPACE)
    if not trimmed:
        raise CLIError(f"invalid {kind} name or ID: value is empty")
    return trimmed


def _fetch_each(refs: tuple[str, ...], fetch: Any) -> tuple[list[Any], list[str]]:
    """Docker's inspect: what was found, and one error line per ref that was not."""
    found, failures = [], []
    for ref in refs:
        try:
            found.append(fetch(ref))
        except CLIError as e:
            failures.append(e.message)
    return found, failures


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


# -- networks --------------------------------------------------------------------------------

@cli.group(cls=DockerGroup, short_help="Manage swarm networks")
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
    found, failures = _fetch_each(refs, lambda ref: client(ctx).call(
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


# -- entry point -----------------------------------------------------------------------------

def _command_path(ctx: click.Context | None) -> str:
    return ctx.command_path if ctx is not None else PROG


def _usage_error(e: click.UsageError) -> tuple[str, ExitStatus]:
    ctx = e.ctx
    cmd = ctx.command if ctx is not None else None
    path = _command_path(ctx)
    usage = f"Usage:  {path} {getattr(cmd, 'docker_usage', '[OPTIONS] COMMAND')}"
    more = f"Run '{path} --help' for more information"
    if isinstance(e, params.FlagValueError):
        return f"{e.text}\n\n{usage}\n\n{more}", ExitStatus.USAGE
    if isinstance(e, click.NoSuchOption):
        return f"unknown flag: {e.option_name}\nSee '{path} --help'.", ExitStatus.USAGE
    if isinstance(e, click.BadOptionUsage | click.BadParameter) and not isinstance(e, click.MissingParameter):
        return f"{e.format_message()}\nSee '{path} --help'.", ExitStatus.USAGE
    nargs = getattr(cmd, "nargs", None)
    if isinstance(cmd, click.Group) or nargs is None:
        return f"{PROG}: {e.format_message()}\n\n{usage}\n\n{more}", ExitStatus.ERROR
    rule = {"none": "accepts no arguments", "one": "requires 1 argument",
            "min1": "requires at least 1 argument"}[nargs]
    return f"{PROG}: '{path}' {rule}\n\n{usage}\n\n{more}", ExitStatus.ERROR


def fail(message: str, status: ExitStatus) -> NoReturn:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.exit(int(status))


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv if argv is not None else sys.argv[1:], prog_name=PROG,
                        standalone_mode=False)
    except click.UsageError as e:
        fail(*_usage_error(e))
    except CLIError as e:
        fail(e.message, e.status)
    except click.exceptions.Abort:
        fail("", ExitStatus.INTERRUPTED)
    except KeyboardInterrupt:
        sys.exit(int(ExitStatus.INTERRUPTED))
    except BrokenPipeError:
        sys.exit(int(ExitStatus.ERROR))
    except click.ClickException as e:
        fail(e.format_message(), ExitStatus.ERROR)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
