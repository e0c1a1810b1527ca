"""The bounded event spool (eventlog/spool.py): segments, claims across processes, the size limit."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from eventlog.records import encode_line
from eventlog.spool import Spool, SpoolInUse
from tests.app.conftest import Counts, refusing_changes

REPO_ROOT = Path(__file__).resolve().parents[2]


def line(i: int, padding: int = 0) -> bytes:
    return encode_line({"event_id": f"e{i}", "i": i, "pad": "x" * padding})


def drain(spool: Spool) -> list[int]:
    """Claim every sealed segment, read it, delete it: the `i` of every record."""
    seen, held = [], set()
    while (segment := spool.claim_next(held)) is not None:
        seen.extend(record["i"] for record in segment.records(lambda _: None))
        segment.release(delete=True)
    return seen


def test_sealed_segments_are_claimed_oldest_first_and_an_open_one_is_not(tmp_path: Path) -> None:
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=200, count=counts)
    for i in range(20):
        assert spool.append(line(i))
    spool.sync()  # closes the segments that reached their size
    sealed = drain(spool)
    assert 0 < len(sealed) < 20 and sealed == list(range(len(sealed)))  # the open segment's writer holds it
    spool.close()
    assert drain(spool) == list(range(len(sealed), 20))
    assert counts == {"spooled": 20} and not list(tmp_path.glob("*.jsonl"))


def test_a_segment_held_by_one_process_is_not_claimed_by_another(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9, 10**6, Counts())
    spool.append(line(1))
    spool.close()
    mine = spool.claim_next(set())
    assert mine is not None
    other = Spool(tmp_path, 10**9, 10**6, Counts())
    assert other.claim_next(set()) is None  # flock is per open file: a second claim fails even here
    mine.release(delete=False)
    assert drain(other) == [1]


def test_a_spool_is_held_for_one_destination_while_a_process_sends_there(tmp_path: Path) -> None:
    first = Spool(tmp_path, 10**9, 10**6, Counts())
    first.hold_destination("Fluentd at 127.0.0.1:1")
    also = Spool(tmp_path, 10**9, 10**6, Counts())
    also.hold_destination("Fluentd at 127.0.0.1:1")  # the same destination shares it (a server's workers)
    other = Spool(tmp_path, 10**9, 10**6, Counts())
    with pytest.raises(SpoolInUse, match=r"sends its events to Fluentd at 127\.0\.0\.1:1, this one to Fluentd at "
                                          r"127\.0\.0\.1:2; .* its own SHELFCAST_EVENT_SPOOL"):
        other.hold_destination("Fluentd at 127.0.0.1:2")
    first.release_destination()
    with pytest.raises(SpoolInUse):
        other.hold_destination("Fluentd at 127.0.0.1:2")  # `also` still holds it
    also.release_destination()
    other.hold_destination("Fluentd at 127.0.0.1:2")  # a stopped server's destination is no longer held
    assert len(list(tmp_path.glob(".destination-*"))) == 1  # the stopped destination's file removed


def test_only_the_last_process_to_leave_a_destination_is_told_it_is_last(tmp_path: Path) -> None:
    """The one that reports what is left unsent (app/events.py): a worker, or a server sharing the spool, that
    leaves while another still sends there says nothing; the other sends those events, or reports them."""
    first, second = (Spool(tmp_path, 10**9, 10**6, Counts()) for _ in range(2))
    for spool in (first, second):
        spool.hold_destination("Fluentd at 127.0.0.1:1")
    assert not first.last_to_leave()
    first.release_destination()
    assert second.last_to_leave()
    with pytest.raises(SpoolInUse):  # held alone until released: still a live server's spool
        Spool(tmp_path, 10**9, 10**6, Counts()).hold_destination("Fluentd at 127.0.0.1:2")
    second.release_destination()
    assert Spool(tmp_path, 10**9, 10**6, Counts()).last_to_leave()  # no destination held: a spool on its own


def test_a_spool_folder_moved_away_is_held_again_where_its_path_now_points(tmp_path: Path) -> None:
    """Found by a review: a process follows its spool path to a new folder (follow_folder, after `mv logs logs.old`)
    but its .destination-* stayed in the folder moved away, so a server sending elsewhere started on the new folder
    unrefused, and each sent the other's events."""
    root = tmp_path / "spool"
    first = Spool(root, 10**9, 10**6, Counts())
    first.hold_destination("Fluentd at 127.0.0.1:1")
    root.rename(tmp_path / "spool.old")
    first.append(line(0))  # an event after the move: the spool makes its folder again, at its path
    first.follow_folder()
    other = Spool(root, 10**9, 10**6, Counts())
    with pytest.raises(SpoolInUse, match=r"sends its events to Fluentd at 127\.0\.0\.1:1"):
        other.hold_destination("Fluentd at 127.0.0.1:2")


