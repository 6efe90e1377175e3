"""Workload logs: the record format, cutting streams into records, rotation, --since, reading."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from executor import logfile
from executor.logfile import Limits, LogFile, Record, Splitter

NOW = "2026-12-04T10:00:00.123456789Z"


def texts(path: Path, **options: object) -> bytes:
    records = logfile.read(path, **options)  # type: ignore[arg-type]
    return b"".join(logfile.render(records, timestamps=False))


def test_timestamps_are_rfc3339_utc_with_nine_digits_and_parse_back() -> None:
    """A time written into a record parses back to the same nanosecond."""
    ns = 1796378400_123456789  # 2026-12-04T10:00:00.123456789Z
    assert logfile.timestamp(ns) == NOW
    assert logfile.parse_time(NOW) == ns
    assert logfile.parse_time("2026-12-04T11:00:00.5+01:00") == 1796378400_500000000
    assert logfile.timestamp(0) == "1970-01-01T00:00:00.000000000Z"


def test_since_takes_durations_and_rfc3339_times() -> None:
    """--since 10m is ten minutes before now; 1h30m adds up; a time is taken as written."""
    now = logfile.parse_time(NOW)
    assert logfile.parse_since("10m", now) == now - 600 * 10**9
    assert logfile.parse_since("1h30m", now) == now - 5400 * 10**9
    assert logfile.parse_since("1.5s", now) == now - 1_500_000_000
    assert logfile.parse_since("250ms", now) == now - 250_000_000
    assert logfile.parse_since("2d", now) == now - 2 * 86400 * 10**9
    assert logfile.parse_since("2026-12-04T09:00:00Z", now) == now - 3600 * 10**9 - 123456789
    assert logfile.parse_since("2026-12-04", now) == logfile.parse_time("2026-12-04T00:00:00Z")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("yesterday", "neither a duration nor a time"),
        ("10", "neither a duration nor a time"),
        ("10 m", "neither a duration nor a time"),
        ("-5m", "neither a duration nor a time"),
        ("2026-12-04T10:00:00", "names no time zone"),
        ("", "neither a duration nor a time"),
    ],
)
def test_a_bad_since_says_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        logfile.parse_since(text, 0)
    assert "10m" in str(caught.value) or "+01:00" in str(caught.value)


def test_records_parse_back_and_other_lines_are_plain_text() -> None:
    """Binary bytes, spaces and an empty text survive; a line from before records is text."""
    line = logfile.encode(NOW, "stderr", True, b"a b\r\x00\xff")
    assert line.endswith(b"\n")
    assert logfile.parse_line(line[:-1]) == Record(NOW, "stderr", True, b"a b\r\x00\xff")
    assert logfile.parse_line(logfile.encode(NOW, "stdout", False, b"")[:-1]).text == b""
    assert logfile.parse_line(b"plain old line") == Record(None, "stdout", False, b"plain old line")
    assert logfile.parse_line(b"x stdout F y").time is None


def test_the_splitter_cuts_at_newlines_and_keeps_the_unfinished_rest() -> None:
    split = Splitter("stdout")
    assert split.feed(b"one\ntw", NOW) == [logfile.encode(NOW, "stdout", False, b"one")]
    assert split.feed(b"o\n\nthr", NOW) == [
        logfile.encode(NOW, "stdout", False, b"two"),
        logfile.encode(NOW, "stdout", False, b""),
    ]
    assert split.flush(NOW, ends=False) == [logfile.encode(NOW, "stdout", True, b"thr")]
    assert split.feed(b"ee", NOW) == []
    assert split.flush(NOW, ends=True) == [logfile.encode(NOW, "stdout", False, b"ee")]
    assert split.flush(NOW, ends=True) == []


def test_a_very_long_line_becomes_fragments_that_join_back() -> None:
    """A line of 2.5 MAX_LINE is three records, P P F, whose texts join to the line."""
    line = bytes(range(256)).replace(b"\n", b"") * (logfile.MAX_LINE * 5 // 2 // 255 + 1)
    line = line[: logfile.MAX_LINE * 5 // 2]
    split = Splitter("stdout")
    records = split.feed(line[:1000], NOW) + split.feed(line[1000:] + b"\n", NOW)
    parsed = [logfile.parse_line(r[:-1]) for r in records]
    assert [r.partial for r in parsed] == [True, True, False]
    assert all(len(r.text) <= logfile.MAX_LINE for r in parsed)
    assert b"".join(r.text for r in parsed) == line
    assert b"".join(logfile.render(iter(parsed), timestamps=False)) == line + b"\n"


def test_rotated_files_are_named_and_listed_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "service.web.log"
    assert logfile.rotated(path, 2).name == "service.web.log.2"
    for name in ("service.web.log", "service.web.log.1", "service.web.log.2"):
        (tmp_path / name).write_text("")
    # A gap (a rotation renaming files one by one, or a lower log_max_files) hides nothing.
    (tmp_path / "service.web.log.4").write_text("")
    (tmp_path / "service.web.log.x").write_text("")  # not one of its files
    assert [p.name for p in logfile.files(path)] == [
        "service.web.log.4",
        "service.web.log.2",
        "service.web.log.1",
        "service.web.log",
    ]
    logfile.remove(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["service.web.log.x"]


def test_rotation_keeps_max_files_and_reads_back_in_order(tmp_path: Path) -> None:
    """Records of 20 bytes into files of at most 100: each file holds whole records, at most
    two old files stay, and reading gives the newest records in the order written."""
    path = tmp_path / "job.x.log"
    log = LogFile(path, Limits(max_size=100, max_files=2))
    records = [logfile.encode(NOW, "stdout", False, b"%03d" % i) for i in range(30)]
    for record in records:
        log.write([record])
    log.close()

    assert [p.name for p in logfile.files(path)] == ["job.x.log.2", "job.x.log.1", "job.x.log"]
    assert all(p.stat().st_size <= 100 for p in logfile.files(path))
    lines = texts(path).split()
    assert lines == [b"%03d" % i for i in range(int(lines[0]), 30)]
    assert len(lines) > 2 * (100 // len(records[0]))


def test_since_filters_records_and_skips_lines_without_time(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(
        b"untimed\n"
        + logfile.encode("2026-12-04T09:00:00.000000000Z", "stdout", False, b"old")
        + logfile.encode("2026-12-04T10:00:00.000000000Z", "stderr", False, b"new")
    )
    assert texts(path) == b"untimed\nold\nnew\n"
    assert texts(path, since="2026-12-04T09:30:00.000000000Z") == b"new\n"
    stamped = b"".join(logfile.render(logfile.read(path), timestamps=True))
    assert stamped.splitlines()[1:] == [
        b"2026-12-04T09:00:00.000000000Z old",
        b"2026-12-04T10:00:00.000000000Z new",
    ]


def test_follow_goes_on_across_rotations(tmp_path: Path) -> None:
    """A follower sees every record once and in order while the writer rotates under it."""
    path = tmp_path / "service.s.log"
    log = LogFile(path, Limits(max_size=200, max_files=50))
    log.write([logfile.encode(NOW, "stdout", False, b"first")])
    seen: list[bytes] = []

    def follow() -> None:
        for record in logfile.read(path, follow=True):
            seen.append(record.text)
            if record.text == b"last":
                return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    for i in range(100):
        log.write([logfile.encode(NOW, "stdout", False, b"n%02d" % i)])
        if i % 10 == 0:
            time.sleep(0.05)
    log.write([logfile.encode(NOW, "stdout", False, b"last")])
    log.close()
    reader.join(10)

    assert not reader.is_alive()
    assert seen == [b"first", *(b"n%02d" % i for i in range(100)), b"last"]
    assert len(logfile.files(path)) > 10


def test_append_output_writes_a_final_line_without_newline_whole(tmp_path: Path) -> None:
    path = tmp_path / "wasm.w.log"
    logfile.append_output(path, "stdout", b"hello\nno newline")
    logfile.append_output(path, "stderr", b"")
    records = list(logfile.read(path))
    assert [(r.stream, r.partial, r.text) for r in records] == [
        ("stdout", False, b"hello"),
        ("stdout", False, b"no newline"),
    ]


def test_a_since_before_1970_means_from_the_start() -> None:
    assert logfile.parse_since("99999999999999999999d", 10**18) == 0
    assert logfile.timestamp(0).startswith("1970-01-01T00:00:00")


def test_reading_without_follow_stops_at_what_the_log_held(tmp_path: Path) -> None:
    """A log that grows while it is read: what was there when reading began, no more."""
    path = tmp_path / "w.log"
    log = logfile.LogFile(path, logfile.Limits(max_size=4096, max_files=2))
    line = logfile.encode(logfile.timestamp(1), "stdout", False, b"x" * 50)
    for _ in range(100):
        log.write([line])
    reader = logfile.read(path)
    first = next(reader)
    for _ in range(1000):  # rotates several times while the reader is at its first record
        log.write([logfile.encode(logfile.timestamp(2), "stdout", False, b"late")])
    log.close()
    rest = list(reader)
    assert first.text == b"x" * 50
    assert {r.text for r in rest} == {b"x" * 50}


def test_a_snapshot_of_a_log_rotating_under_it_is_whole_and_in_order(tmp_path: Path) -> None:
    """A writer rotating files of 1 KiB as fast as it can; every read without follow gives
    consecutive numbers, each record whole, however the names shift while it opens them."""
    path = tmp_path / "busy.log"
    log = logfile.LogFile(path, logfile.Limits(max_size=1024, max_files=2))
    stop = threading.Event()

    def write() -> None:
        number = 0
        while not stop.is_set():
            batch = [
                logfile.encode(logfile.timestamp(1), "stdout", False, b"%d" % (number + i))
                for i in range(7)
            ]
            log.write(batch)
            number += 7

    writer = threading.Thread(target=write)
    writer.start()
    try:
        snapshots = [[int(r.text) for r in logfile.read(path)] for _ in range(300)]
    finally:
        stop.set()
        writer.join()
        log.close()
    for numbers in snapshots:
        assert not numbers or numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_a_record_in_the_making_is_left_out_but_a_plain_last_line_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.write_bytes(
        logfile.encode(logfile.timestamp(1_000), "stdout", False, b"first") + b"2026-12-04T10:00"
    )
    assert [r.text for r in logfile.read(path)] == [b"first"]
    plain = tmp_path / "plain.log"
    plain.write_bytes(b"old line\nno newline")  # written before records: kept whole
    assert [r.text for r in logfile.read(plain)] == [b"old line", b"no newline"]
