"""What the command modules share: Docker's command classes (usage line, argument-count rule,
which ``errors`` words usage errors with), the invocation's client, and Docker's client-side
handling of object references and standard input.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from swarmctl.client import Client
from swarmctl.errors import CLIError


class DockerCommand(click.Command):
    """Knows Docker's usage line and argument-count rule, to word errors the way Docker does."""

    def __init__(self, *args: Any, usage: str = "[OPTIONS]", nargs: str = "none", framing: str = "",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.docker_usage = usage
        self.nargs = nargs  # none | one | min1
        self.framing = framing  # "20.10": usage errors worded as Docker 20.10's client words them

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [self.docker_usage]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if e.ctx is None and self.framing:  # click leaves it unset for a flag without its value
                e.ctx = ctx
            raise


class DockerGroup(click.Group):
    command_class = DockerCommand


def command(name: str | None = None, **attrs: Any) -> Callable[[Callable[..., Any]], DockerCommand]:
    """``click.command`` making a ``DockerCommand`` (``usage=`` and ``nargs=`` are its own)."""
    return click.command(name, cls=DockerCommand, **attrs)


format_option = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                             help="table, or json: one JSON object per line (for scripts)")


def client(ctx: click.Context) -> Client:
    """The invocation's one client (made by the root group from -H and --tls*)."""
    obj: Client = ctx.find_root().obj
    return obj


def out(text: str) -> None:
    """Every success text goes to stdout as render made it, byte for byte."""
    sys.stdout.write(text)


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


def fetch_each(refs: tuple[str, ...], fetch: Any) -> tuple[list[Any], list[str]]:
    """Docker's inspect: what was found, and one error line per ref that was not."""
    found, failures = [], []
    for ref in refs:
        try:
            found.append(fetch(ref))
        except CLIError as e:
            failures.append(e.message)
    return found, failures


def read_stdin_line() -> bytes:
    """One line of standard input, b"" at its end: a pipe may carry bytes that are not UTF-8,
    and fd 0 may be closed or a directory, none of which may end in a traceback."""
    try:
        return sys.stdin.buffer.readline() if sys.stdin is not None else b""
    except (OSError, ValueError):
        return b""
