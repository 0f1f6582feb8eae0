"""Cgroup discovery and limit values, from /proc text (the kernel-facing part is in
tests/integration/test_executor.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swarmd.agent.exec.api import ExecError
from swarmd.agent.exec.cgroups import (Cgroups, Hierarchy, Layout, cpu_quota_us, detect_layout, limit_files,
                                       parse_mountinfo, parse_proc_cgroup)

HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
"""
HYBRID_SELF = """\
9:name=systemd:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
"""
UNIFIED_MOUNTS = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
UNIFIED_SELF = "0::/system.slice/swarmd.service\n"


def test_mountinfo_keeps_only_cgroup_mounts() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTS)
    assert [m.mountpoint for m in mounts] == ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/memory",
                                              "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"]
    assert "memory" in mounts[2].options and mounts[4].fstype == "cgroup2"


def test_mountinfo_octal_escapes() -> None:
    (m,) = parse_mountinfo("1 2 0:1 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n")
    assert m.mountpoint == "/mnt/with space"


def test_proc_cgroup_lists_each_controller() -> None:
    where = parse_proc_cgroup("5:cpu,cpuacct:/a/b\n4:memory:/m\n0::/u\n")
    assert where == {"cpu": "/a/b", "cpuacct": "/a/b", "memory": "/m", "": "/u"}


def test_hybrid_host_uses_v1_controllers() -> None:
    """A v2 tree without cpu and memory (hybrid) is of no use; v1 carries them."""
    layout = detect_layout(HYBRID_MOUNTS, HYBRID_SELF, {"/sys/fs/cgroup/unified": "hugetlb\n"})
    assert layout.version == 1
    assert layout.hierarchies["cpu"].own == "/sys/fs/cgroup/cpu"
    assert layout.hierarchies["memory"].own == "/sys/fs/cgroup/memory/process_api/abc"
    assert layout.hierarchies["memory"].mountpoint == "/sys/fs/cgroup/memory"


def test_unified_host_uses_v2() -> None:
    layout = detect_layout(UNIFIED_MOUNTS, UNIFIED_SELF, {"/sys/fs/cgroup": "cpuset cpu io memory pids\n"})
    assert layout.version == 2
    assert layout.hierarchies["cpu"] is layout.hierarchies["memory"]
    assert layout.hierarchies["cpu"].own == "/sys/fs/cgroup/system.slice/swarmd.service"
    assert len(layout.dirs) == 1


def test_v2_without_controllers_and_no_cgroups_at_all() -> None:
    assert detect_layout(UNIFIED_MOUNTS, UNIFIED_SELF, {"/sys/fs/cgroup": "pids\n"}).version == 0
    assert detect_layout("22 1 8:1 / / rw - ext4 /dev/vda rw\n", "", {}).version == 0


def test_mount_root_inside_a_namespace() -> None:
    """In a cgroup namespace the mount's root is our own cgroup: paths are relative to it."""
    mounts = "32 31 0:29 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    layout = detect_layout(mounts, "4:memory:/docker/x/inner\n", {})
    assert layout.hierarchies["memory"].own == "/sys/fs/cgroup/memory/inner"
    hidden = detect_layout(mounts, "4:memory:/elsewhere\n", {})
    assert hidden.hierarchies["memory"].own == "/sys/fs/cgroup/memory"


@pytest.mark.parametrize("nanos, quota", [(1_000_000_000, 100_000), (1_500_000_000, 150_000),
                                          (250_000_000, 25_000), (10_000_000, 1_000), (1_000, 1_000)])
def test_cpu_quota_as_docker_computes_it(nanos: int, quota: int) -> None:
    assert cpu_quota_us(nanos) == quota


def test_limit_files() -> None:
    assert limit_files(1, "cpu", 500_000_000, 0) == [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000")]
    assert limit_files(2, "cpu", 500_000_000, 0) == [("cpu.max", "50000 100000")]
    assert limit_files(1, "memory", 0, 1 << 26) == [("memory.limit_in_bytes", "67108864"),
                                                    ("memory.memsw.limit_in_bytes", "67108864")]
    assert limit_files(2, "memory", 0, 1 << 26) == [("memory.max", "67108864"), ("memory.swap.max", "0")]
    assert limit_files(1, "cpu", 0, 1 << 26) == [] and limit_files(2, "memory", 5, 0) == []


def test_limits_refused_where_no_cgroup_can_enforce_them() -> None:
    none = Cgroups(Layout(0))
    with pytest.raises(ExecError, match=r"^cannot enforce the task's memory limit: no cgroup memory controller"):
        none.create("t1", 0, 1 << 26)
    with pytest.raises(ExecError, match=r"^cannot enforce the task's CPU limit and memory limit: "):
        none.create("t1", 10**9, 1 << 26)
    assert none.create("t1", 0, 0) is None


def test_unwritable_hierarchy_refuses_limits_but_not_plain_tasks(tmp_path: Path) -> None:
    """A hierarchy whose directories cannot be created (here: a file stands where they go)."""
    blocked = tmp_path / "memory"
    blocked.write_text("")
    h = Hierarchy(1, frozenset({"memory"}), str(blocked), str(blocked))
    cgroups = Cgroups(Layout(1, {"memory": h}))
    with pytest.raises(ExecError, match=r"^cannot enforce the task's memory limit: cannot create a cgroup \("):
        cgroups.create("t1", 0, 1 << 26)
    assert cgroups.create("t1", 0, 0) is None


def test_v2_writes_limits_and_hands_controllers_down(tmp_path: Path) -> None:
    """cgroup v2 is not mounted with controllers on this host: its files are plain files here."""
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("")
    h = Hierarchy(2, frozenset({"cpu", "memory"}), str(root), str(root))
    cgroups = Cgroups(Layout(2, {"cpu": h, "memory": h}), parent="swarmd")
    (root / "swarmd").mkdir()
    (root / "swarmd" / "cgroup.subtree_control").write_text("")
    cg = cgroups.create("t1", 2 * 10**9, 1 << 27)
    assert cg is not None and cg.dirs == (str(root / "swarmd" / "t1"),)
    assert (root / "swarmd" / "t1" / "cpu.max").read_text() == "200000 100000"
    assert (root / "swarmd" / "t1" / "memory.max").read_text() == str(1 << 27)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert cg.procs_files == [os.path.join(cg.dirs[0], "cgroup.procs")]
    assert cg.oom_events_file.endswith("/swarmd/t1/memory.events")
    assert cgroups.existing("t1") == cg