def test_segments_of_a_process_that_died_are_claimed_by_the_next_one(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os
        from eventlog.records import encode_line
        from eventlog.spool import Spool, SpoolInUse
        spool = Spool({str(tmp_path)!r}, 10**9, 300, lambda *a: None)
        for i in range(10):
            spool.append(encode_line({{"event_id": f"e{{i}}", "i": i}}))
        os._exit(0)  # no close, no fsync: the open segment's lock dies with the process
    """)
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=60)
    assert sorted(drain(Spool(tmp_path, 10**9, 10**6, Counts()))) == list(range(10))


def test_over_the_limit_the_oldest_events_are_dropped_and_counted(tmp_path: Path) -> None:
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=2_000, segment_max_bytes=500, count=counts)
    for i in range(60):
        spool.append(line(i, padding=40))  # ~70 bytes each: 7 per segment
    spool.sync()
    dropped = spool.enforce_limit()
    left = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl"))
    assert left <= 2_000 and dropped > 0 and counts["dropped"] == dropped
    spool.close()
    kept = drain(spool)
    assert kept == list(range(60 - len(kept), 60))  # the newest survive
    assert len(kept) + dropped == 60


def test_a_segments_events_the_limit_drops_are_counted_whole_and_lines_that_are_no_event_apart(tmp_path: Path) -> None:
    """An older version's or a hand-edited segment with lines that are no record: dropped whole by the limit, only its
    records were counted at first (7 of 10 here), then every line (10); now its 7 events as dropped and the 3 lines
    that are no event (not JSON, JSON but no object, binary) as not_events. Cut-short events:
    tests/app/test_events_spool_foreign.py."""
    old = tmp_path / f"{1:020d}-1-0.jsonl"
    old.write_bytes(line(0, padding=40) + b'{"torn": \n' + b"[1, 2]\n" + b"\xff\xfe not text\n"
                    + b"".join(line(i, padding=40) for i in range(1, 7)))
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=500, count=counts)
    for i in range(7, 28):
        spool.append(line(i, padding=40))  # 3 segments of 7, newer than the old one
    spool.close()
    spool.max_bytes = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) - 100  # one segment over
    assert spool.enforce_limit() == 7 and counts["dropped"] == 7 and counts["not_events"] == 3
    assert not old.exists() and drain(spool) == list(range(7, 28))


def test_workers_checking_the_limit_at_once_drop_only_the_excess(tmp_path: Path) -> None:
    """Workers started together check the limit every second, in step. Each listed the spool, saw it over its limit
    by one segment and deleted its own oldest: 4 workers dropped up to 4 segments (44 events where 11 were over, in
    most of 20 rounds of a probe). One check at a time, each sees what the others deleted."""
    for round_ in range(8):
        root = tmp_path / f"round{round_}"
        writer = Spool(root, max_bytes=10**9, segment_max_bytes=10_000, count=Counts())
        for i in range(300):
            writer.append(line(i, padding=900))  # 11 a segment
        writer.close()
        size = sum(p.stat().st_size for p in root.glob("*.jsonl"))
        workers = [Spool(root, max_bytes=size - 5_000, segment_max_bytes=10_000, count=Counts()) for _ in range(4)]
        in_step, dropped = threading.Barrier(len(workers)), []

        def check(spool: Spool) -> None:
            in_step.wait()
            dropped.append(spool.enforce_limit())

        threads = [threading.Thread(target=check, args=(spool,)) for spool in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(dropped) == [0, 0, 0, 11], f"round {round_}: dropped per worker {dropped}"
        assert drain(workers[0]) == list(range(11, 300))


def test_a_limit_check_does_not_wait_for_ever_on_a_stopped_one(tmp_path: Path) -> None:
    """A process stopped mid-check (SIGSTOP) holds the folder's lock: the others' checks run all the same."""
    import fcntl

    spool = Spool(tmp_path, max_bytes=2_000, segment_max_bytes=500, count=Counts())
    for i in range(60):
        spool.append(line(i, padding=40))
    spool.sync()
    stopped = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(stopped, fcntl.LOCK_EX)
        started = time.monotonic()
        assert spool.enforce_limit() > 0
        assert time.monotonic() - started < 3
    finally:
        os.close(stopped)
    spool.close()


def test_checks_that_outlast_the_lock_wait_drop_only_the_excess_together(tmp_path: Path) -> None:
    """A check far over the limit parses every segment it drops under the folder's lock: 128 MB over a 40 MB limit
    took 5.7-8 s on a loaded 2-core machine, so the other workers' checks gave up waiting after LIMIT_LOCK_WAIT_S
    and ran beside it, each dropping the excess it had listed at its start: 4 workers dropped all 94,161 events of
    a 168 MB spool, 0 MB left of the 40 MB it may hold. The lock held by another (a check that outlasts the wait),
    4 checks at once: together they drop the excess, give or take a segment each."""
    import fcntl

    limit, segment_bytes = 2_000_000, 100_000
    writer = Spool(tmp_path, max_bytes=10**12, segment_max_bytes=segment_bytes, count=Counts())
    for i in range(4_000):  # ~4 MB: twice the limit
        writer.append(line(i, padding=1_000))
    writer.close()
    spools = [Spool(tmp_path, max_bytes=limit, segment_max_bytes=segment_bytes, count=Counts()) for _ in range(4)]
    busy = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(busy, fcntl.LOCK_EX)  # a long check in another worker
        checks = [threading.Thread(target=spool.enforce_limit) for spool in spools]
        for check in checks:
            check.start()
        for check in checks:
            check.join(60)
    finally:
        os.close(busy)
    left = sum(path.stat().st_size for path in tmp_path.glob("*.jsonl"))
    assert limit - 4 * segment_bytes <= left <= limit, left
    kept = drain(Spool(tmp_path, 10**12, 10**6, Counts()))
    # the newest kept, in order (side by side, a check that finds the room made lets go of the segment it claimed,
    # which another skipped for the next: one segment each may be older than those dropped)
    assert kept == sorted(kept) and set(range(3_000, 4_000)) <= set(kept)
    assert sum(spool._count["dropped"] for spool in spools) + len(kept) == 4_000  # each drop counted once


def test_an_older_versions_segments_are_the_oldest_to_send_and_to_drop(tmp_path: Path) -> None:
    """The spool before 2026-12-01 named its segments segment-000000000001.jsonl (with position.json beside them).
    Sorted by name they came after every segment named by time: after an upgrade the limit dropped the new events
    first and kept the older version's, and sent those last."""
    old = tmp_path / "segment-000000000001.jsonl"
    old.write_bytes(b"".join(line(i, padding=40) for i in range(7)))
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    (tmp_path / "position.json").write_text('{"segment": 1, "offset": 0}')
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=500, count=counts)
    for i in range(7, 28):
        spool.append(line(i, padding=40))  # 3 segments of 7
    spool.close()
    assert spool.segment_paths()[0] == old
    spool.max_bytes = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) - 100  # one segment over
    assert spool.enforce_limit() == 7
    assert not old.exists() and drain(spool) == list(range(7, 28))


