"""packaging/systemd/swarmd.service: the keys the daemon's behaviour relies on, and a clean
``systemd-analyze verify`` of the unit pointed at this environment's real ``swarmd``."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "swarmd.service"
INSTALLED_SWARMD = "/usr/local/bin/swarmd"
VENV_SWARMD = Path(sys.executable).parent / "swarmd"
VERIFY_TIMEOUT = 60


def load_unit(text: str | None = None) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",),
                                       comment_prefixes=("#", ";"), empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(text if text is not None else UNIT.read_text())
    return parser


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    return load_unit()


def exec_start(unit: configparser.ConfigParser) -> list[str]:
    return shlex.split(unit["Service"]["ExecStart"])


def test_sections(unit: configparser.ConfigParser) -> None:
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert unit["Unit"]["Description"]


def test_notify_lifecycle(unit: configparser.ConfigParser) -> None:
    svc = unit["Service"]
    assert svc["Type"] == "notify"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["Restart"] == "on-failure"
    for key in ("RestartSec", "TimeoutStartSec", "TimeoutStopSec"):
        assert re.fullmatch(r"\d+(s|min)?", svc[key]), (key, svc[key])
    assert svc["EnvironmentFile"] == "-/etc/default/swarmd"


def test_exec_start_uses_the_system_paths(unit: configparser.ConfigParser) -> None:
    argv = exec_start(unit)
    assert argv[0] == INSTALLED_SWARMD
    flags = dict(zip(argv[1::2], argv[2::2]))
    assert flags["--state-dir"] == "/var/lib/swarmd"
    assert flags["--control-socket"] == "/run/swarmd/swarmd.sock"
    # The comment next to ExecStart tells venv installs to adjust the path.
    lines = UNIT.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("ExecStart="))
    assert any("venv" in line.lower() or "virtualenv" in line.lower() for line in lines[max(0, at - 4):at])


def test_state_and_runtime_directories(unit: configparser.ConfigParser) -> None:
    svc = unit["Service"]
    assert svc["StateDirectory"] == "swarmd" and svc["StateDirectoryMode"] == "0700"
    assert svc["RuntimeDirectory"] == "swarmd" and svc["RuntimeDirectoryMode"] == "0700"
    assert svc["UMask"] == "0077"
    assert int(svc["LimitNOFILE"]) >= 4096


def test_tasks_outlive_a_restart(unit: configparser.ConfigParser) -> None:
    # The default KillMode (control-group) would kill every task's supervisor with the daemon.
    assert unit["Service"]["KillMode"] == "process"
    assert unit["Service"]["Delegate"] == "yes"


def test_no_core_files(unit: configparser.ConfigParser) -> None:
    # The process holds the CA key, the Raft data key and the unlock key.
    assert unit["Service"]["LimitCORE"] == "0"


def test_hardening(unit: configparser.ConfigParser) -> None:
    svc = unit["Service"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "RestrictNamespaces", "LockPersonality"):
        assert svc[key] == "yes", key
    # Task cgroups are made under /sys/fs/cgroup: a read-only mount would reject every limit.
    assert svc["ProtectControlGroups"] == "no"
    assert svc["ProtectSystem"] == "strict"
    assert svc["SystemCallArchitectures"] == "native"
    # The daemon reads interface addresses over rtnetlink: AF_NETLINK must stay allowed.
    assert set(svc["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # Not enabled: some Python C extensions need writable+executable memory.
    assert "MemoryDenyWriteExecute" not in svc


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; cannot verify the unit file")
    if not VENV_SWARMD.is_file():
        pytest.skip(f"no swarmd entry point at {VENV_SWARMD}; install the project into this environment")
    text = UNIT.read_text()
    assert text.count(INSTALLED_SWARMD) == 1
    copy = tmp_path / "swarmd.service"
    copy.write_text(text.replace(INSTALLED_SWARMD, str(VENV_SWARMD)))
    assert exec_start(load_unit(copy.read_text()))[0] == str(VENV_SWARMD)
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                       timeout=VERIFY_TIMEOUT, check=False)
    output = r.stdout + r.stderr
    about_unit = [line for line in output.splitlines() if "swarmd.service" in line]
    assert not about_unit, f"systemd-analyze verify complained about the unit:\n{output}"
    assert r.returncode == 0, f"systemd-analyze verify exited {r.returncode}:\n{output}"
