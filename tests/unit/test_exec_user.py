"""Who tasks run as, and the environment they get."""

from __future__ import annotations

import os
import pwd

import pytest

from swarmd.agent.exec.api import ExecError, TaskRuntimeSpec
from swarmd.agent.exec.process import DEFAULT_PATH, task_environment
from swarmd.agent.exec.user import TaskUser, default_task_user, resolve_user


def test_default_task_user() -> None:
    assert default_task_user(None, euid=0) == "nobody"
    assert default_task_user("", euid=0) == "nobody"
    assert default_task_user("svc", euid=0) == "svc"
    assert default_task_user("root", euid=0) == "root"  # an operator's explicit choice
    me = os.geteuid()
    if me != 0:
        assert default_task_user(None) == pwd.getpwuid(me).pw_name
    assert default_task_user(None, euid=0) != "root"
    unknown = 4_000_000_123
    assert default_task_user(None, euid=unknown) == str(unknown)


def test_resolve_names_and_numbers() -> None:
    root = resolve_user("root")
    assert (root.uid, root.gid, root.name) == (0, 0, "root") and 0 in root.groups
    nobody = pwd.getpwnam("nobody")
    assert resolve_user("nobody").uid == nobody.pw_uid
    assert resolve_user(str(nobody.pw_uid)).gid == nobody.pw_gid
    assert resolve_user("nobody:0").gid == 0
    assert resolve_user("0:65534") == TaskUser(0, 65534, tuple(os.getgrouplist("root", 65534)), root.home, "root")


def test_unknown_numeric_uid_gets_its_own_group_not_root() -> None:
    assert resolve_user("4000123") == TaskUser(4000123, 4000123, (4000123,), "/", "")
    assert resolve_user("4000123:77").gid == 77


@pytest.mark.parametrize("text, message", [
    ("no-such-user", "unable to find user no-such-user: no matching entries in passwd file"),
    (":0", "unable to find user :0: no matching entries in passwd file"),
    ("nobody:no-such-group", "unable to find group no-such-group: no matching entries in group file"),
    ("99999999999", "invalid user or group ID 99999999999"),
])
def test_unknown_users_in_runc_words(text: str, message: str) -> None:
    with pytest.raises(ExecError) as info:
        resolve_user(text)
    assert str(info.value) == message


def test_environment_order() -> None:
    spec = TaskRuntimeSpec(task_id="t9", service_id="s1", service_name="web", slot=3, node_id="n1",
                           node_hostname="host-a", program="x",
                           env=("PATH=/opt/bin", "A=1", "A=2", "SWARM_TASK_ID=forged", "EMPTY="))
    env = task_environment(spec, TaskUser(1, 1, (1,), "/home/u", "u"))
    assert env["PATH"] == "/opt/bin" and env["A"] == "2" and env["EMPTY"] == "" and env["HOME"] == "/home/u"
    assert env["SWARM_TASK_ID"] == "t9"  # the task's identity is not the spec's to change
    assert {k: v for k, v in env.items() if k.startswith("SWARM_")} == {
        "SWARM_SERVICE_ID": "s1", "SWARM_SERVICE_NAME": "web", "SWARM_TASK_ID": "t9", "SWARM_TASK_SLOT": "3",
        "SWARM_NODE_ID": "n1", "SWARM_NODE_HOSTNAME": "host-a"}
    bare = task_environment(TaskRuntimeSpec("t", "s", "n", 0, "n", "h", "x"), TaskUser(1, 1, (1,), "/", ""))
    assert bare["PATH"] == DEFAULT_PATH