def logged_drops(caplog) -> int:
    """The events the spool's log lines say were dropped."""
    total = 0
    for record in caplog.records:
        text = record.getMessage()
        total += sum(int(n) for n in re.findall(r"dropped the (\d+) oldest|(\d+) more events dropped", text)
                     for n in n if n)
    return total


def test_every_drop_is_logged_even_when_messages_are_held_back(tmp_path: Path, caplog) -> None:
    # One message per 10 s kept a full spool from flooding the log, but the drops of the messages held
    # back were never logged: a probe logged 1,844 of 9,218 dropped events.
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=1_000, segment_max_bytes=300, count=counts)
    for burst in range(4):  # four limit checks within 10 s: only the first may log at once
        for i in range(40):
            spool.append(line(100 * burst + i, padding=40))
        spool.sync()
        spool.enforce_limit()
    assert counts["dropped"] > 0
    assert logged_drops(caplog) < counts["dropped"]  # held back so far
    spool.close()
    assert logged_drops(caplog) == counts["dropped"]


def test_drops_held_back_are_logged_by_a_limit_check_10_s_later_without_a_new_drop(tmp_path, caplog,
                                                                                    monkeypatch) -> None:
    """A worker that drops events and then drops no more (the outage ended) must not keep the held-back drops
    until it exits: the next limit check 10 s on logs them in a line of their own."""
    import types

    from eventlog import spool as spool_module

    clock = [1000.0]
    monkeypatch.setattr(spool_module, "time", types.SimpleNamespace(
        monotonic=lambda: clock[0], time=time.time, time_ns=time.time_ns, sleep=time.sleep))
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=1_000, segment_max_bytes=300, count=counts)
    for burst in range(2):  # the second burst's drops come within 10 s of the first message: held back
        for i in range(40):
            spool.append(line(100 * burst + i, padding=40))
        spool.sync()
        spool.enforce_limit()
    held = counts["dropped"] - logged_drops(caplog)
    assert held > 0
    spool.enforce_limit()  # nothing new to drop, and under 10 s: still held
    assert logged_drops(caplog) < counts["dropped"]
    clock[0] += 10.0
    assert spool.enforce_limit() == 0
    assert logged_drops(caplog) == counts["dropped"]
    assert f"{held} more events dropped since the last message" in caplog.records[-1].getMessage()
    spool.close()


@pytest.fixture
def unwritable_folder(tmp_path: Path):
    """An existing folder this process cannot create files in (read-only, or immutable for root)."""
    folder = tmp_path / "spool"
    folder.mkdir()
    with refusing_changes(folder):
        yield folder


def test_a_folder_that_refuses_deletions_leaves_every_segment_claimable(tmp_path: Path, caplog) -> None:
    # Over the limit, the check claimed the oldest segment and its deletion raised PermissionError before the
    # descriptor was closed: a traceback every second, and each check left one more segment locked by this
    # process for good, so its events were never sent while the process lived, Fluentd back or not.
    root, counts = tmp_path / "spool", Counts()
    spool = Spool(root, max_bytes=1, segment_max_bytes=200, count=counts)
    for i in range(20):
        assert spool.append(line(i))
    spool.close()
    with refusing_changes(root):
        for _ in range(3):
            assert spool.enforce_limit() == 0  # no room can be made: nothing dropped, nothing counted
    assert counts == {"spooled": 20}
    assert any("cannot delete the oldest segment" in r.getMessage() for r in caplog.records)
    assert drain(spool) == list(range(20))  # writable again: all of them still there, none held


