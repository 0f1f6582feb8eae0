"""Docker Engines as the reference side of a bench: one dockerd per lab host (netlab.Lab), each
with its own data root, exec root, socket and containerd namespace under a private directory,
and no host networking changes (``--iptables=false --ip6tables=false --bridge=none``, vfs
storage). No registry is reachable, so the task image is a busybox-static rootfs made with
``docker import`` on one engine and copied to the others with ``docker save``/``docker load``
(the same image ID everywhere).

The engines' API is read over their unix sockets (the socket is a path, so it is reachable from
outside the namespace): polling costs a millisecond, not a CLI start.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

from clusterlib import PROCS, BenchError, kill_processes_naming
from netlab import Lab

DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else (shutil.which("docker") or "docker")
BUSYBOX = Path("/bin/busybox")
BUSYBOX_LINKS = ("sh", "sleep", "echo", "cat", "env", "true", "false", "ls", "ps", "hostname", "date")
IMAGE = "bb:latest"
API = "/v1.41"


class NotFound(BenchError):
    pass


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class Engine:
    """One dockerd in lab host ``host``."""

    def __init__(self, lab: Lab, host: int, root: Path) -> None:
        self.lab, self.host = lab, host
        self.root = root / f"docker{host}"
        self.sock = self.root / "docker.sock"
        self.ip = lab.ip(host)
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_id = ""

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        ns = f"{self.lab.name}{self.host}"
        self.proc = self.lab.spawn(self.host, [
            DOCKERD, "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
            "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
            "-H", f"unix://{self.sock}", "--pidfile", str(self.root / "dockerd.pid"),
            "--containerd-namespace", ns, "--containerd-plugins-namespace", f"{ns}p"],
            self.root / "dockerd.log")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"dockerd on {self.ip} exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/_ping")
                return
            except (OSError, http.client.HTTPException, BenchError):
                time.sleep(0.1)
        raise BenchError(f"dockerd on {self.ip} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join((self.root / "dockerd.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def get(self, path: str, **query: Any) -> Any:
        conn = _UnixHTTP(self.sock, timeout=10.0)
        try:
            qs = ("?" + urllib.parse.urlencode(query)) if query else ""
            conn.request("GET", API + path + qs)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status == 404:
            raise NotFound(f"GET {path}: {body[:200]!r}")
        if resp.status != 200:
            raise BenchError(f"GET {path}: {resp.status} {body[:200]!r}")
        return json.loads(body) if body and body != b"OK" else None

    def tasks(self, service: str) -> list[dict[str, Any]]:
        """The service's tasks; none once the service is gone."""
        try:
            rows: list[dict[str, Any]] = self.get("/tasks", filters=json.dumps({"service": {service: True}}))
        except NotFound:
            return []
        return rows

    def containers(self) -> int:
        return len(self.get("/containers/json", all="1"))

    def docker(self, *args: str, check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", *args], capture_output=True, input=stdin,
                           timeout=120)
        if check and r.returncode != 0:
            raise BenchError(f"docker {' '.join(args[:3])} on {self.ip}: {r.stderr.decode(errors='replace').strip()}")
        return r

    def cli(self, *args: str) -> list[str]:
        return [DOCKER, "-H", f"unix://{self.sock}", *args]

    def stop(self) -> None:
        if self.proc is not None:
            PROCS.stop(self.proc, grace=30.0)


def build_image(root: Path) -> Path:
    """A tar of a busybox-static rootfs: /bin/busybox and the links the tasks use."""
    if not BUSYBOX.exists():
        raise BenchError(f"{BUSYBOX} is missing (apt-get install -y busybox-static)")
    tree = root / "rootfs"
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    for name in BUSYBOX_LINKS:
        link = tree / "bin" / name
        if not link.exists():
            link.symlink_to("busybox")
    tar = root / "rootfs.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tar), "."], check=True, capture_output=True)
    return tar


class DockerSwarm:
    """Engine 0 inits (the manager), the others join as workers; every engine has the image."""

    def __init__(self, lab: Lab, hosts: list[int], root: Path) -> None:
        self.root = root
        self.engines = [Engine(lab, h, root) for h in hosts]

    @property
    def manager(self) -> Engine:
        return self.engines[0]

    def start(self) -> None:
        for e in self.engines:
            e.start()
        for e in self.engines:
            e.wait_ready()
        tar = build_image(self.root)
        self.manager.docker("import", "-c", "CMD [\"sh\"]", str(tar), IMAGE)
        saved = self.root / "image.tar"
        self.manager.docker("save", "-o", str(saved), IMAGE)
        for e in self.engines[1:]:
            e.docker("load", "-i", str(saved))
        m = self.manager
        m.docker("swarm", "init", "--advertise-addr", m.ip)
        token = m.docker("swarm", "join-token", "-q", "worker").stdout.decode().strip()
        for e in self.engines[1:]:
            e.docker("swarm", "join", "--token", token, "--advertise-addr", e.ip, f"{m.ip}:2377")
        for e in self.engines:
            e.node_id = e.get("/info")["Swarm"]["NodeID"]

    def stop(self) -> None:
        """Leave (the engines stop their containers), stop every dockerd by PID, then whatever
        of theirs outlived them (containerd shims naming this run's directory)."""
        for e in reversed(self.engines):
            if e.proc is not None and e.proc.poll() is None:
                try:
                    e.docker("swarm", "leave", "--force", check=False)
                except subprocess.TimeoutExpired:
                    pass
        for e in self.engines:
            e.stop()
        kill_processes_naming(self.root)
        unmount_under(self.root)


def unmount_under(root: Path) -> None:
    """Lazy-unmount what the engines mounted under ``root`` (network namespace files), deepest
    first, so that the directory can be removed."""
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    for p in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)
