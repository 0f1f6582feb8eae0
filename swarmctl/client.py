"""The connection to a daemon: the local control socket, or a manager's 2377 with a certificate.

Every gRPC failure becomes one ``CLIError`` with Docker's rendering, so no traceback reaches
the user. grpc is imported at the first call, not with the CLI: ``--help``, ``--version`` and
flag errors never load it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmctl import tlsfiles
from swarmctl.errors import CLIError
from swarmd import paths

if TYPE_CHECKING:
    import grpc

    from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc

CALL_TIMEOUT = 60.0
ENV_HOST = "SWARMCTL_HOST"


@dataclass(frozen=True)
class Target:
    host: str                     # unix:///path or tcp://host:port
    tlscacert: Path | None = None
    tlscert: Path | None = None
    tlskey: Path | None = None

    @property
    def is_unix(self) -> bool:
        return self.host.startswith("unix://")


def default_host() -> str:
    return os.environ.get(ENV_HOST) or f"unix://{paths.default_control_socket()}"


def normalise_host(host: str) -> str:
    if host.startswith(("unix://", "tcp://")):
        return host
    if host.startswith("/"):
        return f"unix://{host}"
    raise CLIError(f"invalid -H value {host!r}: use unix:///path/to/swarmd.sock or tcp://HOST:2377")


# Answers may be large (a list of 10,000 nodes is over 10 MiB); as Docker does for list
# responses, the CLI takes them whole. What it sends stays under gRPC's 4 MiB default.
MAX_ANSWER_BYTES = 256 << 20
_OPTIONS = [("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]


class Client:
    def __init__(self, target: Target) -> None:
        self.target = target
        self._channel: grpc.Channel | None = None

    def _connect(self) -> grpc.Channel:
        import grpc

        if self._channel is not None:
            return self._channel
        t = self.target
        if t.is_unix:
            self._channel = grpc.insecure_channel(f"unix:{t.host[len('unix://'):]}", options=_OPTIONS)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tlsfiles.read(t.tlscacert, "--tlscacert"),
                private_key=tlsfiles.read_key(t.tlskey),
                certificate_chain=tlsfiles.read(t.tlscert, "--tlscert"))
            # Managers' certificates carry the SAN swarm-manager, not the host name.
            self._channel = grpc.secure_channel(t.host[len("tcp://"):], creds,
                                                options=[("grpc.ssl_target_name_override", "swarm-manager"), *_OPTIONS])
        return self._channel

    @property
    def control(self) -> pb_grpc.ControlStub:
        from swarmd.api.swarm.v1 import swarm_pb2_grpc as pb_grpc

        return pb_grpc.ControlStub(self._connect())

    def call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """Call Control.<method>; translate failures into Docker's error lines."""
        import grpc

        try:
            return getattr(self.control, method)(request, timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as e:
            raise self._translate(e) from None

    def stream(self, method: str, request: Any) -> Any:
        """Open a server stream Control.<method> (no deadline: ``service logs -f`` lasts until
        interrupted). Iterating it raises grpc.RpcError; ``translate`` words it."""
        return getattr(self.control, method)(request, wait_for_ready=False)

    def translate(self, e: grpc.RpcError) -> CLIError:
        return self._translate(e)

    def _translate(self, e: grpc.RpcError) -> CLIError:
        import grpc

        code = e.code() if hasattr(e, "code") else None
        details = e.details() if hasattr(e, "details") else str(e)
        if code == grpc.StatusCode.UNAVAILABLE:  # the daemon never answers UNAVAILABLE itself
            if self.target.is_unix:
                return CLIError(f"Cannot connect to the swarmd daemon at {self.target.host}. "
                                "Is the swarmd daemon running?")
            return CLIError(f"Cannot connect to the swarmd daemon at {self.target.host}: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CLIError(f"Error response from daemon: timed out waiting for {self.target.host}")
        return CLIError(f"Error response from daemon: {details}", code=code.name if code is not None else "")

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