def test_a_spool_folder_that_cannot_be_written_stops_the_process_at_start(unwritable_folder: Path) -> None:
    # An existing folder the app cannot write in (read-only, immutable, another user's) was accepted: the
    # app answered every request and dropped every event, logging a full disk once per 10 s.
    with pytest.raises(OSError, match=f"event spool {re.escape(str(unwritable_folder))}: cannot create files in it"):
        Spool(unwritable_folder, 10**9, 10**6, Counts())


def test_a_spool_folder_writable_again_is_accepted_and_left_empty(tmp_path: Path) -> None:
    Spool(tmp_path, 10**9, 10**6, Counts()).close()  # no probe file left behind
    assert list(tmp_path.iterdir()) == []


def refused_start_log(spool_dir: Path, tmp_path: Path) -> str:
    """The log of a one-worker server started on ``spool_dir`` that must stop at start (gunicorn's exit 3)."""
    from app import launch

    log = tmp_path / "gunicorn.log"
    with pytest.raises(launch.ServerNotReady, match=r"gunicorn exited \(3\)"):
        launch.start({"FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": "1", "SHELFCAST_EVENT_SPOOL": str(spool_dir),
                      "SHELFCAST_WORKERS": "1", "SHELFCAST_MODEL_DIR": str(tmp_path / "no-model"),
                      "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}, log, timeout_s=60)
    return log.read_text(encoding="utf-8")


def test_the_server_says_why_it_cannot_start_in_one_line(unwritable_folder: Path, tmp_path: Path) -> None:
    """`make serve` with such a folder: before, gunicorn's 30-line "Exception in worker process" traceback came
    above the message; now the message alone, and the server stops instead of restarting the worker."""
    text = refused_start_log(unwritable_folder, tmp_path)
    assert f"cannot start: PermissionError: [Errno {errno.EPERM if os.geteuid() == 0 else errno.EACCES}] event " \
           f"spool {unwritable_folder}: cannot create files in it" in text
    assert "Traceback" not in text and "Worker failed to boot" in text


def test_an_unreadable_line_is_named_and_the_rest_are_read(tmp_path: Path) -> None:
    (tmp_path / f"{1:020d}-1-0.jsonl").write_bytes(line(1) + b'{"torn": \n' + line(2))
    segment = Spool(tmp_path, 10**9, 10**6, Counts()).claim_next(set())
    bad: list[str] = []
    assert [r["i"] for r in segment.records(bad.append)] == [1, 2]
    assert len(bad) == 1 and "line 2" in bad[0]
    segment.release(delete=True)


def test_concurrent_appends_never_interleave_lines(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9, 4096, Counts())
    workers = [threading.Thread(target=lambda t=t: [spool.append(line(t * 1000 + n, 100)) for n in range(300)])
               for t in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    spool.close()
    assert sorted(drain(spool)) == sorted(t * 1000 + n for t in range(4) for n in range(300))


def test_an_orphaned_new_file_is_removed(tmp_path: Path) -> None:
    orphan = tmp_path / f"{1:020d}-1-0.new"
    orphan.write_bytes(b"")
    os.utime(orphan, (1, 1))
    Spool(tmp_path, 10**9, 10**6, Counts()).enforce_limit()
    assert not orphan.exists()
    assert json.loads(line(3)) == {"event_id": "e3", "i": 3, "pad": ""}


def test_this_process_sends_its_own_segments_from_memory_as_the_file_reads(tmp_path: Path) -> None:
    records = [json.loads(line(i, padding=i % 7)) for i in range(30)]
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=300, count=Counts())
    for record in records:
        assert spool.append(encode_line(record), record)
    spool.close()
    held, from_memory, from_disk = set(), [], []
    while (segment := spool.claim_next(held)) is not None:
        assert segment.written is not None  # kept by the writer: no read, no parse
        kept = segment.records(lambda _: None)
        assert segment.written is None and segment.lines == len(kept)
        assert segment.records(lambda _: None) == kept  # a re-send reads the file: the same records
        from_memory.extend(kept)
        held.add(segment.path)
        from_disk.append(segment)
    assert from_memory == records and len(from_disk) > 1
    for segment in from_disk:
        segment.release(delete=True)


def test_segments_written_without_their_records_or_beyond_the_bound_are_read_from_disk(tmp_path: Path) -> None:
    from eventlog import spool as spool_module

    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=10**6, count=Counts())
    spool.append(line(1), {"event_id": "e1", "i": 1, "pad": ""})
    spool.append(line(2))  # no record: the file is the only full copy
    spool.close()
    segment = spool.claim_next(set())
    assert segment is not None and segment.written is None
    assert [r["i"] for r in segment.records(lambda _: None)] == [1, 2]
    segment.release(delete=True)
    many = spool_module.CACHED_SEGMENTS + 3
    for i in range(many):
        spool.append(line(i), json.loads(line(i)))
        spool.sync(seal_older_than_s=0)  # a segment each
    kept = []
    while (segment := spool.claim_next(set())) is not None:
        kept.append(segment.written is not None)
        assert [r["i"] for r in segment.records(lambda _: None)] == [len(kept) - 1]
        segment.release(delete=True)
    assert kept == [False] * 3 + [True] * spool_module.CACHED_SEGMENTS  # the oldest were let go


def test_a_slow_fsync_does_not_keep_a_sealed_segment_from_being_sent(tmp_path: Path, monkeypatch) -> None:
    # On a busy virtual disk an fsync took 9.5 s; while the writer held its lock through the fsync,
    # delivery to Fluentd stopped for as long (S1's receiver got nothing for ~10 s at a time).
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=10**6, count=Counts())
    for i in range(10):
        assert spool.append(line(i))
    began, release, real_fsync = threading.Event(), threading.Event(), os.fsync

    def stuck_fsync(fd: int) -> None:
        began.set()
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", stuck_fsync)  # the spool calls os.fsync
    syncer = threading.Thread(target=spool.sync, kwargs={"seal_older_than_s": 0.0})
    syncer.start()
    try:
        assert began.wait(5)
        assert drain(Spool(tmp_path, max_bytes=10**9, segment_max_bytes=10**6, count=Counts())) == list(range(10))
    finally:
        release.set()
        syncer.join()
    spool.close()



