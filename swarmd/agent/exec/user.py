"""Who a task runs as. A task never runs as root unless its spec names root: without a user it
gets the executor's task user, ``nobody`` for a root daemon."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from swarmd.agent.exec.api import ExecError

MAX_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


@dataclass(frozen=True)
class TaskUser:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    name: str


def default_task_user(configured: str | None = None, euid: int | None = None) -> str:
    """The user of tasks whose spec names none: the configured one, else ``nobody`` when the
    daemon is root (a task must not inherit root), else the daemon's own user (the only one it
    can run as)."""
    if configured:
        return configured
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return "nobody"
    try:
        return pwd.getpwuid(euid).pw_name
    except KeyError:
        return str(euid)


def _numeric(text: str) -> int | None:
    if not text.isdigit():
        return None
    value = int(text)
    if value > MAX_ID:
        raise ExecError(f"invalid user or group ID {text[:32]}")
    return value


def resolve_user(text: str) -> TaskUser:
    """``name``, ``uid``, ``name:group`` or ``uid:gid``, as Docker's --user; errors in runc's words.

    A numeric uid missing from the passwd file gets its own number as group (runc would use
    group 0, which is root's)."""
    user_part, _, group_part = text.partition(":")
    if not user_part:
        raise ExecError(f"unable to find user {text[:64]}: no matching entries in passwd file")
    uid = _numeric(user_part)
    entry: pwd.struct_passwd | None
    try:
        entry = pwd.getpwuid(uid) if uid is not None else pwd.getpwnam(user_part)
    except KeyError:
        if uid is None:
            raise ExecError(f"unable to find user {user_part[:64]}: no matching entries in passwd file") from None
        entry = None
    if entry is not None:
        uid, gid, home, name = entry.pw_uid, entry.pw_gid, entry.pw_dir or "/", entry.pw_name
    else:
        assert uid is not None
        gid, home, name = uid, "/", ""
    if group_part:
        numeric_gid = _numeric(group_part)
        if numeric_gid is not None:
            gid = numeric_gid
        else:
            try:
                gid = grp.getgrnam(group_part).gr_gid
            except KeyError:
                raise ExecError(f"unable to find group {group_part[:64]}: no matching entries in group file") from None
    groups = tuple(os.getgrouplist(name, gid)) if name else (gid,)
    return TaskUser(uid, gid, groups, home, name)
