"""Files in the spool folder that are not its own segments (eventlog/spool.py): symbolic links, files named otherwise,
and lines that are no event. Nothing outside the spool may be read as events, changed or deleted, and `dropped` counts
only events lost (README "Prediction logging")."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import re
import stat
import time
from pathlib import Path

import pytest

from app.events import TAG
from eventlog.records import encode_line
from eventlog.spool import DESTINATION_PREFIX, Spool
from tests.app.conftest import Counts
from tests.app.test_events_fluentd import fluent_sink, received_ids, wait_until
from tests.app.test_events_spool import drain, refused_start_log
from tests.app.test_events_spool import line as spool_line


def line(i: int) -> bytes:
    """An event of ~70 bytes: a few to a segment of these tests' size."""
    return spool_line(i, padding=40)


def foreign_file(folder: Path, name: str = "foreign.jsonl") -> Path:
    """A file outside the spool holding lines that look like events (another spool's, an exported log)."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(b"".join(encode_line({"event_id": f"foreign-{i}", "i": 1000 + i}) for i in range(5)))
    old = time.time() - 3600
    os.utime(path, (old, old))
    return path


def untouched(path: Path, content: bytes) -> bool:
    return path.read_bytes() == content and path.stat().st_mtime < time.time() - 1000


def mentions(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if name in r.getMessage()]


@pytest.mark.parametrize("link_kind", ["symbolic", "hard"])
def test_a_segment_linked_to_a_file_outside_is_left_alone_and_reported_once(tmp_path: Path, caplog,
                                                                           link_kind: str) -> None:
    """Before, a link named as a segment was claimed like one: the file it names was read and its lines sent as
    events (or counted as dropped by the limit), and the link deleted. A hard link (a second name for a file
    elsewhere, made by whoever can write to the spool folder; found in review) is not seen by O_NOFOLLOW: it is a
    name like any other, told by its link count."""
    spool_dir, target = tmp_path / "spool", foreign_file(tmp_path / "outside")
    content = target.read_bytes()
    spool_dir.mkdir()
    link = spool_dir / f"{1:020d}-1-0.jsonl"  # named as the oldest segment
    if link_kind == "symbolic":
        link.symlink_to(target)
    else:
        os.link(target, link)
    counts = Counts()
    spool = Spool(spool_dir, max_bytes=10**9, segment_max_bytes=500, count=counts)
    for i in range(20):
        spool.append(line(i))
    spool.close()
    assert drain(spool) == list(range(20))  # ours, and not one of the target's lines
    for i in range(20, 40):
        spool.append(line(i))
    spool.close()
    spool.max_bytes = 0
    assert spool.enforce_limit() == 20 and counts["dropped"] == 20  # ours only
    spool.enforce_limit()
    assert os.path.samefile(link, target) and untouched(target, content)
    reported = mentions(caplog, link.name)
    assert len(reported) == 1, reported
    if link_kind == "symbolic":
        assert link.is_symlink() and "symbolic link" in reported[0] and str(target) in reported[0], reported
    else:
        assert "a hard link (2 names" in reported[0], reported


def test_a_dangling_link_is_left_alone_and_reported_once_by_the_limit_check(tmp_path: Path, caplog) -> None:
    """Before, it was skipped silently by every limit check (its size could not be read) and by claims."""
    dangling = tmp_path / f"{1:020d}-1-0.jsonl"
    dangling.symlink_to(tmp_path.parent / "not-there" / "segment.jsonl")
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=500, count=Counts())
    for _ in range(3):
        spool.enforce_limit()
    assert dangling.is_symlink() and not dangling.exists()
    reported = mentions(caplog, dangling.name)
    assert len(reported) == 1 and "symbolic link" in reported[0], reported


def test_a_link_to_a_folder_of_segments_is_left_alone(tmp_path: Path, caplog) -> None:
    """A folder of another spool (a worker's, a restored copy) linked in under a segment's name: its segments are
    neither sent nor dropped nor deleted."""
    other = tmp_path / "other-spool"
    theirs = foreign_file(other, f"{5:020d}-9-0.jsonl")
    content = theirs.read_bytes()
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    link = spool_dir / f"{1:020d}-1-0.jsonl"
    link.symlink_to(other, target_is_directory=True)
    counts = Counts()
    spool = Spool(spool_dir, max_bytes=0, segment_max_bytes=500, count=counts)
    spool.append(line(1))
    spool.close()
    assert spool.enforce_limit() == 1 and drain(spool) == []
    assert link.is_symlink() and untouched(theirs, content) and counts["dropped"] == 1
    assert len(mentions(caplog, link.name)) == 1


def test_an_orphan_that_is_a_link_is_left_alone_and_its_target_kept(tmp_path: Path, caplog) -> None:
    """A `.new` name is an orphan's (a process died before naming its segment) and is removed after 60 s: a link
    under such a name was judged by its target's age."""
    target = foreign_file(tmp_path / "outside")
    content = target.read_bytes()
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    orphan, dangling = spool_dir / f"{1:020d}-1-0.new", spool_dir / f"{2:020d}-1-0.new"
    orphan.symlink_to(target)
    dangling.symlink_to(tmp_path / "not-there")
    for link in (orphan, dangling):
        os.utime(link, (time.time() - 120, time.time() - 120), follow_symlinks=False)
    spool = Spool(spool_dir, max_bytes=10**6, segment_max_bytes=10**5, count=Counts())
    for _ in range(3):
        spool.enforce_limit()
    assert orphan.is_symlink() and dangling.is_symlink() and untouched(target, content)
    for link in (orphan, dangling):
        reported = mentions(caplog, link.name)
        assert len(reported) == 1 and "symbolic link" in reported[0], reported


def destination_file(destination: str) -> str:
    return DESTINATION_PREFIX + hashlib.sha256(destination.encode()).hexdigest()[:16]


@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_a_destination_file_that_is_a_link_stops_the_start_and_nothing_outside_is_written(
        tmp_path: Path, dangling: bool) -> None:
    """Before, the server wrote its Fluentd's address over the start of the linked file (a file of the app's user
    anywhere), or made the file a dangling link named."""
    spool_dir, outside = tmp_path / "spool", tmp_path / "outside"
    spool_dir.mkdir()
    outside.mkdir()
    target = outside / "precious.txt"
    if not dangling:
        target.write_text("precious content that must stay\n")
    destination = "Fluentd at 127.0.0.1:1"
    (spool_dir / destination_file(destination)).symlink_to(target)
    spool = Spool(spool_dir, 10**9, 10**6, Counts())
    name = destination_file(destination)
    with pytest.raises(OSError, match=rf"event spool {re.escape(str(spool_dir))}: {name}, .* is a symbolic link to "
                                      rf"{re.escape(str(target))}.* remove it"):
        spool.hold_destination(destination)
    assert (target.read_text() == "precious content that must stay\n") if not dangling else not target.exists()
    assert sorted(p.name for p in outside.iterdir()) == ([] if dangling else ["precious.txt"])


def test_another_destinations_link_is_neither_followed_nor_removed(tmp_path: Path, caplog) -> None:
    """A `.destination-*` file no process holds is a stopped server's and is removed; one that is a link was opened
    (flocked: its target's lock taken) through the link."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    target = foreign_file(tmp_path / "outside")
    content = target.read_bytes()
    link = spool_dir / destination_file("Fluentd at 127.0.0.1:2")
    link.symlink_to(target)
    Spool(spool_dir, 10**9, 10**6, Counts()).hold_destination("Fluentd at 127.0.0.1:1")
    assert link.is_symlink() and untouched(target, content)
    reported = mentions(caplog, link.name)
    assert len(reported) == 1 and "symbolic link" in reported[0], reported


def test_a_fifo_under_a_destination_name_neither_hangs_the_start_nor_is_taken(tmp_path: Path, caplog) -> None:
    """Before, opening another destination's FIFO for reading blocked the server's start until a writer came (for
    ever); this server's own destination name as a FIFO is refused in one line. Run in a thread: a hang fails."""
    import threading

    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    other = spool_dir / destination_file("Fluentd at 127.0.0.1:2")
    os.mkfifo(other)
    outcome: list = []
    starting = threading.Thread(target=lambda: outcome.append(
        Spool(spool_dir, 10**9, 10**6, Counts()).hold_destination("Fluentd at 127.0.0.1:1")), daemon=True)
    starting.start()
    starting.join(10)
    if starting.is_alive():
        os.close(os.open(other, os.O_WRONLY | os.O_NONBLOCK))  # let the blocked open go, so the test ends
        pytest.fail("the start blocked opening a FIFO named as another destination's file")
    assert outcome == [None] and other.exists()
    reported = mentions(caplog, other.name)
    assert len(reported) == 1 and "not a regular file" in reported[0], reported
    mine = "Fluentd at 127.0.0.1:3"
    os.mkfifo(spool_dir / destination_file(mine))
    with pytest.raises(OSError, match=r"is not a regular file; it must be the spool's own file: remove it"):
        Spool(spool_dir, 10**9, 10**6, Counts()).hold_destination(mine)


def test_a_file_not_named_as_a_segment_is_not_one(tmp_path: Path, caplog) -> None:
    """SHELFCAST_EVENT_SPOOL=logs, the folder of the local log: every `*.jsonl` was taken for a segment, so
    `predictions.jsonl` (what drift reads) was sent, then deleted, or dropped whole by the limit, its lines counted."""
    log = tmp_path / "predictions.jsonl"
    log.write_bytes(b"".join(line(100 + i) for i in range(30)) + b"\0\0 torn tail")
    content = log.read_bytes()
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=0, segment_max_bytes=500, count=counts)
    spool.append(line(1))
    spool.close()
    assert spool.enforce_limit() == 1 and counts == {"spooled": 1, "dropped": 1}
    for i in range(2, 5):
        spool.append(line(i))
    spool.close()
    assert drain(spool) == [2, 3, 4] and log.read_bytes() == content
    reported = mentions(caplog, log.name)
    assert len(reported) == 1 and "not named as a segment" in reported[0], reported