def test_a_new_segments_name_is_fsynced_with_its_folder_once(tmp_path: Path, monkeypatch) -> None:
    """Found by a probe: the spool fsynced each segment's data but never its folder, so the segment's name (its rename
    from .new) was not durable: a power cut could leave a fsynced segment under its .new name, which a later start
    deletes after 60 s as an abandoned opening, its events lost uncounted. Now the first sync after a segment is
    named fsyncs the folder after the data; later syncs of the same segment do not (one folder fsync a segment)."""
    real_fsync, flushed = os.fsync, []

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        flushed.append(("folder" if stat.S_ISDIR(info.st_mode) else "file", (info.st_dev, info.st_ino)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    folder = os.stat(tmp_path)
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=10**6, count=Counts())
    assert spool.append(line(0))
    spool.sync()
    assert [kind for kind, _ in flushed] == ["file", "folder"], flushed  # the data first, then the name
    assert flushed[1][1] == (folder.st_dev, folder.st_ino)
    flushed.clear()
    assert spool.append(line(1))
    spool.sync()
    assert [kind for kind, _ in flushed] == ["file"], flushed  # the same segment: its name is durable already
    spool.close()

def refuse_to_open(monkeypatch, refused: Path) -> None:
    """os.open raises PermissionError for `refused` (a segment of another user: chmod cannot stop root)."""
    real_open = os.open

    def guarded_open(path, flags, *args, **kwargs):
        if Path(path) == refused:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)  # the spool calls os.open


def test_a_segment_that_cannot_be_opened_is_left_and_the_others_are_sent_and_bounded(
        tmp_path: Path, monkeypatch, caplog) -> None:
    # Written by root with umask 077 into a spool shared with the app's user: its PermissionError escaped
    # claiming and the limit check, so nothing was sent again and the spool grew 7x over its limit.
    foreign = tmp_path / f"{1:020d}-1-0.jsonl"  # the oldest
    foreign.write_bytes(b"".join(line(i, padding=40) for i in range(100, 130)))
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=2_000, segment_max_bytes=500, count=counts)
    for i in range(60):
        spool.append(line(i, padding=40))
    spool.close()
    refuse_to_open(monkeypatch, foreign)

    dropped = spool.enforce_limit()  # its events cannot be counted: it is neither dropped nor counted
    readable = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl") if p != foreign)
    assert foreign.exists() and readable <= 2_000 and counts["dropped"] == dropped > 0
    kept = drain(spool)
    assert kept == list(range(60 - len(kept), 60)) and len(kept) + dropped == 60
    spool.enforce_limit()
    warnings = [r.getMessage() for r in caplog.records if foreign.name in r.getMessage()]
    assert len(warnings) == 1 and "cannot open" in warnings[0], warnings


def test_an_orphan_that_cannot_be_opened_is_logged_once(tmp_path: Path, caplog) -> None:
    # Orphans (.new) were forgotten at every limit check, which trimmed the logged names to segments only.
    orphan = tmp_path / f"{1:020d}-1-0.new"
    os.mkfifo(orphan)  # not a regular file: never opened for reading
    os.utime(orphan, (time.time() - 120, time.time() - 120))
    spool = Spool(tmp_path, max_bytes=10**6, segment_max_bytes=10**5, count=Counts())
    for _ in range(3):
        spool.enforce_limit()
    spool.close()
    logged = [r.getMessage() for r in caplog.records if orphan.name in r.getMessage()]
    assert len(logged) == 1 and "cannot open" in logged[0], logged


def test_a_removed_spool_folder_is_made_again_and_the_events_it_took_are_counted(tmp_path: Path) -> None:
    # The folder was made only at start: once removed, every later event was dropped until a restart, and
    # those written into the open (now nameless) segment were counted as spooled, never as dropped.
    root, counts = tmp_path / "spool", Counts()
    spool = Spool(root, max_bytes=10**9, segment_max_bytes=10**6, count=counts)
    assert spool.append(line(0))
    shutil.rmtree(root)  # the operator clears the backlog: the open segment goes with it
    assert spool.append(line(1))  # into the open segment, which has no name any more
    spool.sync(seal_older_than_s=60)  # not old: sealed because it was deleted
    assert counts == {"spooled": 2, "dropped": 2}
    assert spool.append(line(2)) and root.is_dir()
    spool.sync(seal_older_than_s=0)
    shutil.rmtree(root)  # now with no segment open
    assert spool.append(line(3)) and root.is_dir()
    spool.close()
    assert drain(spool) == [3] and counts == {"spooled": 4, "dropped": 2}


