"""A full disk and a full spool while Fluentd is down: drops are counted, and delivery resumes by itself.

The full disk is a real one: a 256 KiB tmpfs mounted for the test (needs root or
CAP_SYS_ADMIN; skips otherwise). Against the real Fluentd-protocol receiver.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from app.events import TAG, PredictionEventSink
from eventlog.records import encode_line
from eventlog.spool import Spool, SpoolInUse
from tests.app.conftest import Counts
from tests.conftest import small_disk

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_disk(tmp_path: Path):
    with small_disk(tmp_path / "disk", "256k") as mount_point:
        yield mount_point


def fill(spool: Spool, start: int = 0) -> int:
    """Append ~300-byte events until the disk refuses one; the number written."""
    n = start
    while spool.append(encode_line({"event_id": f"e{n}", "pad": "x" * 250})):
        n += 1
        assert n - start < 10_000, "the small disk never filled"
    return n - start


def test_the_first_check_after_a_failed_write_frees_room_though_the_writer_still_holds_its_segments(
        tiny_disk: Path) -> None:
    """No sync has run, so every sealed segment is still locked by its writer (this process)."""
    counts = Counts()
    spool = Spool(tiny_disk / "spool", max_bytes=10**9, segment_max_bytes=32 * 1024, count=counts)
    written = fill(spool)
    assert counts["dropped"] == 1 and written > 200
    freed = spool.enforce_limit()
    assert freed > 0 and counts["dropped"] == 1 + freed  # the oldest segment went, counted
    assert spool.append(encode_line({"event_id": "after", "pad": ""}))  # and the disk takes events again
    spool.close()


def test_a_check_during_a_slow_fsync_in_another_thread_frees_room(tiny_disk: Path, monkeypatch) -> None:
    """The sync thread takes every sealed segment at once, then fsyncs them one by one. When an fsync held
    the writer's lock, a check that ran in between found them all locked, freed nothing and cleared the
    failure: with no later write the full disk stayed full (seen once in CI)."""
    counts = Counts()
    spool = Spool(tiny_disk / "spool", max_bytes=10**9, segment_max_bytes=32 * 1024, count=counts)
    fill(spool)
    fsync_began = threading.Event()

    def slow_fsync(fd: int) -> None:  # the other thread's first fsync takes a second; this thread's are quick
        if threading.current_thread() is syncer and not fsync_began.is_set():
            fsync_began.set()
            time.sleep(1.0)

    monkeypatch.setattr(os, "fsync", slow_fsync)  # the spool calls os.fsync
    syncer = threading.Thread(target=spool.sync, name="sync")
    syncer.start()
    assert fsync_began.wait(5)
    try:
        assert spool.enforce_limit() > 0  # the segments being fsynced are not locked: room is freed
    finally:
        syncer.join()
    spool.close()


def test_a_write_that_fails_during_a_check_is_not_forgotten(tiny_disk: Path, monkeypatch) -> None:
    """The check that runs while a write fails must leave the failure for the next one, which frees room
    even if no event comes in between (an idle server after a burst)."""
    counts = Counts()
    spool = Spool(tiny_disk / "spool", max_bytes=10**9, segment_max_bytes=32 * 1024, count=counts)
    fill(spool)
    spool.enforce_limit()  # room made; the disk is filled up again below, by something else
    spool.sync()
    fill_disk(tiny_disk)
    dropped_before = counts["dropped"]
    paths = spool.segment_paths

    def a_write_fails_meanwhile():
        assert not spool.append(encode_line({"event_id": "during", "pad": "x" * 250}))
        return paths()

    monkeypatch.setattr(spool, "segment_paths", a_write_fails_meanwhile)
    assert spool.enforce_limit() == 0  # it began before the failure: the spool was under its limit
    monkeypatch.setattr(spool, "segment_paths", paths)
    assert counts["dropped"] == dropped_before + 1
    assert spool.enforce_limit() > 0  # no write since: the failure alone makes this check free room
    spool.close()


def sink_for(port: int, spool: Path, **overrides) -> PredictionEventSink:
    environ = {"FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(port), "SHELFCAST_EVENT_SPOOL": str(spool)}
    return PredictionEventSink.from_environment(environ, retry_max_s=0.2, close_timeout_s=0.2, **overrides)


def emit(sink: PredictionEventSink, count: int) -> list[str]:
    ids = [sink.emit({"request_id": f"r{n}", "output": float(n), "pad": "x" * 250}) for n in range(count)]
    return [event_id for event_id in ids if event_id is not None]


def deliver_and_count(receiver, spool: Path, answered: list[str]) -> tuple[int, int, dict]:
    """Start Fluentd, let a fresh process-like sink empty the spool: (lost, duplicated, its stats)."""
    receiver.start()
    started = time.monotonic()
    with sink_for(receiver.port, spool) as sink:
        while list(spool.glob("*.jsonl")):
            assert time.monotonic() - started < 30, "the spool was not emptied: delivery is stuck"
            time.sleep(0.05)
    receiver.stop()
    received = collections.Counter(e["record"]["event_id"] for e in receiver.events() if e["tag"] == TAG)
    lost = len(set(answered) - set(received))
    duplicated = sum(n - 1 for n in received.values() if n > 1)
    return lost, duplicated, sink.stats.snapshot()


def test_a_full_disk_drops_counted_events_and_delivery_resumes(fluentd_receiver, tiny_disk: Path) -> None:
    fluentd_receiver.stop()
    spool = tiny_disk / "spool"
    sink = sink_for(fluentd_receiver.port, spool, segment_max_bytes=32 * 1024)
    try:  # a failed assertion must not leave the sink's threads running into the next tests
        answered = emit(sink, 2500)  # ~750 KB of events for 256 KiB of disk
        refused_so_far = sink.stats.snapshot()["emitted"] - len(answered)
        deadline = time.monotonic() + 30
        while sink.stats.snapshot()["dropped"] == refused_so_far:  # the next check drops the oldest to make room
            assert time.monotonic() < deadline, f"no room was made on the full disk: {sink.stats.snapshot()}"
            time.sleep(0.05)
        answered += emit(sink, 200)  # the disk takes events again
    finally:
        sink.close()
    stats = sink.stats.snapshot()
    refused = stats["emitted"] - len(answered)  # writes the full disk refused: dropped, never answered with an id
    dropped_after_writing = stats["dropped"] - refused
    assert refused > 0 and dropped_after_writing > 0, stats

    lost, duplicated, replay = deliver_and_count(fluentd_receiver, spool, answered)
    print(f"full disk: {stats['emitted']} emitted, {refused} refused by the disk, {dropped_after_writing} dropped "
          f"oldest, {lost} lost, {duplicated} duplicated; replay {replay}")
    assert lost == dropped_after_writing  # every event missing downstream was counted as dropped
    assert duplicated == 0


def test_over_the_spool_limit_the_oldest_are_dropped_and_only_they(fluentd_receiver, tmp_path: Path) -> None:
    fluentd_receiver.stop()
    spool = tmp_path / "spool"
    limit = 200_000
    sink = sink_for(fluentd_receiver.port, spool, spool_max_bytes=limit, segment_max_bytes=20_000)
    answered = emit(sink, 2000)  # ~600 KB
    time.sleep(1.5)
    sink.close()
    size = sum(p.stat().st_size for p in spool.glob("*.jsonl"))
    stats = sink.stats.snapshot()
    assert size <= limit + 20_000 and stats["dropped"] > 0 and len(answered) == 2000
    lost, duplicated, _ = deliver_and_count(fluentd_receiver, spool, answered)
    print(f"spool limit {limit} B: {len(answered)} answered, {stats['dropped']} dropped (counted), {lost} lost, "
          f"{duplicated} duplicated")
    assert lost == stats["dropped"] and duplicated == 0
    received_order = answered[-(len(answered) - lost):]
    assert lost < len(answered) and set(answered) - set(received_order) == set(answered[:lost])  # the oldest went


def test_two_processes_on_one_full_disk_lose_only_counted_events(fluentd_receiver, tiny_disk: Path) -> None:
    """Two workers share the spool on a full disk with Fluentd down: each one's checks free room through
    the other's segments too, and whatever is missing downstream was counted as dropped by one of them."""
    fluentd_receiver.stop()
    spool = tiny_disk / "spool"
    script = textwrap.dedent(f"""
        import json, time
        from pathlib import Path
        from app.events import PredictionEventSink
        env = {{"FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": "{fluentd_receiver.port}",
               "SHELFCAST_EVENT_SPOOL": "{spool}"}}
        sink = PredictionEventSink.from_environment(env, retry_max_s=0.2, close_timeout_s=0.2,
                                                    segment_max_bytes=32 * 1024)
        answered = []
        for burst in range(2):
            for n in range(1500):
                event_id = sink.emit({{"request_id": f"r{{burst}}-{{n}}", "output": 1.0, "pad": "x" * 250}})
                if event_id is not None:
                    answered.append(event_id)
            time.sleep(2.5)  # the checks (each second) drop the oldest segments to make room for the next burst
        sink.close()
        print(json.dumps({{"answered": answered, "stats": sink.stats.snapshot()}}))
    """)
    workers = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    results = [json.loads(worker.communicate(timeout=60)[0].strip().splitlines()[-1]) for worker in workers]
    answered = [event_id for result in results for event_id in result["answered"]]
    refused = sum(result["stats"]["emitted"] for result in results) - len(answered)
    dropped_after_writing = sum(result["stats"]["dropped"] for result in results) - refused
    assert refused > 0 and dropped_after_writing > 0, [result["stats"] for result in results]

    lost, duplicated, _ = deliver_and_count(fluentd_receiver, spool, answered)
    print(f"two processes, full disk: {len(answered)} answered, {refused} refused, {dropped_after_writing} dropped "
          f"oldest, {lost} lost, {duplicated} duplicated")
    assert lost == dropped_after_writing and duplicated == 0