def junk_segment(folder: Path) -> tuple[Path, int, int]:
    """A segment (named as one) with 4 events, 2 events cut short (a crash's torn lines) and 5 lines that are no
    event: (its path, the events lost, the lines that are none)."""
    path = folder / f"{1:020d}-1-0.jsonl"
    path.write_bytes(line(900) + b'{"event_id":"torn-1","i":9\n'  # an event cut short mid-segment
                     + b"[1, 2]\n" + b"\xff\xfe binary junk \x00\x01\n" + b'{"no": "event_id"}\n'
                     + line(901) + b'{"event_id": ""}\n' + b"just text\n" + line(902) + line(903)
                     + b'{"event_id":"torn-2","timesta')  # the torn tail of a power cut
    return path, 2, 5


def test_lines_that_are_no_event_are_not_counted_as_dropped_when_the_limit_drops_their_segment(
        tmp_path: Path, caplog) -> None:
    """Before, every line of a dropped segment that was no record counted as a dropped event: 7 here, 2 of them
    events cut short."""
    path, torn, not_events = junk_segment(tmp_path)
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=500, count=counts)
    for i in range(21):
        spool.append(line(i))
    spool.close()
    spool.max_bytes = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) - 100  # the junk segment is over
    assert spool.enforce_limit() == 4 + torn
    assert counts == {"spooled": 21, "dropped": 4 + torn, "not_events": not_events}
    assert not path.exists() and drain(spool) == list(range(21))
    assert any("no event" in message and "not_events" in message for message in mentions(caplog, str(tmp_path)))


