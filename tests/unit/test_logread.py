"""A task's log lines read back for ``service logs``: tail, since, partial lines, and following
across the shim's own rotation."""

from __future__ import annotations

from pathlib import Path

from swarmd.agent.exec.shim import MAX_LINE, LineFramer, RotatingLog, rfc3339_nano
from swarmd.agent.logread import MAX_LINE as MAX_SENT_LINE
from swarmd.agent.logread import Line, TaskLogReader, since_stamp

T0 = 1_767_323_045_000_000_000
SECOND = 1_000_000_000


def write(log: RotatingLog, stream: str, text: bytes, at: int = T0) -> None:
    log.write(LineFramer(stream.encode()).feed(text, rfc3339_nano(at)))


def texts(lines: list[Line]) -> list[tuple[str, bytes]]:
    return [(line.stream, line.data) for line in lines]


def reader(tmp_path: Path, tail: int = -1, since_ns: int = 0) -> TaskLogReader:
    return TaskLogReader("t1", tmp_path, tail, since_ns)


def test_backlog_is_every_line_in_order_with_its_stream(tmp_path: Path) -> None:
    log = RotatingLog(str(tmp_path / "output.log"), 1 << 20, 3)
    write(log, "stdout", b"hello\n")
    write(log, "stderr", b"err\n")
    write(log, "stdout", b"bye\n")
    assert texts(list(reader(tmp_path).backlog())) == [("stdout", b"hello"), ("stderr", b"err"), ("stdout", b"bye")]


def test_tail_counts_both_streams_across_rotated_files(tmp_path: Path) -> None:
    log = RotatingLog(str(tmp_path / "output.log"), 200, 3)  # a few records per file: rotates
    for i in range(12):
        write(log, "stdout" if i % 2 else "stderr", b"line %d\n" % i)
    assert len(list(tmp_path.glob("output.log*"))) == 3
    got = [line.data for line in reader(tmp_path, tail=3).backlog()]
    assert got == [b"line 9", b"line 10", b"line 11"]
    assert list(reader(tmp_path, tail=0).backlog()) == []
    assert len(list(reader(tmp_path, tail=1000).backlog())) == len(list(reader(tmp_path).backlog()))


def test_since_keeps_the_lines_from_then_on(tmp_path: Path) -> None:
    log = RotatingLog(str(tmp_path / "output.log"), 1 << 20, 3)
    for i in range(5):
        write(log, "stdout", b"at %d\n" % i, T0 + i * SECOND)
    assert [line.data for line in reader(tmp_path, since_ns=T0 + 3 * SECOND).backlog()] == [b"at 3", b"at 4"]
    assert since_stamp(T0 + 6) == "2026-01-02T03:04:05.000000006Z"
    assert since_stamp(0) == ""


def test_partial_records_are_joined_into_their_line(tmp_path: Path) -> None:
    log = RotatingLog(str(tmp_path / "output.log"), 1 << 20, 3)
    long = b"x" * (MAX_LINE * 2 + 10)
    write(log, "stdout", long + b"\nshort\n")
    assert [line.data for line in reader(tmp_path).backlog()] == [long, b"short"]


def test_a_line_longer_than_the_limit_is_sent_in_pieces(tmp_path: Path) -> None:
    log = RotatingLog(str(tmp_path / "output.log"), 1 << 22, 3)
    huge = b"y" * (MAX_SENT_LINE + 5)
    write(log, "stdout", huge + b"\n")
    assert [len(line.data) for line in reader(tmp_path).backlog()] == [MAX_SENT_LINE, 5]


def test_follow_sees_new_lines_and_survives_rotation(tmp_path: Path) -> None:
    log = RotatingLog(str(tmp_path / "output.log"), 300, 3)
    write(log, "stdout", b"before\n")
    r = reader(tmp_path, tail=10)
    assert [line.data for line in r.backlog()] == [b"before"]
    assert r.poll() == []
    seen: list[bytes] = []
    for i in range(20):  # several rotations, read now and then
        write(log, "stdout", b"after %d\n" % i)
        if i % 3 == 0:
            seen += [line.data for line in r.poll()]
    seen += [line.data for line in r.poll()]
    r.close()
    assert seen == [b"after %d" % i for i in range(20)]


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path: Path) -> None:
    r = reader(tmp_path)
    assert list(r.backlog()) == [] and r.poll() == []
    log = RotatingLog(str(tmp_path / "output.log"), 1 << 20, 3)
    write(log, "stderr", b"late\n")
    assert texts(r.poll()) == [("stderr", b"late")]
    r.close()


def test_garbage_and_an_unfinished_record_are_not_lines(tmp_path: Path) -> None:
    (tmp_path / "output.log").write_bytes(b"garbage\n" + rfc3339_nano(T0) + b" stdout F ok\n"
                                          + rfc3339_nano(T0) + b" stdout F unfini")
    r = reader(tmp_path)
    assert [line.data for line in r.backlog()] == [b"ok"]
    with (tmp_path / "output.log").open("ab") as f:
        f.write(b"shed\n")
    assert [line.data for line in r.poll()] == [b"unfinished"]
    r.close()


def test_tail_and_since_together_and_a_long_line_in_the_tail(tmp_path: Path) -> None:
    log = RotatingLog(str(tmp_path / "output.log"), 400, 4)
    for i in range(6):
        write(log, "stdout", b"at %d\n" % i, T0 + i * SECOND)
    long = b"z" * (MAX_LINE + 3)
    write(log, "stderr", long + b"\n", T0 + 6 * SECOND)
    got = [line.data for line in reader(tmp_path, tail=2, since_ns=T0 + 2 * SECOND).backlog()]
    assert got == [b"at 5", long]
    got = [line.data for line in reader(tmp_path, tail=10, since_ns=T0 + 4 * SECOND).backlog()]
    assert got == [b"at 4", b"at 5", long]
