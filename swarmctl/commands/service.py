"""Docker's ``docker service`` commands (cli/command/service): create, ls, ps, inspect, scale,
update, rollback, rm, logs. The texts are Docker 20.10's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from swarmctl import logopts, params, progress, render_service
from swarmctl import serviceflags as sf
from swarmctl.commands.common import DockerGroup, client, format_option, object_ref, out
from swarmctl.errors import CLIError
from swarmctl.wire import pb, spb
from swarmd import gostr

NO_PORTS = "Error: publishing ports is not supported yet"


class ServiceGroup(DockerGroup):
    """Its commands word usage errors as Docker 20.10 does (the reference for services)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:  # type: ignore[override]
        kwargs.setdefault("framing", "20.10")
        made: Callable[[Callable[..., Any]], click.Command] = super().command(*args, **kwargs)
        return made


@click.group(cls=ServiceGroup, short_help="Manage services")
def service() -> None:
    """Manage services."""


def _options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def apply(f: Any) -> Any:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def _policy_options(kind: str) -> list[Callable[[Any], Any]]:
    what = "update" if kind == "update" else "rollback"
    done, verb = ("updated", "update") if kind == "update" else ("rolled back", "roll back")
    return [
        click.option(f"--{kind}-delay", type=params.DURATION, default=None, metavar="duration",
                     help=f"Delay between {what}s (ns|us|ms|s|m|h) (default 0s)"),
        click.option(f"--{kind}-failure-action", default=None, metavar="string",
                     help=f'Action on {what} failure ("pause"|"continue"' + ('|"rollback")' if kind == "update"
                                                                             else ")") + ' (default "pause")'),
        click.option(f"--{kind}-max-failure-ratio", type=sf.FLOAT32, default=None, metavar="float",
                     help=f"Failure rate to tolerate during a{'n' if kind == 'update' else ''} {what}"),
        click.option(f"--{kind}-monitor", type=params.DURATION, default=None, metavar="duration",
                     help=f"Duration after each task {what} to monitor for failure (ns|us|ms|s|m|h) (default 5s)"),
        click.option(f"--{kind}-order", default=None, metavar="string",
                     help=f'{what.capitalize()} order ("start-first"|"stop-first") (default "stop-first")'),
        click.option(f"--{kind}-parallelism", type=params.UINT64, default=None, metavar="uint",
                     help=f"Maximum number of tasks {done} simultaneously (0 to {verb} all at once) (default 1)"),
    ]


_TASK_OPTIONS = _options(
    click.option("--replicas", type=params.UINT64, default=None, metavar="uint", help="Number of tasks"),
    click.option("--replicas-max-per-node", type=params.UINT64, default=None, metavar="uint",
                 help="Maximum number of tasks per node (default 0 = unlimited)"),
    click.option("--reserve-cpu", type=sf.NANO_CPUS, default=None, metavar="decimal", help="Reserve CPUs"),
    click.option("--reserve-memory", type=sf.MEM_BYTES, default=None, metavar="bytes", help="Reserve Memory"),
    click.option("--limit-cpu", type=sf.NANO_CPUS, default=None, metavar="decimal", help="Limit CPUs"),
    click.option("--limit-memory", type=sf.MEM_BYTES, default=None, metavar="bytes", help="Limit Memory"),
    click.option("--restart-condition", default=None, metavar="string",
                 help='Restart when condition is met ("none"|"on-failure"|"any") (default "any")'),
    click.option("--restart-delay", type=params.DURATION, default=None, metavar="duration",
                 help="Delay between restart attempts (ns|us|ms|s|m|h) (default 5s)"),
    click.option("--restart-max-attempts", type=params.UINT64, default=None, metavar="uint",
                 help="Maximum number of restarts before giving up"),
    click.option("--restart-window", type=params.DURATION, default=None, metavar="duration",
                 help="Window used to evaluate the restart policy (ns|us|ms|s|m|h)"),
    *_policy_options("update"),
    *_policy_options("rollback"),
    click.option("--stop-signal", default=None, metavar="string", help="Signal to stop the task"),
    click.option("--stop-grace-period", type=params.DURATION, default=None, metavar="duration",
                 help="Time to wait before force killing a task (ns|us|ms|s|m|h) (default 10s)"),
    click.option("-w", "--workdir", default=None, metavar="string", help="Working directory inside the task"),
    click.option("-u", "--user", default=None, metavar="string", help="Username or UID (format: <name|uid>[:<group|gid>])"),
    click.option("-d", "--detach", is_flag=True,
                 help="Exit immediately instead of waiting for the service to converge"),
    click.option("-q", "--quiet", is_flag=True, help="Suppress progress output"),
)