def fill_disk(where: Path) -> Path:
    """Fill the disk holding ``where`` with a file of its own (something else filled it); that file."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: the disk is full
        pass
    finally:
        os.close(fd)
    return filler


def test_a_server_starts_on_a_full_disk_and_its_events_go_once_there_is_room(fluentd_receiver,
                                                                              tiny_disk: Path) -> None:
    """The spool's .destination-* file (the hold for one Fluentd) is made at start and the address written in it:
    on a full disk that write failed, and the app did not start at all, `cannot start: OSError: [Errno 28] No space
    left on device`, naming no file, where a running one on a full disk drops events, counted, and serves."""
    spool = tiny_disk / "spool"
    spool.mkdir()
    filler = fill_disk(tiny_disk)
    sink = sink_for(fluentd_receiver.port, spool)
    try:
        assert sink.emit({"request_id": "full", "output": 1.0, "pad": "x" * 250}) is None  # no room: dropped
        assert sink.stats.snapshot()["dropped"] == 1
        with pytest.raises(SpoolInUse, match="another destination"):  # still held for its Fluentd, address or not
            Spool(spool, 10**9, 10**6, Counts()).hold_destination("Fluentd at 127.0.0.1:1")
        filler.unlink()  # room again
        deadline = time.monotonic() + 10
        while (event_id := sink.emit({"request_id": "room", "output": 1.0})) is None:  # the next check lets it try
            assert time.monotonic() < deadline, f"the spool never took events again: {sink.stats.snapshot()}"
            time.sleep(0.1)
        while sink.stats.snapshot()["sent"] < 1:  # sent and confirmed while the server runs
            assert time.monotonic() < deadline + 20, f"the event was never sent: {sink.stats.snapshot()}"
            time.sleep(0.1)
    finally:
        sink.close()
    fluentd_receiver.stop()
    assert [e["record"]["event_id"] for e in fluentd_receiver.events() if e["tag"] == TAG] == [event_id]


def test_a_server_starts_on_a_disk_out_of_inodes_and_holds_its_spool_once_there_is_room(fluentd_receiver,
                                                                                        tmp_path: Path) -> None:
    """Found by a probe: a disk with bytes free and no room for a new file (every inode taken: many small files, a
    quota) is a full disk too, but the spool's check that it can make files in its folder, then its .destination-*
    file, took it for a refusal: the server did not start, `cannot start: OSError: [Errno 28] event spool ...:
    cannot create files in it (No space left on device)`. Now it starts, drops its events, counted, holds the spool
    for its Fluentd once a file can be made, and sends again."""
    with small_disk(tmp_path / "disk", "4m", inodes=8) as disk:
        spool = disk / "spool"
        spool.mkdir()
        fillers = []
        with contextlib.suppress(OSError):  # ENOSPC: every inode taken, by something else
            while len(fillers) < 100:
                (disk / f"filler-{len(fillers)}").touch()
                fillers.append(disk / f"filler-{len(fillers)}")
        assert 0 < len(fillers) < 100
        sink = sink_for(fluentd_receiver.port, spool)
        try:
            assert sink.emit({"request_id": "full", "output": 1.0}) is None  # no room: dropped, counted
            assert sink.stats.snapshot()["dropped"] == 1
            for filler in fillers[:3]:
                filler.unlink()  # room again
            deadline = time.monotonic() + 10
            while (event_id := sink.emit({"request_id": "room", "output": 1.0})) is None:
                assert time.monotonic() < deadline, f"the spool never took events again: {sink.stats.snapshot()}"
                time.sleep(0.1)
            while sink.stats.snapshot()["sent"] < 1:  # sent and confirmed while the server runs
                assert time.monotonic() < deadline + 20, f"the event was never sent: {sink.stats.snapshot()}"
                time.sleep(0.1)
            with pytest.raises(SpoolInUse, match=f"sends its events to Fluentd at 127.0.0.1:{fluentd_receiver.port},"):
                Spool(spool, 10**9, 10**6, Counts()).hold_destination("Fluentd at 127.0.0.1:1")
        finally:
            sink.close()
    fluentd_receiver.stop()
    assert [e["record"]["event_id"] for e in fluentd_receiver.events() if e["tag"] == TAG] == [event_id]
