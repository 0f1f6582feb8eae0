"""``service logs``' output, byte for byte as Docker 20.10 prints it (services-transcripts §9),
and its ``--tail``/``--since`` values."""

from __future__ import annotations

import datetime

import pytest

from swarmctl.errors import CLIError
from swarmctl.logopts import parse_since, parse_tail
from swarmctl.render_service import LogStyle, log_line, log_prefix
from swarmd.api.swarm.v1 import services_pb2 as spb

TASK = spb.LogTask(task_id="u4w7z52lc04dwap55gv9ah9ts", service_id="kjmlxdjesy652xtddvo3wrxof",
                   service_name="logger", slot=2, node_id="feexq98l5h6j16rtvyr6vbxg7", node_hostname="node2")
LINE = spb.LogMessage(task_id=TASK.task_id, timestamp="2026-12-01T17:26:14.590120225Z", stream="stdout",
                      data=b"out line 47")


def line(style: LogStyle, task: spb.LogTask = TASK, width: int = 1) -> bytes:
    return log_line(log_prefix(task, width, style), LINE, style)


def test_dockers_default_prefix() -> None:
    assert line(LogStyle()) == b"logger.2.u4w7z52lc04d@node2    | out line 47\n"


def test_timestamps_come_first() -> None:
    assert line(LogStyle(timestamps=True)) == b"2026-12-01T17:26:14.590120225Z logger.2.u4w7z52lc04d@node2    | out line 47\n"


def test_no_task_ids_no_trunc_no_resolve_raw() -> None:
    assert line(LogStyle(task_ids=False)) == b"logger.2@node2    | out line 47\n"
    assert line(LogStyle(trunc=False)) == b"logger.2.u4w7z52lc04dwap55gv9ah9ts@node2    | out line 47\n"
    assert line(LogStyle(resolve=False)) == (b"kjmlxdjesy652xtddvo3wrxof.2.u4w7z52lc04d@feexq98l5h6j16rtvyr6vbxg7"
                                             b"    | out line 47\n")
    assert line(LogStyle(raw=True)) == b"out line 47\n"


def test_one_extra_space_per_digit_the_slot_is_shorter() -> None:
    ten = spb.LogTask(task_id="yv51d31m7381xxxxxxxxxxxxx", service_name="ten", slot=1, node_hostname="mgr")
    tenth = spb.LogTask(task_id="m1epxzlfoeikxxxxxxxxxxxxx", service_name="ten", slot=10, node_hostname="node2")
    assert log_prefix(ten, 2, LogStyle()) == b"ten.1.yv51d31m7381@mgr     | "
    assert log_prefix(tenth, 2, LogStyle()) == b"ten.10.m1epxzlfoeik@node2    | "
    assert log_prefix(ten, 2, LogStyle(task_ids=False)) == b"ten.1@mgr     | "
    glob = spb.LogTask(task_id="eg4cfw1pxbczxxxxxxxxxxxxx", service_name="glog", slot=0, node_hostname="node2")
    assert log_prefix(glob, 1, LogStyle()) == b"glog.0.eg4cfw1pxbcz@node2    | "


def test_a_node_without_a_hostname_is_named_by_its_id() -> None:
    task = spb.LogTask(task_id="a" * 25, service_name="s", slot=1, node_id="n" * 25)
    assert log_prefix(task, 1, LogStyle()) == b"s.1." + b"a" * 12 + b"@" + b"n" * 25 + b"    | "


@pytest.mark.parametrize(("value", "expected"), [("all", -1), ("", -1), ("0", 0), ("25", 25), ("-3", -1)])
def test_tail(value: str, expected: int) -> None:
    assert parse_tail(value) == expected


def test_a_bad_tail_is_one_line() -> None:
    with pytest.raises(CLIError) as e:
        parse_tail("ten")
    assert "\n" not in e.value.message and "tail" in e.value.message


NOW = 1_767_323_045_000_000_000


@pytest.mark.parametrize(("value", "expected"), [
    ("", 0),
    ("2s", NOW - 2_000_000_000),
    ("42m", NOW - 42 * 60 * 1_000_000_000),
    ("1767323045", 1_767_323_045_000_000_000),
    ("1767323045.5", 1_767_323_045_500_000_000),
    ("2026-01-02T03:04:05Z", 1_767_323_045_000_000_000),
    ("2026-01-02T03:04:05.25Z", 1_767_323_045_250_000_000),
    ("2026-01-02T04:04:05+01:00", 1_767_323_045_000_000_000),
])
def test_since(value: str, expected: int) -> None:
    assert parse_since(value, NOW) == expected


def test_since_without_a_zone_is_local_time() -> None:
    local = datetime.datetime(2026, 1, 2, 3, 4, 5).astimezone()
    assert parse_since("2026-01-02T03:04:05", NOW) == int(local.timestamp()) * 1_000_000_000


def test_a_bad_since_is_one_line() -> None:
    with pytest.raises(CLIError) as e:
        parse_since("yesterday", NOW)
    assert e.value.message == ('Error response from daemon: invalid value for "since": failed to parse value '
                               'as time or duration: "yesterday"')


def test_details_adds_the_empty_attributes_and_their_space() -> None:
    assert line(LogStyle(details=True)) == b"logger.2.u4w7z52lc04d@node2    |  out line 47\n"