def _task_options(kw: dict[str, Any], target: sf.TaskOptions) -> None:
    kw.pop("detach", None)
    kw.pop("quiet", None)
    target.replicas = kw.pop("replicas")
    target.max_replicas = kw.pop("replicas_max_per_node")
    target.reserve_cpu = kw.pop("reserve_cpu")
    target.reserve_memory = kw.pop("reserve_memory")
    target.limit_cpu = kw.pop("limit_cpu")
    target.limit_memory = kw.pop("limit_memory")
    target.restart_condition = kw.pop("restart_condition")
    target.restart_delay_ns = kw.pop("restart_delay")
    target.restart_max_attempts = kw.pop("restart_max_attempts")
    target.restart_window_ns = kw.pop("restart_window")
    target.stop_signal = kw.pop("stop_signal")
    target.stop_grace_ns = kw.pop("stop_grace_period")
    target.workdir = kw.pop("workdir")
    target.user = kw.pop("user")
    for kind, policy in (("update", target.update), ("rollback", target.rollback)):
        policy.parallelism = kw.pop(f"{kind}_parallelism")
        policy.delay_ns = kw.pop(f"{kind}_delay")
        policy.failure_action = kw.pop(f"{kind}_failure_action")
        policy.monitor_ns = kw.pop(f"{kind}_monitor")
        policy.max_failure_ratio = kw.pop(f"{kind}_max_failure_ratio")
        policy.order = kw.pop(f"{kind}_order")


def _wait(ctx: click.Context, service_id: str, name: str, quiet: bool) -> None:
    progress.watch(client(ctx).call, service_id, name, quiet)


def _not_found(e: CLIError, text: str) -> CLIError:
    """Docker's words for a service or node that is not there (they differ per command)."""
    return CLIError(text) if e.code == "NOT_FOUND" else e


def _get_service(ctx: click.Context, ref: str, missing: str) -> spb.Service:
    try:
        found: spb.Service = client(ctx).call("GetService", spb.GetServiceRequest(
            ref=object_ref("service", ref))).service
        return found
    except CLIError as e:
        raise _not_found(e, missing.format(ref=ref)) from None


def create_spec(params: dict[str, Any]) -> spb.ServiceSpec:
    """The spec ``service create``'s parsed flags make (Docker's client-side checks first)."""
    kw = dict(params)
    if kw.pop("publish"):
        raise CLIError(NO_PORTS)
    o = sf.CreateOptions(name=kw.pop("name"), mode=kw.pop("mode"), env=list(kw.pop("env")),
                         env_files=list(kw.pop("env_file")), labels=list(kw.pop("label")),
                         constraints=list(kw.pop("constraint")))
    _task_options(kw, o)
    return sf.build_spec(o, kw.pop("image"), list(kw.pop("command")))


def update_options(params: dict[str, Any]) -> sf.UpdateOptions:
    """What ``service update``'s parsed flags change."""
    kw = dict(params)
    if kw.pop("publish_add"):
        raise CLIError(NO_PORTS)
    o = sf.UpdateOptions(image=kw.pop("image"), args=kw.pop("args"), env_add=list(kw.pop("env_add")),
                         env_rm=list(kw.pop("env_rm")), label_add=list(kw.pop("label_add")),
                         label_rm=list(kw.pop("label_rm")), constraint_add=list(kw.pop("constraint_add")),
                         constraint_rm=list(kw.pop("constraint_rm")), force=kw.pop("force"))
    _task_options(kw, o)
    return o


# -- create ----------------------------------------------------------------------------------------

@service.command("create", short_help="Create a new service", usage="[OPTIONS] IMAGE [COMMAND] [ARG...]",
                 nargs="min1", context_settings={"allow_interspersed_args": False})
@click.option("--name", default="", metavar="string", help="Service name")
@click.option("--mode", default="replicated", metavar="string",
              help='Service mode ("replicated" or "global") (default "replicated")')