def test_a_spool_folder_moved_away_has_its_segments_moved_back_by_the_next_limit_check(tmp_path: Path) -> None:
    """Before, the segments in a folder moved away stayed there (the next event made the folder again): never
    claimed, never counted. A segment claimed before the move and deleted while away was taken for gone, and
    would have been sent again once back; it now stays held until it can be deleted where it is named."""
    root, moved, counts = tmp_path / "logs" / "spool", tmp_path / "logs.moved", Counts()
    spool = Spool(root, max_bytes=10**9, segment_max_bytes=200, count=counts)
    for i in range(20):
        spool.append(line(i))
    spool.sync()
    held = spool.claim_next(set())  # a segment this process was sending when the folder went
    assert held is not None
    (tmp_path / "logs").rename(moved)
    assert isinstance(held.delete(), FileNotFoundError)  # not at its path, but not gone: kept, not deleted
    for i in range(20, 30):
        spool.append(line(i))  # into the open segment, moved with the folder, then into a new folder
    assert root.is_dir() and drain(spool) == []  # only the new folder's sealed segments are claimable (none yet)
    away = sorted(p.name for p in moved.rglob("*.jsonl"))
    assert spool.enforce_limit() == 0 and spool.follow_folder() == 0  # moved back; a second look finds nothing new
    assert not list(moved.rglob("*.jsonl")) and set(away) <= {p.name for p in root.glob("*.jsonl")}
    assert held.delete() is None and not held.path.exists()  # named again: deleted where the spool has it
    held_records = held.records(lambda _: None)
    held.release(delete=False)
    spool.close()
    assert sorted(drain(spool) + [r["i"] for r in held_records]) == list(range(30))
    assert counts == {"spooled": 30}


def test_segments_written_while_the_spool_folder_is_moved_away_are_still_fsynced(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """The crash-loss window (README: the fsync interval plus the fsyncs' time) holds while the folder is away. Before,
    the fsync thread opened each segment by its path, found none there, took it for sent and deleted, and never
    fsynced it: a power cut in the kernel's writeback delay (30 s by default) lost those events."""
    root, counts = tmp_path / "logs" / "spool", Counts()
    spool = Spool(root, max_bytes=10**9, segment_max_bytes=10**6, count=counts)
    real_fsync, fsynced = os.fsync, []
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(os.fstat(fd).st_ino), real_fsync(fd))[1])
    spool.append(line(1))
    (tmp_path / "logs").rename(tmp_path / "logs.moved")
    spool.append(line(2))  # into the open segment, away with the folder
    segment = next((tmp_path / "logs.moved" / "spool").glob("*.jsonl"))
    spool.sync(seal_older_than_s=0)  # sealed and fsynced while away
    assert segment.stat().st_ino in fsynced
    spool.follow_folder()
    spool.close()
    assert drain(spool) == [1, 2] and counts == {"spooled": 2}


