"""A full disk and a full spool while Fluentd is down: drops are counted, and delivery resumes by itself.

The full disk is a real one: a 256 KiB tmpfs mounted for the test (needs root or
CAP_SYS_ADMIN; skips otherwise). Against the real Fluentd-protocol receiver.
"""

from __future__ import annotations

import collections
import subprocess
import time
from pathlib import Path

import pytest

from app.events import TAG, PredictionEventSink


@pytest.fixture
def tiny_disk(tmp_path: Path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


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
