"""The sink against a real Fluentd forward-protocol receiver (@fluent-org/logger's FluentServer).

The receiver is stopped and restarted while several threads emit, and every event must
arrive exactly once (counted by event_id). Needs Node.js; skips without it.
"""

from __future__ import annotations

import collections
import datetime as dt
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from app.events import TAG, PredictionEventSink
from app.spool import Spool

REPO_ROOT = Path(__file__).resolve().parents[2]


def fluent_sink(port: int, spool_root: Path, **overrides: Any) -> PredictionEventSink:
    environ = {"FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(port), "SHELFCAST_EVENT_SPOOL": str(spool_root)}
    return PredictionEventSink.from_environment(environ, **overrides)


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def counts_by_event_id(receiver) -> collections.Counter:
    """What a stopped receiver got, counted by event_id."""
    return collections.Counter(event["record"]["event_id"] for event in receiver.events())


def test_events_arrive_with_the_tag_their_time_and_their_content(fluentd_receiver, tmp_path: Path) -> None:
    with fluent_sink(fluentd_receiver.port, tmp_path / "spool") as sink:
        event_id = sink.emit(
            {"request_id": "req-1", "model_version": "7", "features": np.array([0.5, 2.0]), "output": np.float32(3.5)}
        )
    fluentd_receiver.stop()
    (received,) = fluentd_receiver.events()
    record = received["record"]
    assert received["tag"] == TAG == "shelfcast.prediction"
    assert record == {
        "event_id": event_id,
        "request_id": "req-1",
        "timestamp": record["timestamp"],
        "model_version": "7",
        "features": [0.5, 2.0],
        "output": 3.5,
    }
    assert abs(received["time"] - dt.datetime.fromisoformat(record["timestamp"]).timestamp()) < 1e-3
    assert sink.stats.snapshot()["delivered"] == 1


def test_receiver_stopped_and_restarted_under_load_gets_every_event_exactly_once(fluentd_receiver, tmp_path: Path) -> None:
    threads, per_thread = 4, 1000
    sink = fluent_sink(fluentd_receiver.port, tmp_path / "spool", batch_size=100, retry_max_s=0.3)
    sent: list[str] = []
    lock = threading.Lock()

    def request_thread(thread: int) -> None:
        for n in range(per_thread):
            event_id = sink.emit({"request_id": f"t{thread}-{n}", "output": float(n)})
            with lock:
                sent.append(event_id)
            if n % 10 == 0:
                time.sleep(0.01)  # spread the load over a second or two

    workers = [threading.Thread(target=request_thread, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    emitted = lambda: sink.stats.snapshot()["emitted"]  # noqa: E731
    for stop_at, start_at in ((800, 1600), (2400, 3000)):
        wait_until(lambda: emitted() >= stop_at)
        fluentd_receiver.stop()
        wait_until(lambda: emitted() >= start_at)
        time.sleep(0.1)
        fluentd_receiver.start()  # same port
    for worker in workers:
        worker.join()
    sink.close()
    fluentd_receiver.stop()

    stats = sink.stats.snapshot()
    assert stats["send_failures"] >= 2, stats  # the sink did see both outages
    received = counts_by_event_id(fluentd_receiver)
    assert len(sent) == threads * per_thread == len(set(sent))
    assert set(received) == set(sent), f"{len(set(sent) - set(received))} events lost"
    duplicated = {event_id: n for event_id, n in received.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} events received more than once"
    assert stats["delivered"] == len(sent) and stats["lost"] == 0


def test_a_backlog_left_by_a_crashed_process_is_replayed_by_the_next_one(fluentd_receiver, tmp_path: Path) -> None:
    fluentd_receiver.stop()
    # A real app process emits 300 events while Fluentd is down and dies without close().
    child = textwrap.dedent(
        f"""
        import os, time
        from app.events import PredictionEventSink
        sink = PredictionEventSink.from_environment(
            {{"FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": "{fluentd_receiver.port}",
              "SHELFCAST_EVENT_SPOOL": {str(tmp_path / "spool")!r}}})
        ids = [sink.emit({{"output": n}}) for n in range(300)]
        while sink.stats.snapshot()["spooled"] < 300:
            time.sleep(0.01)
        print(" ".join(ids), flush=True)
        os._exit(9)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr
    crashed_ids = result.stdout.split()

    fluentd_receiver.start()
    with fluent_sink(fluentd_receiver.port, tmp_path / "spool") as sink:
        wait_until(lambda: sink.stats.snapshot()["delivered"] == 300)
    fluentd_receiver.stop()
    assert counts_by_event_id(fluentd_receiver) == collections.Counter(crashed_ids)


def test_a_crash_mid_replay_does_not_resend_committed_batches(fluentd_receiver, tmp_path: Path) -> None:
    fluentd_receiver.stop()
    with fluent_sink(fluentd_receiver.port, tmp_path / "spool") as sink:
        ids = [sink.emit({"output": n}) for n in range(1000)]
    fluentd_receiver.start()

    # A process sends 3 batches of 100 (each acknowledged, then committed) and dies.
    child = textwrap.dedent(
        f"""
        import os
        from app.events import TAG, AcknowledgedFluentSender, send_next_batch
        from app.spool import Spool
        spool = Spool.claim({str(tmp_path / "spool")!r})
        sender = AcknowledgedFluentSender(TAG, host="127.0.0.1", port={fluentd_receiver.port})
        for _ in range(3):
            assert send_next_batch(spool, sender, batch_size=100) == (100, 0)
        os._exit(9)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr
    fluentd_receiver.stop()
    assert counts_by_event_id(fluentd_receiver) == collections.Counter(ids[:300])
    fluentd_receiver.start()

    with fluent_sink(fluentd_receiver.port, tmp_path / "spool") as sink:
        wait_until(lambda: sink.stats.snapshot()["delivered"] == 700)
    fluentd_receiver.stop()
    assert counts_by_event_id(fluentd_receiver) == collections.Counter(ids)
    leftover = Spool.claim(tmp_path / "spool")
    assert not leftover.has_pending()
    leftover.close()


def test_replay_keeps_the_order_events_were_spooled_in(fluentd_receiver, tmp_path: Path) -> None:
    fluentd_receiver.stop()
    with fluent_sink(fluentd_receiver.port, tmp_path / "spool", batch_size=50) as sink:
        ids = [sink.emit({"output": n}) for n in range(400)]
    fluentd_receiver.start()
    with fluent_sink(fluentd_receiver.port, tmp_path / "spool", batch_size=50) as sink:
        wait_until(lambda: sink.stats.snapshot()["delivered"] == 400)
    fluentd_receiver.stop()
    assert [event["record"]["event_id"] for event in fluentd_receiver.events()] == ids
