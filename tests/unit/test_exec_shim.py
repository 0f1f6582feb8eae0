"""The shim's pure parts: status JSON, log records, rotation, exec error texts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from swarmd.agent.exec import logs
from swarmd.agent.exec.shim import (MAX_LINE, LineFramer, RotatingLog, exec_program, json_text, rfc3339_nano,
                                    start_ticks)

STAMP = b"2026-01-02T03:04:05.000000006Z"


@pytest.mark.parametrize("value", ["plain", 'q"uote', "back\\slash", "nl\nand\ttab", "\x00\x1f\x7f", "é ü 日本",
                                   "\udcff lone surrogate"])
def test_status_strings_survive_json(value: str) -> None:
    encoded = json_text({"error": value, "n": 3, "none": None, "yes": True, "no": False})
    decoded = json.loads(encoded)
    assert decoded == {"error": value, "n": 3, "none": None, "yes": True, "no": False}


def test_rfc3339_nano() -> None:
    assert rfc3339_nano(1_767_323_045_000_000_006) == STAMP


def test_lines_become_full_records() -> None:
    f = LineFramer(b"stdout")
    assert f.feed(b"one\ntwo\n", STAMP) == [STAMP + b" stdout F one\n", STAMP + b" stdout F two\n"]
    assert f.feed(b"", STAMP) == [] and f.flush(STAMP) == []


def test_a_line_split_across_reads_is_one_record() -> None:
    f = LineFramer(b"stderr")
    assert f.feed(b"hal", STAMP) == []
    assert f.feed(b"f\nrest", STAMP) == [STAMP + b" stderr F half\n"]
    assert f.flush(STAMP) == [STAMP + b" stderr F rest\n"]


def test_long_lines_become_partial_records() -> None:
    f = LineFramer(b"stdout")
    line = b"x" * (2 * MAX_LINE + 10)
    records = f.feed(line + b"\nshort\n", STAMP)
    assert [r.split(b" ", 3)[2] for r in records] == [b"P", b"P", b"F", b"F"]
    assert b"".join(r.split(b" ", 3)[3][:-1] for r in records[:3]) == line
    # An unfinished long line does not wait for its newline: memory stays bounded.
    assert f.feed(b"y" * (MAX_LINE + 1), STAMP) == [STAMP + b" stdout P " + b"y" * MAX_LINE + b"\n"]
    assert f.pending == b"y"


def test_empty_lines_are_kept() -> None:
    assert LineFramer(b"stdout").feed(b"\n\n", STAMP) == [STAMP + b" stdout F \n"] * 2


def test_rotation_keeps_at_most_n_files_of_at_most_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    log = RotatingLog(str(path), max_bytes=1000, max_files=3)
    framer = LineFramer(b"stdout")
    for i in range(200):
        log.write(framer.feed(b"line %05d\n" % i, STAMP))
    log.close()
    files = logs.log_files(tmp_path)
    assert [p.name for p in files] == ["output.log.2", "output.log.1", "output.log"]
    assert all(p.stat().st_size <= 1000 for p in files)
    lines = [r.data for r in logs.read_records(files)]
    assert lines[-1] == b"line 00199"  # the newest survive, in order
    assert lines == sorted(lines) and len(set(lines)) == len(lines)


def test_rotation_with_one_file_truncates(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    log = RotatingLog(str(path), max_bytes=100, max_files=1)
    for i in range(50):
        log.write([b"record %03d\n" % i])
    log.close()
    assert [p.name for p in logs.log_files(tmp_path)] == ["output.log"]
    assert path.stat().st_size <= 100 and path.read_bytes().endswith(b"record 049\n")


def test_reopened_log_continues_its_size(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    path.write_bytes(b"a" * 90 + b"\n")
    log = RotatingLog(str(path), max_bytes=100, max_files=2)
    log.write([b"b" * 20 + b"\n"])
    log.close()
    assert (tmp_path / "output.log.1").read_bytes() == b"a" * 90 + b"\n"


def test_record_parsing() -> None:
    r = logs.parse_record(STAMP + b" stderr P some bytes ")
    assert r == logs.LogRecord(STAMP.decode(), "stderr", True, b"some bytes ")
    assert logs.parse_record(STAMP + b" stdout F ") == logs.LogRecord(STAMP.decode(), "stdout", False, b"")
    assert logs.parse_record(b"garbage") is None
    assert logs.parse_record(STAMP + b" stdin F x") is None


def test_log_files_order_ignores_strangers(tmp_path: Path) -> None:
    for name in ["output.log", "output.log.1", "output.log.10", "output.log.2", "output.log.tmp", "output.log.0"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in logs.log_files(tmp_path)] == ["output.log.10", "output.log.2", "output.log.1", "output.log"]


def test_exec_errors_in_runc_words(tmp_path: Path) -> None:
    """Only failures are tried here: exec_program replaces the process when it succeeds."""
    env = {"PATH": f"{tmp_path}:/nonexistent-dir"}
    assert exec_program("/nonexistent", [], env) == 'exec: "/nonexistent": stat /nonexistent: no such file or directory'
    assert exec_program("no-such-prog", [], env) == 'exec: "no-such-prog": executable file not found in $PATH'
    plain = tmp_path / "data"
    plain.write_text("not a program")
    os.chmod(plain, 0o644)
    if os.geteuid() != 0:  # root may exec any file with an x bit, and reads past the missing one
        assert exec_program(str(plain), [], env) == f'exec: "{plain}": permission denied'
    assert exec_program("data", [], env) == 'exec: "data": executable file not found in $PATH'
    assert exec_program(str(tmp_path), [], env) == f'exec: "{tmp_path}": permission denied'


def test_start_ticks_name_one_process() -> None:
    mine = start_ticks(os.getpid())
    assert isinstance(mine, int) and mine == start_ticks(os.getpid())
    assert start_ticks(2**22 + 12345) is None  # above pid_max