def test_a_spool_folder_moved_where_its_segments_cannot_follow_is_logged_naming_both(tmp_path: Path, caplog) -> None:
    """The spool's path now on another filesystem (a folder above it swapped for a link to a tmpfs): its segments
    cannot be moved back (EXDEV). They stay where the folder went, unsent and not counted as dropped (they are
    there to be moved by hand), and the check says so, naming both folders, at most every 10 s."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test's tmp folder")
    elsewhere = Path(tempfile.mkdtemp(dir=shm))
    try:
        root, moved, counts = tmp_path / "logs" / "spool", tmp_path / "logs.moved", Counts()
        spool = Spool(root, max_bytes=10**9, segment_max_bytes=200, count=counts)
        for i in range(10):
            spool.append(line(i))
        spool.sync(seal_older_than_s=0)
        (tmp_path / "logs").rename(moved)
        (tmp_path / "logs").symlink_to(elsewhere)
        assert spool.follow_folder() == 0 and spool.follow_folder() == 0
        logged = [r.getMessage() for r in caplog.records if "cannot be moved back" in r.getMessage()]
        assert len(logged) == 1 and str(moved / "spool") in logged[0] and str(root) in logged[0], logged
        assert len(list((moved / "spool").glob("*.jsonl"))) > 1 and counts == {"spooled": 10}
    finally:
        shutil.rmtree(elsewhere)


@pytest.mark.parametrize("step_s", [-3600, 3600], ids=["an hour back", "an hour forward, then back"])
def test_after_the_wall_clock_steps_back_the_newest_events_are_still_the_last_dropped(
        tmp_path: Path, monkeypatch, step_s: int) -> None:
    # Segment names began with time.time_ns() and the oldest is the first by name: after NTP stepped the
    # clock back, the newest segments sorted first and the limit dropped them, keeping the old ones.
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=3_000, segment_max_bytes=500, count=counts)
    for i in range(30):
        spool.append(line(i, padding=40))
    spool.close()
    real_time_ns = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + step_s * 10**9)
    # (stepped forward, the restart below comes after the clock was set right again: back an hour)
    for i in range(30, 60):
        spool.append(line(i, padding=40))
    spool.close()
    if step_s > 0:
        monkeypatch.setattr(time, "time_ns", real_time_ns)
    restarted = Spool(tmp_path, max_bytes=3_000, segment_max_bytes=500, count=counts)  # a new process
    for i in range(60, 90):
        restarted.append(line(i, padding=40))
    restarted.close()
    dropped = restarted.enforce_limit()
    kept = drain(restarted)
    assert kept == list(range(90 - len(kept), 90)) and len(kept) + dropped == 90 and len(kept) > 30


@pytest.mark.parametrize("stamp", ["99999999999999999999", "50000000000000000000"])
def test_a_segment_named_beyond_any_clock_neither_stops_nor_leads_later_names(tmp_path: Path, stamp: str) -> None:
    # Found by a probe: new names ran on from the newest name in the spool, so after one named with twenty 9s (by
    # hand, damaged, a clock thousands of years ahead) they had 21 digits, which is no segment's name: every later
    # event of every worker stayed in the spool, neither sent, dropped nor counted against its limit (20 of 20 here).
    # A name's time past EventTime's end (2106) is no clock's: it is placed by its last write, and names go on from
    # the clock.
    far = tmp_path / f"{stamp}-1-0.jsonl"
    far.write_bytes(line(-1))
    os.utime(far, ns=(time.time_ns() - 10**9,) * 2)  # written a second ago: older than what comes next
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=10**9, segment_max_bytes=200, count=counts)
    for i in range(20):
        spool.append(line(i, padding=40))
    spool.close()
    names = sorted(path.name for path in tmp_path.glob("*.jsonl"))
    assert all(re.fullmatch(r"[0-9]{20}-[0-9]+-[0-9]+\.jsonl", name) for name in names), names
    assert drain(spool) == list(range(-1, 20)) and counts == {"spooled": 20}
    assert list(tmp_path.glob("*.jsonl")) == []


def _spool_under_file_size_limit(root: Path, limit: int, events: int, padding: int) -> tuple[dict, str]:
    """Append `events` lines to a spool in a process whose files may grow to `limit` bytes at most (RLIMIT_FSIZE:
    `ulimit -f`, systemd's LimitFSIZE, docker's --ulimit fsize), a limit check every 20 events as the app's thread
    makes every second: (its counts, its log)."""
    script = textwrap.dedent(f"""
        import collections, json, logging, resource
        from eventlog.records import encode_line
        from eventlog.spool import Spool
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        counts = collections.Counter()
        spool = Spool({str(root)!r}, 10**9, 4 * 1024 * 1024, lambda name, n: counts.update({{name: n}}))
        for i in range({events}):
            spool.append(encode_line({{"event_id": f"e{{i}}", "i": i, "pad": "x" * {padding}}}))
            if i % 20 == 19:
                spool.enforce_limit()
        spool.enforce_limit()
        spool.close()
        print(json.dumps(counts))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    return json.loads(done.stdout), done.stderr


def test_a_segment_at_the_file_size_limit_is_sealed_and_the_event_goes_into_a_new_one(tmp_path: Path) -> None:
    # A process may write files up to RLIMIT_FSIZE (Python ignores SIGXFSZ: the write is cut short, then EFBIG).
    # Before, that was taken for a full disk: each event dropped until the next limit check, which then deleted
    # the oldest segment to make room that deleting never makes (no disk was full): a 20 KB limit under 4 MiB
    # segments lost 121 of this test's 200 events and the 10 waiting before them, each counted as dropped.
    root = tmp_path / "spool"
    earlier = Spool(root, 10**9, 10**6, Counts())  # events an outage left waiting
    for i in range(1000, 1010):
        earlier.append(line(i))
    earlier.close()
    counts, logged = _spool_under_file_size_limit(root, limit=20_000, events=200, padding=300)
    assert counts == {"spooled": 200}, logged
    assert all(path.stat().st_size <= 20_000 for path in root.glob("*.jsonl"))
    assert drain(Spool(root, 10**9, 10**6, Counts())) == list(range(1000, 1010)) + list(range(200))


def test_an_event_larger_than_the_file_size_limit_is_dropped_alone(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    earlier = Spool(root, 10**9, 10**6, Counts())
    for i in range(1000, 1010):
        earlier.append(line(i))
    earlier.close()
    counts, logged = _spool_under_file_size_limit(root, limit=200, events=3, padding=300)
    assert counts == {"dropped": 3}
    assert "over the largest file this process may write (RLIMIT_FSIZE: 200 bytes)" in logged
    assert "oldest" not in logged  # no segment deleted for room that deleting cannot make
    assert drain(Spool(root, 10**9, 10**6, Counts())) == list(range(1000, 1010))


def test_a_check_through_many_small_segments_reads_the_spools_size_once_a_segments_worth(tmp_path: Path) -> None:
    """An outage at low traffic seals each worker's segment every 10 s, a few events each: thousands of small segments.
    Read again before every deletion (so that checks side by side see each other's), the spool's size cost a listing
    per segment dropped: 2,000 of them took 38 s to drop, where one listing took 0.1 s."""
    stamp = time.time_ns()
    for i in range(1_500):
        (tmp_path / f"{stamp + i * 10**9:020d}-{100 + i % 4}-{i}.jsonl").write_bytes(line(i) * 3)
    counts = Counts()
    spool = Spool(tmp_path, max_bytes=1_000, segment_max_bytes=4 * 1024 * 1024, count=counts)
    started = time.monotonic()
    dropped = spool.enforce_limit()
    assert time.monotonic() - started < 5
    assert dropped == counts["dropped"] and sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) <= 1_000