@pytest.mark.parametrize("tail", [b"{", b'{"ev', b'{"event_id"'])
def test_an_event_torn_before_its_event_id_is_counted_as_dropped(tmp_path: Path, tail: bytes) -> None:
    """Found in review: a crash's torn tail is counted as an event lost only if it holds `{"event_id":` whole, so an
    event cut within its first 12 bytes (the file's last line, no newline after it) was counted as not_events, no
    event. Such a tail is the start of an event line the spool wrote: dropped, counted so."""
    path = tmp_path / f"{1:020d}-1-0.jsonl"
    path.write_bytes(spool_line(1) + spool_line(2) + tail)
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=500, count=counts)
    spool.max_bytes = 0
    assert spool.enforce_limit() == 3 and counts == {"dropped": 3}, dict(counts)
    assert not path.exists()


def test_a_line_that_only_starts_like_an_event_mid_segment_is_no_event(tmp_path: Path) -> None:
    """Only the file's last line, with no newline after it, can be a torn tail: a `{` line between events is junk."""
    path = tmp_path / f"{1:020d}-1-0.jsonl"
    path.write_bytes(spool_line(1) + b"{\n" + spool_line(2))
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=500, count=counts)
    spool.max_bytes = 0
    assert spool.enforce_limit() == 2 and counts == {"dropped": 2, "not_events": 1}, dict(counts)