@click.option("-e", "--env", type=sf.ENV_VAR, multiple=True, metavar="list", help="Set environment variables")
@click.option("--env-file", multiple=True, metavar="list", help="Read in a file of environment variables")
@click.option("-l", "--label", type=sf.LABEL, multiple=True, metavar="list", help="Service labels")
@click.option("--constraint", multiple=True, metavar="list", help="Placement constraints")
@click.option("-p", "--publish", multiple=True, metavar="port", help="Publish a port as a node port (not supported yet)")
@_TASK_OPTIONS
@click.argument("image")
@click.argument("command", nargs=-1)
@click.pass_context
def service_create(ctx: click.Context, /, **kw: Any) -> None:
    """Create a new service: IMAGE is the program each task runs (a path, or a name looked up
    on the node's PATH), COMMAND and ARGs its arguments."""
    detach, quiet = kw["detach"], kw["quiet"]
    spec = create_spec(kw)
    created = client(ctx).call("CreateService", spb.CreateServiceRequest(spec=spec)).service
    out(created.id + "\n")
    if not detach:
        _wait(ctx, created.id, created.spec.name or created.id, quiet)


# -- ls, ps, inspect -------------------------------------------------------------------------------

@service.command("ls", short_help="List services")
@click.option("-f", "--filter", "filters", multiple=True, metavar="filter",
              help="Filter output based on conditions provided (id=, label=, mode=, name=)")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@format_option
@click.pass_context
def service_ls(ctx: click.Context, filters: tuple[str, ...], quiet: bool, fmt: str) -> None:
    """List services."""
    resp = client(ctx).call("ListServices", spb.ListServicesRequest(filters=list(filters)))
    if quiet:
        out(render_service.service_ids(resp.services))
    elif fmt == "json":
        out(render_service.service_lines_json(resp.services))
    else:
        out(render_service.service_table(resp.services))


def _print_tasks(tasks: list[spb.Task], quiet: bool, fmt: str, no_trunc: bool) -> None:
    now = time.time_ns()
    if quiet:
        out(render_service.task_ids(tasks))
    elif fmt == "json":
        out(render_service.task_lines_json(tasks, now, not no_trunc))
    else:
        out(render_service.task_table(tasks, now, not no_trunc))


_PS_OPTIONS = _options(
    click.option("-f", "--filter", "filters", multiple=True, metavar="filter",
                 help="Filter output based on conditions provided (desired-state=, id=, name=, node=)"),
    format_option,
    click.option("--no-trunc", is_flag=True, help="Do not truncate output"),
    click.option("-q", "--quiet", is_flag=True, help="Only display task IDs"),
)


@service.command("ps", short_help="List the tasks of one or more services",
                 usage="[OPTIONS] SERVICE [SERVICE...]", nargs="min1")
@_PS_OPTIONS
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def service_ps(ctx: click.Context, filters: tuple[str, ...], fmt: str, no_trunc: bool, quiet: bool,
               refs: tuple[str, ...]) -> None:
    """List the tasks of one or more services (the current task of each slot, then its history)."""
    ids, failures = [], []
    for ref in refs:  # Docker: a missing service is reported after the others' tasks; any other error ends it
        try:
            ids.append(client(ctx).call("GetService", spb.GetServiceRequest(ref=object_ref("service", ref))).service.id)
        except CLIError as e:
            if e.code != "NOT_FOUND":
                raise
            failures.append(f"no such service: {ref}")
    if ids:
        tasks = list(client(ctx).call("ListTasks", spb.ListTasksRequest(services=ids, filters=list(filters))).tasks)
        _print_tasks(tasks, quiet, fmt, no_trunc)
    if failures:
        raise CLIError("\n".join(failures))


@service.command("inspect", short_help="Display detailed information on one or more services",
                 usage="[OPTIONS] SERVICE [SERVICE...]", nargs="min1")
@click.option("--pretty", is_flag=True, help="Print the information in a human friendly format")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def service_inspect(ctx: click.Context, pretty: bool, refs: tuple[str, ...]) -> None:
    """Display detailed information on one or more services (ID, ID prefix or name)."""
    found, failures = [], []
    for ref in refs:
        try:
            found.append(_get_service(ctx, ref, "Error: no such service: {ref}"))
        except CLIError as e:
            failures.append(e.message)
    if pretty:
        now = time.time_ns()
        out("".join(render_service.service_pretty(s, now) for s in found))
    else:
        out(render_service.inspect_json(found))
    if failures:  # Docker 20.10's inspect status line
        raise CLIError("Status: " + "\n".join(failures) + ", Code: 1")


# -- scale, update, rollback, rm -------------------------------------------------------------------

SCALE_USAGE = "SERVICE=REPLICAS [SERVICE=REPLICAS...]"