def test_a_replay_of_many_segments_lists_the_folder_once_not_once_a_claim(tmp_path: Path, monkeypatch) -> None:
    """Listed and sorted for every claim, a replay of N segments cost N listings: 5,000 small segments of an
    outage took 81 s to claim. Claims now walk one listing; a segment sealed after it is found by the next."""
    stamp = time.time_ns()
    for i in range(300):
        (tmp_path / f"{stamp + i:020d}-{100 + i % 4}-{i}.jsonl").write_bytes(line(i))
    spool = Spool(tmp_path, 10**9, 10**6, Counts())
    listings = []
    listed = spool.segment_paths
    monkeypatch.setattr(spool, "segment_paths", lambda: listings.append(1) or listed())
    first = spool.claim_next(set())
    assert first is not None and json.loads(first.path.read_bytes())["i"] == 0
    (tmp_path / f"{stamp + 1000:020d}-100-1000.jsonl").write_bytes(line(1000))  # sealed after the listing
    first.release(delete=True)
    assert drain(spool) == list(range(1, 300)) + [1000]  # oldest first, the late one found by listing again
    assert len(listings) <= 3, f"{len(listings)} listings for 301 claims"


def test_a_check_killed_midway_has_counted_every_segment_it_deleted(tmp_path: Path) -> None:
    """A check far over the limit runs for seconds (it reads each segment it drops), and a worker can be killed in
    it: gunicorn's graceful_timeout, the OOM killer. Its drops were counted once at the check's end, so the events
    of every segment it had deleted by then were lost uncounted, though /metrics' counts (prometheus_client's
    multiprocess files) outlive the process. Now each segment is counted as it goes."""
    import signal

    root, counted = tmp_path / "spool", tmp_path / "counted"
    writer = Spool(root, max_bytes=10**12, segment_max_bytes=200_000, count=Counts())
    for i in range(16_000):  # ~16 MB in 80 segments of ~200 events
        writer.append(line(i, padding=1_000))
    writer.close()
    script = textwrap.dedent(f"""
        import os
        from eventlog.spool import Spool
        out = os.open({str(counted)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # as a multiprocess counter: at once
        def count(name, n):
            if name == "dropped":
                os.write(out, f"{{n}}\\n".encode())
        Spool({str(root)!r}, 1, 200_000, count).enforce_limit()
    """)
    check = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 60
        while len(list(root.glob("*.jsonl"))) > 70:  # killed once 10 segments are gone, before its end
            assert check.poll() is None, "the check ended before it could be killed midway: make the spool larger"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        check.send_signal(signal.SIGKILL)
    finally:
        check.wait(60)
    left = len(drain(Spool(root, 10**12, 10**6, Counts())))
    deleted = 16_000 - left
    counts = [int(n) for n in counted.read_text().split()] if counted.exists() else []
    assert deleted - 200 <= sum(counts) <= deleted, (deleted, counts)  # all but, at worst, the one being deleted


def test_a_destination_file_another_user_made_holds_the_spool_for_this_server_too(tmp_path: Path) -> None:
    """A server run once as root (`python -m app`, a container's default user) leaves .destination-<digest> owned by
    root, 0644; the app's own user may read it, and delete and write segments in the shared folder, but opened it to
    write: the server did not start, `cannot start: PermissionError: [Errno 13] Permission denied: '.../.destination-
    ...'`. Its address is the same bytes (the name is its digest), and a hold is a flock, which a read-only
    descriptor takes: it is held read-only."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a file of another user's is made as root, then read as nobody")
    folder = Path(tempfile.mkdtemp(prefix="shelfcast-spool-"))  # not under tmp_path: nobody cannot pass its 0700
    try:
        folder.chmod(0o777)
        root_server = Spool(folder, 10**9, 10**6, Counts())
        root_server.hold_destination("Fluentd at 127.0.0.1:1")
        root_server.append(line(0))
        root_server.close()
        root_server.release_destination()  # stopped: its .destination-* file stays, root's
        script = textwrap.dedent(f"""
            import os
            from eventlog.spool import Spool, SpoolInUse
            os.setgid(65534)
            os.setuid(65534)  # nobody: the app's own user
            spool = Spool({str(folder)!r}, 10**9, 10**6, lambda *a: None)
            spool.hold_destination("Fluentd at 127.0.0.1:1")
            other = Spool({str(folder)!r}, 10**9, 10**6, lambda *a: None)
            try:
                other.hold_destination("Fluentd at 127.0.0.1:2")
            except SpoolInUse as exc:
                print("refused:", exc)
            print("last:", spool.last_to_leave())
        """)
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert "sends its events to Fluentd at 127.0.0.1:1, this one to Fluentd at 127.0.0.1:2" in done.stdout
        assert "last: True" in done.stdout
    finally:
        shutil.rmtree(folder)
