"""Services and tasks between the store (typed JSON dicts) and the wire (``services.proto``).

The proto mirrors the store objects field for field (same names, durations in nanoseconds), so
the conversion walks the message descriptor instead of naming each field: a field added to
both shapes converts without a change here.

On the way in (a spec a client sent), a field left unset is left out of the dict, so that
``specs.normalize`` fills in Docker's default: a field with presence (``optional``) counts as
set when the client set it, even to zero (``--replicas 0``); any other field counts as set
when it is not its zero value (``mode: ""`` means the default mode, not a mode named "").
On the way out, store keys the wire does not carry (``spec_version``, ``applied_at``) are
dropped, and absent objects (no previous spec) stay unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message

from swarmd.api.swarm.v1 import services_pb2 as spb
from swarmd.store.objects import Service, Task


def _is_map(field: Any) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _repeated(field: Any) -> bool:
    return bool(field.is_repeated)


def to_dict(msg: Message) -> dict[str, Any]:
    """What a client set in ``msg`` (see the module docstring), as the store's shape."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if _is_map(field):
            if value:
                out[field.name] = dict(value)
        elif _repeated(field):
            if value:
                out[field.name] = [to_dict(v) if field.message_type else v for v in value]
        elif field.message_type is not None:
            if msg.HasField(field.name):
                out[field.name] = to_dict(value)
        elif field.has_presence:
            if msg.HasField(field.name):
                out[field.name] = value
        elif value != field.default_value:
            out[field.name] = value
    return out


def fill(msg: Message, obj: Mapping[str, Any]) -> Message:
    """Set ``msg`` from a store object; keys the message has no field for are skipped, and
    None leaves a field unset."""
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in obj.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        if _is_map(field):
            getattr(msg, key).update({str(k): str(v) for k, v in value.items()})
        elif _repeated(field):
            target = getattr(msg, key)
            if field.message_type is not None:
                for item in value:
                    fill(target.add(), item)
            else:
                target.extend(value)
        elif field.message_type is not None:
            fill(getattr(msg, key), value)
        else:
            setattr(msg, key, value)
    return msg


def service(obj: Service, counts: tuple[int, int, int] | None = None) -> spb.Service:
    """A service; ``counts`` is (running, desired, completed) when listing (Docker's ServiceStatus)."""
    msg = spb.Service()
    fill(msg, obj)
    if counts is not None:
        msg.running_tasks, msg.desired_tasks, msg.completed_tasks = counts
    return msg


def task(obj: Task, node_hostname: str = "") -> spb.Task:
    msg = spb.Task()
    fill(msg, obj)
    msg.node_hostname = node_hostname
    return msg


def spec_dict(msg: spb.ServiceSpec) -> dict[str, Any]:
    """A spec as sent, for ``validate.service_spec``."""
    return to_dict(msg)
