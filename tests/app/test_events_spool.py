"""The spool keeps undelivered events in order, across rotation, reopening and crashes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from app.events import encode_line
from app.spool import Spool, SpoolBusyError, SpoolError, SpoolPosition, segment_name

REPO_ROOT = Path(__file__).resolve().parents[2]


def lines(count: int, start: int = 0, padding: int = 0) -> list[bytes]:
    return [encode_line({"event_id": f"e{i}", "i": i, "pad": "x" * padding}) for i in range(start, start + count)]


def drain(spool: Spool, batch_size: int = 7) -> tuple[list[int], int]:
    """Read and commit until nothing is pending: (the `i` of every record, lines skipped)."""
    seen, skipped = [], 0
    while spool.has_pending():
        batch = spool.read(batch_size)
        seen.extend(record["i"] for record in batch.records)
        skipped += batch.skipped
        spool.commit(batch.end)
    return seen, skipped


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.jsonl"))


def test_records_come_back_in_order_across_rotated_segments_which_are_then_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=300)
    for start in range(0, 60, 6):
        spool.append(lines(6, start))
    spool.sync()
    assert len(segments(tmp_path)) > 3

    assert drain(spool) == (list(range(60)), 0)
    assert not spool.has_pending() and spool.pending_bytes() == 0
    assert [p.stat().st_size for p in segments(tmp_path)] == [0]  # only the fresh active segment is left
    spool.close()
    assert segments(tmp_path) == []


def test_a_batch_that_was_not_committed_is_read_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(lines(10))
    first, again = spool.read(4), spool.read(4)
    assert first == again and [r["i"] for r in first.records] == [0, 1, 2, 3]
    spool.commit(first.end)
    assert [r["i"] for r in spool.read(4).records] == [4, 5, 6, 7]
    spool.close()


def test_reopening_resumes_at_the_committed_position(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=400)
    spool.append(lines(30))
    spool.commit(spool.read(10).end)
    spool.read(10)  # delivered, say, but never acknowledged: not committed
    spool.close()

    reopened = Spool(tmp_path, segment_max_bytes=400)
    assert drain(reopened) == (list(range(10, 30)), 0)
    reopened.append(lines(3, 30))
    assert drain(reopened) == ([30, 31, 32], 0)
    reopened.close()


def test_the_position_survives_a_crashed_process(tmp_path: Path) -> None:
    # A real process appends, commits 40 records, reads 40 more, and dies without closing.
    child = textwrap.dedent(
        f"""
        import os
        from app.events import encode_line
        from app.spool import Spool
        spool = Spool({str(tmp_path)!r}, segment_max_bytes=1000)
        spool.append([encode_line({{"i": i}}) for i in range(100)])
        spool.sync()
        spool.commit(spool.read(40).end)
        spool.read(40)
        os._exit(3)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr

    spool = Spool(tmp_path, segment_max_bytes=1000)  # the dead process's lock is gone
    assert drain(spool) == (list(range(40, 100)), 0)
    spool.close()


def test_a_torn_last_line_from_a_crash_is_skipped_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    spool.append(lines(3))
    spool.close()
    (torn_segment,) = segments(tmp_path)
    with open(torn_segment, "ab") as handle:
        handle.write(b'{"event_id": "e3", "i": 3, "pa')

    spool = Spool(tmp_path)
    spool.append(lines(2, 10))
    assert drain(spool) == ([0, 1, 2, 10, 11], 1)
    assert any(torn_segment.name in r.message and "torn" in r.message for r in caplog.records)
    spool.close()


def test_an_unreadable_line_is_skipped_and_named_by_file_and_byte(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    good = lines(2)
    spool.append([good[0], b"not json\n", b"[1, 2]\n", good[1]])
    assert drain(spool) == ([0, 1], 2)
    messages = [r.message for r in caplog.records]
    offset = len(good[0])
    assert any(segment_name(0) in m and f"byte {offset}" in m for m in messages), messages
    assert any("expected a JSON object" in m for m in messages), messages
    spool.close()


def test_one_owner_per_directory_and_claim_adopts_an_abandoned_backlog(tmp_path: Path) -> None:
    first, second = Spool.claim(tmp_path), Spool.claim(tmp_path)
    assert (first.directory.name, second.directory.name) == ("0", "1")
    with pytest.raises(SpoolBusyError, match="in use"):
        Spool(first.directory)

    first.append(lines(3))
    first.close()  # e.g. a worker that exited with Fluentd down
    adopter = Spool.claim(tmp_path)
    assert adopter.directory == first.directory
    assert drain(adopter) == ([0, 1, 2], 0)
    adopter.close()
    second.close()


def test_concurrent_appends_never_interleave_lines(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_max_bytes=64 * 1024)
    threads, per_thread = 8, 150

    def writer(thread: int) -> None:
        for n in range(per_thread):
            spool.append(lines(1, thread * 1000 + n, padding=(n * 97) % 5000))

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    seen, skipped = drain(spool, batch_size=100)
    assert skipped == 0 and len(seen) == threads * per_thread
    for thread in range(threads):
        assert [i for i in seen if i // 1000 == thread] == [thread * 1000 + n for n in range(per_thread)]
    spool.close()


def test_a_corrupt_position_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "position.json").write_text('{"segment": 1', encoding="utf-8")
    with pytest.raises(SpoolError, match="position.json: not valid JSON"):
        Spool(tmp_path)
    (tmp_path / "position.json").write_text('{"segment": -1, "offset": 0}', encoding="utf-8")
    with pytest.raises(SpoolError, match="position.json: expected"):
        Spool(tmp_path)


def test_commit_outside_what_was_written_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(lines(2))
    with pytest.raises(SpoolError, match="outside"):
        spool.commit(SpoolPosition(0, 10_000))
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.append(lines(1))


def test_position_file_is_plain_json(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(lines(5))
    batch = spool.read(2)
    spool.commit(batch.end)
    assert json.loads((tmp_path / "position.json").read_text()) == {"segment": 0, "offset": batch.end.offset}
    spool.close()
