"""swarmctl's failures and their exit codes: the one place that turns an exception into the
stderr text and exit status Docker's client would give.

Commands raise ``CLIError`` (printed as is); flag types raise ``FlagValueError`` while click
parses; click's own usage errors are reworded the way Docker's cobra words them.
"""

from __future__ import annotations

import re
import sys
from enum import IntEnum
from typing import NoReturn

import click

from swarmctl import PROG


class ExitStatus(IntEnum):
    SUCCESS = 0
    ERROR = 1           # a refused operation or bad input the command checked (Docker: 1)
    USAGE = 125         # a flag that cannot be parsed (Docker: 125)
    INTERRUPTED = 130   # Ctrl-C


class CLIError(Exception):
    """Printed as is on stderr (one line where Docker has one), then exit with ``status``."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.ERROR, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code  # the daemon's gRPC status name (NOT_FOUND...), "" for the CLI's own


class FlagValueError(click.BadParameter):
    """``invalid argument "V" for "--flag" flag: why`` (Docker exits 125 for these)."""

    def __init__(self, text: str, param: click.Parameter | None) -> None:
        super().__init__(text, param=param)
        self.text = text


# What ``exit_with`` knows; anything else is a bug and keeps its traceback.
HANDLED = (click.ClickException, click.exceptions.Abort, CLIError, KeyboardInterrupt, BrokenPipeError)


def outcome(e: BaseException) -> tuple[str | None, ExitStatus]:
    """The stderr text (None: print nothing) and the exit status of a failure."""
    if isinstance(e, click.UsageError):
        return _usage_error(e)
    if isinstance(e, CLIError):
        return e.message, e.status
    if isinstance(e, click.exceptions.Abort):
        return "", ExitStatus.INTERRUPTED
    if isinstance(e, KeyboardInterrupt):
        return None, ExitStatus.INTERRUPTED
    if isinstance(e, BrokenPipeError):
        return None, ExitStatus.ERROR
    if isinstance(e, click.ClickException):
        return e.format_message(), ExitStatus.ERROR
    raise e


def exit_with(e: BaseException) -> NoReturn:
    message, status = outcome(e)
    if message is not None:
        sys.stderr.write(message.rstrip("\n") + "\n")
    sys.exit(int(status))


_RULES_2010 = {"none": "accepts no arguments.", "one": "requires exactly 1 argument.",
               "min1": "requires at least 1 argument."}


def _usage_error_2010(e: click.UsageError, path: str, usage: str, cmd: click.Command) -> tuple[str, ExitStatus]:
    """Docker 20.10's cobra (the ``service`` commands' reference): flag errors end with a
    ``See`` line; a wrong argument count adds the usage line and the command's summary."""
    see = f"See '{path} --help'."
    if isinstance(e, FlagValueError):
        return f"{e.text}\n{see}", ExitStatus.USAGE
    if isinstance(e, click.NoSuchOption):
        return f"unknown flag: {e.option_name}\n{see}", ExitStatus.USAGE
    if isinstance(e, click.BadOptionUsage | click.BadParameter) and not isinstance(e, click.MissingParameter):
        missing = re.fullmatch(r"Option '(.+)' requires an argument\.", e.format_message())
        text = f"flag needs an argument: {missing.group(1)}" if missing else e.format_message()
        return f"{text}\n{see}", ExitStatus.USAGE
    rule = _RULES_2010.get(getattr(cmd, "nargs", ""), "")
    return f'"{path}" {rule}\n{see}\n\n{usage}\n\n{cmd.short_help}', ExitStatus.ERROR


def _usage_error(e: click.UsageError) -> tuple[str, ExitStatus]:
    """Cobra's wording: the command's Docker usage line (``docker_usage``) and its
    argument-count rule (``nargs``), both set on the command classes of ``commands.common``."""
    ctx = e.ctx
    cmd = ctx.command if ctx is not None else None
    path = ctx.command_path if ctx is not None else PROG
    usage = f"Usage:  {path} {getattr(cmd, 'docker_usage', '[OPTIONS] COMMAND')}"
    if getattr(cmd, "framing", "") == "20.10" and cmd is not None:
        return _usage_error_2010(e, path, usage, cmd)
    more = f"Run '{path} --help' for more information"
    if isinstance(e, FlagValueError):
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