def test_lines_that_are_no_event_are_counted_apart_when_their_segment_is_sent(
        fluentd_receiver, tmp_path: Path, caplog) -> None:
    """Through the app's sink to the real receiver: the segment's events arrive, the torn ones count as dropped and
    the rest as not_events (before: all 7 lines as dropped); the links and the stray log beside it stay as they are."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    junk_segment(spool_dir)
    target = foreign_file(tmp_path / "outside")
    content = target.read_bytes()
    (spool_dir / f"{2:020d}-1-0.jsonl").symlink_to(target)
    stray = spool_dir / "predictions.jsonl"
    stray.write_bytes(line(500))
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    with fluent_sink(fluentd_receiver.port, spool_dir) as sink:
        written = [sink.emit({"timestamp": now, "i": i}) for i in range(50)]
        wait_until(lambda: sink.stats.snapshot()["sent"] == 54, timeout_s=15)
    fluentd_receiver.stop()
    received = received_ids(fluentd_receiver)
    assert set(received) == {*written, "e900", "e901", "e902", "e903"} and max(received.values()) == 1
    stats = sink.stats.snapshot()
    assert stats["dropped"] == 2 and stats["not_events"] == 5
    assert untouched(target, content) and stray.read_bytes() == line(500)
    assert all(e["tag"] == TAG for e in fluentd_receiver.events() if "event_id" in e["record"])


def test_a_server_whose_destination_file_is_a_link_says_so_in_one_line_and_stops(tmp_path: Path) -> None:
    """The README's line: gunicorn stops (exit 3) after one line naming the link; before, the server started and
    wrote its Fluentd's address over the linked file."""
    spool_dir, target = tmp_path / "spool", foreign_file(tmp_path / "outside")
    content = target.read_bytes()
    spool_dir.mkdir()
    name = destination_file("Fluentd at 127.0.0.1:1")
    (spool_dir / name).symlink_to(target)
    text = refused_start_log(spool_dir, tmp_path)
    assert f"cannot start: SpoolLink: [Errno {errno.ELOOP}] event spool {spool_dir}: {name}, the file that holds " \
           f"this spool for Fluentd at 127.0.0.1:1, is a symbolic link to {target}; it must be the spool's own " \
           f"file: remove it" in text
    assert "Traceback" not in text and untouched(target, content)


def test_a_hard_link_is_not_counted_against_the_limit(tmp_path: Path) -> None:
    """Its size is not the spool's: counted, a large foreign file linked in under a newer segment's name made the
    limit drop the spool's own older events to make room for it."""
    spool_dir, outside = tmp_path / "spool", tmp_path / "outside"
    spool_dir.mkdir()
    outside.mkdir()
    big = outside / "big.jsonl"
    big.write_bytes(b"".join(encode_line({"event_id": f"foreign-{i}", "pad": "x" * 200}) for i in range(50)))
    counts = Counts()
    spool = Spool(spool_dir, max_bytes=10**9, segment_max_bytes=500, count=counts)
    for i in range(10):
        spool.append(line(i))
    spool.close()
    os.link(big, spool_dir / f"{time.time_ns() + 10**12:020d}-1-0.jsonl")  # sorts after ours
    spool.max_bytes = sum(p.stat().st_size for p in spool_dir.glob("*.jsonl") if p.stat().st_nlink == 1)
    assert spool.enforce_limit() == 0 and counts["dropped"] == 0
    assert drain(spool) == list(range(10))


def test_the_fsync_thread_follows_no_link_put_in_a_segments_place(tmp_path: Path, caplog) -> None:
    """Found in review: every open of the spool's was made with O_NOFOLLOW but the fsync thread's, which opened a
    sealed segment's path as it found it: a symbolic link put there was followed, and one to a FIFO hung the
    delivery thread in that open for good. Now the link is left alone, reported once. Run in a thread: a hang
    fails."""
    import threading

    spool_dir, outside = tmp_path / "spool", tmp_path / "outside"
    spool_dir.mkdir()
    outside.mkdir()
    fifo = outside / "fifo"
    os.mkfifo(fifo)
    spool = Spool(spool_dir, max_bytes=10**9, segment_max_bytes=100, count=Counts())
    spool.append(line(1) + line(2))  # over the segment size: sealed, its fsync left to sync()
    [segment] = spool_dir.glob("*.jsonl")
    segment.unlink()
    segment.symlink_to(fifo)
    syncing = threading.Thread(target=spool.sync, daemon=True)
    syncing.start()
    syncing.join(10)
    if syncing.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the blocked open go, so the test ends
        pytest.fail("the fsync thread blocked opening the FIFO a link in the spool named")
    assert segment.is_symlink() and stat.S_ISFIFO(os.stat(fifo).st_mode)
    reported = mentions(caplog, segment.name)
    assert len(reported) == 1 and "symbolic link" in reported[0], reported
    assert not mentions(caplog, "fsync failed")