def scale_args(args: tuple[str, ...], path: str) -> None:
    """Docker checks every argument's shape before it scales anything."""
    for arg in args:
        if "=" not in arg:
            raise CLIError(f"Invalid scale specifier '{arg}'.\nSee '{path} --help'.\n\n"
                           f"Usage:  {path} {SCALE_USAGE}\n\nScale one or multiple replicated services")


def parse_scale(arg: str) -> tuple[str, int]:
    """``SERVICE=N``: N is Go's ``strconv.ParseUint(N, 10, 64)``."""
    name, _, count = arg.partition("=")
    if not count.isascii() or not count.isdigit() or int(count) >= 1 << 64:
        why = "value out of range" if count.isascii() and count.isdigit() else "invalid syntax"
        raise CLIError(f"invalid replicas value {count}: strconv.ParseUint: parsing {gostr.quote(count)}: {why}")
    return name, int(count)


def _scale_one(ctx: click.Context, name: str, count: int) -> spb.Service:
    current = _get_service(ctx, name, "Error: No such service: {ref}")
    if current.spec.mode == "global":
        raise CLIError("scale can only be used with replicated or replicated-job mode")
    spec = spb.ServiceSpec()
    spec.CopyFrom(current.spec)
    spec.replicas = count
    client(ctx).call("UpdateService", spb.UpdateServiceRequest(ref=current.id, version=current.version, spec=spec))
    out(f"{name} scaled to {count}\n")
    return current


@service.command("scale", short_help="Scale one or multiple replicated services", usage=SCALE_USAGE, nargs="min1")
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of waiting for the service to converge")
@click.argument("args", nargs=-1, required=True)
@click.pass_context
def service_scale(ctx: click.Context, detach: bool, args: tuple[str, ...]) -> None:
    """Scale replicated services: each SERVICE=REPLICAS is applied, then each is waited on."""
    scale_args(args, ctx.command_path)
    errors, scaled = [], []
    for arg in args:
        try:
            name, count = parse_scale(arg)
            scaled.append((name, _scale_one(ctx, name, count).id))
        except CLIError as e:
            errors.append(f"{arg.partition('=')[0]}: {e.message}")
    if not detach:
        for name, service_id in scaled:
            try:
                _wait(ctx, service_id, name, False)
            except CLIError as e:
                errors.append(f"{name}: {e.message}")
    if errors:
        raise CLIError("\n".join(errors))


@service.command("update", short_help="Update a service", usage="[OPTIONS] SERVICE", nargs="one")
@click.option("--args", type=sf.SHELL_WORDS, default=None, metavar="command", help="Service command args")
@click.option("--constraint-add", multiple=True, metavar="list", help="Add or update a placement constraint")
@click.option("--constraint-rm", multiple=True, metavar="list", help="Remove a constraint")
@click.option("--env-add", type=sf.ENV_VAR, multiple=True, metavar="list", help="Add or update an environment variable")
@click.option("--env-rm", multiple=True, metavar="list", help="Remove an environment variable")
@click.option("--force", is_flag=True, help="Force update even if no changes require it")
@click.option("--image", default=None, metavar="string", help="Service image tag (the program tasks run)")
@click.option("--label-add", type=sf.LABEL, multiple=True, metavar="list", help="Add or update a service label")
@click.option("--label-rm", multiple=True, metavar="list", help="Remove a label by its key")
@click.option("--rollback", "to_previous", is_flag=True, help="Rollback to previous specification")
@click.option("--publish-add", multiple=True, metavar="port", help="Add or update a published port (not supported yet)")
@_TASK_OPTIONS
@click.argument("ref")
@click.pass_context
def service_update(ctx: click.Context, /, **kw: Any) -> None:
    """Update a service: the spec is read, changed here flag by flag, and sent back with the
    version it was read at (a concurrent change makes the update fail rather than be lost)."""
    ref, detach, quiet, to_previous = kw.pop("ref"), kw.pop("detach"), kw.pop("quiet"), kw.pop("to_previous")
    o = update_options(kw)
    current = _get_service(ctx, ref, "Error: No such service: {ref}")
    spec = spb.ServiceSpec()
    spec.CopyFrom(current.spec)
    sf.apply_update(spec, o)
    request = spb.UpdateServiceRequest(ref=current.id, version=current.version, spec=spec, rollback=to_previous)
    try:
        client(ctx).call("UpdateService", request)
    except CLIError as e:
        raise _not_found(e, f"Error: No such service: {ref}") from None
    out(ref + "\n")
    if not detach:
        _wait(ctx, current.id, current.spec.name, quiet)


@service.command("rollback", short_help="Revert changes to a service's configuration",
                 usage="[OPTIONS] SERVICE", nargs="one")
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of waiting for the service to converge")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output")
@click.argument("ref")
@click.pass_context
def service_rollback(ctx: click.Context, detach: bool, quiet: bool, ref: str) -> None:
    """Return a service to the spec it had before its last update."""
    current = _get_service(ctx, ref, "Error: No such service: {ref}")
    try:
        client(ctx).call("UpdateService", spb.UpdateServiceRequest(ref=current.id, version=current.version,
                                                                 rollback=True))
    except CLIError as e:
        raise _not_found(e, f"Error: No such service: {ref}") from None
    out(ref + "\n")
    if not detach:
        _wait(ctx, current.id, current.spec.name, quiet)


@service.command("rm", short_help="Remove one or more services", usage="SERVICE [SERVICE...]", nargs="min1")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def service_rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove services; each removed one is echoed as it was named."""
    failures = []
    for ref in refs:
        try:
            client(ctx).call("RemoveService", spb.RemoveServiceRequest(ref=object_ref("service", ref)))
            out(ref + "\n")
        except CLIError as e:
            failures.append(_not_found(e, f"Error: No such service: {ref}").message)
    if failures:
        raise CLIError("\n".join(failures))


COMMANDS: tuple[click.Command, ...] = (service,)


@service.command("logs", short_help="Fetch the logs of a service or task", usage="[OPTIONS] SERVICE|TASK",
                 nargs="one")
@click.option("--details", is_flag=True, help="Show extra details provided to logs")
@click.option("-f", "--follow", is_flag=True, help="Follow log output")
@click.option("--no-resolve", is_flag=True, help="Do not map IDs to Names in output")
@click.option("--no-task-ids", is_flag=True, help="Do not include task IDs in output")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.option("--raw", is_flag=True, help="Do not neatly format logs")
@click.option("--since", default="", metavar="string",
              help="Show logs since timestamp (e.g. 2013-01-02T13:23:37Z) or relative (e.g. 42m for 42 minutes)")
@click.option("-n", "--tail", default="all", metavar="string",
              help='Number of lines to show from the end of the logs (default "all")')
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@click.argument("ref")
@click.pass_context
def service_logs(ctx: click.Context, details: bool, follow: bool, no_resolve: bool, no_task_ids: bool,
                 no_trunc: bool, raw: bool, since: str, tail: str, timestamps: bool, ref: str) -> None:
    """Fetch the logs of a service or task, from the nodes that ran its tasks (a task's stdout
    to stdout, its stderr to stderr)."""
    import grpc

    request = spb.ServiceLogsRequest(ref=ref, follow=follow, tail=logopts.parse_tail(tail),
                                     since_ns=logopts.parse_since(since, time.time_ns()))
    style = render_service.LogStyle(timestamps=timestamps, raw=raw, task_ids=not no_task_ids,
                                    trunc=not no_trunc, resolve=not no_resolve, details=details)
    conn = client(ctx)
    call = conn.stream("ServiceLogs", request)
    prefixes: dict[str, bytes] = {}
    width = 1
    started = False
    try:
        for message in call:
            if not started:
                started, width = True, max(1, message.slot_width)
            for task in message.tasks:
                prefixes[task.task_id] = render_service.log_prefix(task, width, style)
            _write_lines(message.messages, prefixes, style)
    except grpc.RpcError as e:
        error = conn.translate(e)
        if error.code == "NOT_FOUND":
            raise CLIError(f"no such task or service: {ref}") from None
        if started and error.code not in ("", "UNAVAILABLE"):
            details_text = e.details() or ""
            raise CLIError(f"error from daemon in stream: Error grabbing logs: {details_text}") from None
        raise error from None
    except KeyboardInterrupt:
        call.cancel()
        raise


def _write_lines(messages: Any, prefixes: dict[str, bytes], style: render_service.LogStyle) -> None:
    """stdout lines to stdout, stderr lines to stderr, each stream flushed once per batch."""
    import sys

    wrote = {"stdout": False, "stderr": False}
    for message in messages:
        prefix = prefixes.get(message.task_id, b"")
        target = "stderr" if message.stream == "stderr" else "stdout"
        getattr(sys, target).buffer.write(render_service.log_line(prefix, message, style))
        wrote[target] = True
    for target, used in wrote.items():
        if used:
            getattr(sys, target).flush()
