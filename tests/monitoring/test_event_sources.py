"""pipeline/event_sources.py's JSON-lines reader: the newest events only, prediction events only."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from pipeline import event_sources
from pipeline.event_sources import EventSourceError, read_jsonl_events

START = dt.datetime(2017, 8, 1, tzinfo=dt.timezone.utc)


def event(second: float, **fields) -> dict:
    return {"event_id": f"e{second}", "timestamp": (START + dt.timedelta(seconds=second)).isoformat(),
            "model_variant": "production", "output": {"unit_sales": 1.0}, "inputs": {}, **fields}


def lines(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_only_the_newest_events_are_read_from_the_end_of_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(event_sources, "READ_BLOCK", 64)  # many block boundaries, lines longer than a block
    log = tmp_path / "predictions.jsonl"
    # a head that is not JSON at all: never parsed, because the newest 30 events come after it
    log.write_text("not json\n" * 5 + lines(*(event(s) for s in range(100))) + "\n\r\n" + '{"event_id": "to')
    found = read_jsonl_events(log, 30)
    assert [e["event_id"] for e in found.events] == [f"e{s}" for s in range(70, 100)]
    with pytest.raises(EventSourceError, match=r"predictions\.jsonl: line 5: not JSON"):
        read_jsonl_events(log, 101)  # reaching the head: the error names the line, counted from the start


def test_a_line_that_is_not_utf8_is_named_as_such(tmp_path):
    # json.loads(bytes) guessed an encoding: a line of binary junk was reported as "'utf-32-be' codec can't decode"
    log = tmp_path / "predictions.jsonl"
    log.write_bytes(lines(event(0)).encode() + b"\x00\x00\xfe\xff junk \xff\n" + lines(event(1)).encode())
    with pytest.raises(EventSourceError, match=r"predictions\.jsonl: line 2: not UTF-8 text \('utf-8' codec"):
        read_jsonl_events(log, 10)


def test_unreadable_lines_can_be_skipped_and_counted_instead(tmp_path, monkeypatch):
    """The /monitoring page's reading: a line that cannot be an event (garbage bytes, truncated JSON, a JSON value
    that is not an object) is skipped and counted by why, anywhere in the log; the strict reading (drift, the
    release decision) still stops at it, naming the line."""
    monkeypatch.setattr(event_sources, "READ_BLOCK", 64)
    log = tmp_path / "predictions.jsonl"
    log.write_bytes(lines(event(0), event(1)).encode() + b"\xff\xfe\x00garbage\x00\n" + lines(event(2)).encode()
                    + b'{"event_id": "e3", "timestamp": "2017-08\n' + b"[1, 2]\nnull\n42\n" + lines(event(4)).encode()
                    + b'{"event_id": "to')  # torn: skipped, not counted (a writer may still be writing it)
    found = read_jsonl_events(log, 10, skip_unreadable=True)
    assert [e["event_id"] for e in found.events] == ["e0", "e1", "e2", "e4"]
    assert found.unreadable == {"not UTF-8 text": 1, "not JSON": 1, "not a JSON object": 3}
    assert found.unreadable_lines == 5
    assert [e["event_id"] for e in read_jsonl_events(log, 2, skip_unreadable=True).events] == ["e2", "e4"]
    with pytest.raises(EventSourceError, match=r"predictions\.jsonl: line 8: expected a JSON object, got int"):
        read_jsonl_events(log, 10)
    assert read_jsonl_events(tmp_path / "predictions.jsonl", 1).unreadable == {}
    # unreadable lines are bounded too (a probe: 300,000 lines of junk after the events, 1.4 s a read)
    from pipeline.event_sources import UNREADABLE_READ_MIN

    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(lines(event(0)).encode() + b"junk\n" * (UNREADABLE_READ_MIN + 5) + lines(event(1)).encode())
    bounded = read_jsonl_events(junk, 10, skip_unreadable=True)
    assert [e["event_id"] for e in bounded.events] == ["e1"] and bounded.unreadable_lines == UNREADABLE_READ_MIN


def test_the_canary_window_is_read_back_to_its_start_only(tmp_path):
    from pipeline.release import LoggedEvents

    since = START + dt.timedelta(hours=2)
    log = tmp_path / "predictions.jsonl"
    log.write_text(lines(
        event(0), event(7205, model_variant="canary"),
        event(7170),  # written late: skipped, and the reading goes on past it
        event(7201), event(7202, model_variant="canary")))
    traffic = LoggedEvents(path=log).traffic(since=since.timestamp())
    assert (traffic["production"].predictions, traffic["canary"].predictions) == (1, 2)
    assert [e["event_id"] for e in read_jsonl_events(log, 100, since).events] == ["e7201", "e7202", "e7205"]
    # every line is looked at: one that is not an event is an error wherever it is (before, one before the window
    # was never read, as the reading stopped at the first line more than 60 s older than it)
    log.write_text("not json\n" + log.read_text())
    with pytest.raises(EventSourceError, match=r"predictions\.jsonl: line 1: not JSON"):
        read_jsonl_events(log, 100, since)


def test_a_release_polls_only_what_was_logged_since_it_began(tmp_path, monkeypatch):
    """deploy's canary poll runs every second: reading a whole log (no line order is assumed) cost ~3 s of CPU a GB
    each time, so a release marks the log (its files' ends) and polls from there. The bytes before the mark are
    never read (a head that is not JSON raises nothing), those after it whatever their times; a log truncated
    since (logrotate's copytruncate) and grown past the mark again is read whole."""
    from pipeline.release import LoggedEvents

    monkeypatch.setattr(event_sources, "READ_BLOCK", 64)
    since = START + dt.timedelta(hours=2)
    log = tmp_path / "predictions.jsonl"
    log.write_text("not json\n" * 50 + lines(event(7300), event(7301, model_variant="canary")))
    marked = LoggedEvents(path=log).marked()
    with log.open("a") as handle:  # after the mark: a late line (older time) and the window's
        handle.write(lines(event(7190), event(7205, model_variant="canary"), event(7206)))
    assert marked.marks[log][0] < log.stat().st_size
    traffic = marked.traffic(since=since.timestamp())
    assert (traffic["production"].predictions, traffic["canary"].predictions) == (1, 1)
    with pytest.raises(EventSourceError, match="not JSON"):  # unmarked, the same read reaches the head
        LoggedEvents(path=log).traffic(since=since.timestamp())
    # copytruncate, then more traffic than the log held at the mark: all of it is the window's
    log.write_text(lines(*(event(7210 + s, model_variant="canary") for s in range(40))))
    assert log.stat().st_size > marked.marks[log][0]
    assert marked.traffic(since=since.timestamp())["canary"].predictions == 40
    # a log that does not exist yet at the mark is read whole once it does
    later = tmp_path / "later.jsonl"
    marked_before = LoggedEvents(path=later).marked()
    later.write_text(lines(event(7211, model_variant="canary")))
    assert marked_before.traffic(since=since.timestamp())["canary"].predictions == 1


def test_records_of_other_senders_are_skipped_and_counted(tmp_path):
    logs = tmp_path / "fluentd"  # a Fluentd file output (include_tag_key) next to monitoring's local log
    logs.mkdir()
    (logs / "prediction.20170801_0.jsonl").write_text(lines(
        event(1, tag="shelfcast.prediction"), event(2, tag="shelfcast.prediction")))
    (logs / "monitoring.jsonl").write_text(lines(
        {"tag": "shelfcast.metrics", "kind": "validation_metrics"}, {"tag": "shelfcast.drift", "kind": "drift"},
        {"kind": "drift", "drift": {}}))  # a file output without the tag
    found = read_jsonl_events(logs, 10)
    assert [e["event_id"] for e in found.events] == ["e1", "e2"]
    assert found.not_predictions == {"shelfcast.metrics": 1, "shelfcast.drift": 1, "kind drift": 1}
    mixed = logs / "prediction.20170801_0.jsonl"  # one log for both: the others do not count against max_events
    mixed.write_text(mixed.read_text() + (logs / "monitoring.jsonl").read_text())
    assert [e["event_id"] for e in read_jsonl_events(mixed, 2).events] == ["e1", "e2"]


def test_events_are_ordered_by_instant_whatever_their_offset(tmp_path):
    cet = dt.timezone(dt.timedelta(hours=2))
    later = event(60)
    later["timestamp"] = (START + dt.timedelta(seconds=60)).astimezone(cet).isoformat()  # "2017-08-01T02:01:00+02:00"
    (tmp_path / "a.jsonl").write_text(lines(later))
    (tmp_path / "b.jsonl").write_text(lines(event(3600)))
    assert [e["event_id"] for e in read_jsonl_events(tmp_path, 10).events] == ["e60", "e3600"]


def test_the_prediction_tag_is_the_one_the_app_sends():
    from app.events import TAG

    assert event_sources.PREDICTION_TAG == TAG


def test_an_unreadable_log_is_one_error_naming_it(tmp_path):
    """A log the reader may not open (mode 000; for root, run without the capabilities that bypass file modes):
    an EventSourceError naming the file, which drift and the release decision print as one line, not a
    PermissionError traceback."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import honouring_file_modes

    log = tmp_path / "predictions.jsonl"
    log.write_text('{"event_id": "a"}\n', encoding="utf-8")
    log.chmod(0)
    code = ("import sys\nfrom pipeline.event_sources import EventSourceError, read_jsonl_events\n"
            f"try:\n    read_jsonl_events({str(log)!r}, 10)\n"
            "except EventSourceError as exc:\n    print('refused:', exc)\n")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(honouring_file_modes([sys.executable, "-c", code]), cwd=repo, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"refused: {log}: cannot be read (Permission denied)", done.stdout


def test_other_senders_records_before_since_are_not_counted_nor_read(tmp_path):
    """`--events logs/ --since T` said "500 record(s) that are not prediction events skipped (shelfcast.drift: 500)":
    every drift summary monitoring.jsonl ever held, read to its first line, whatever T."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "predictions.jsonl").write_text(lines(event(3600), event(3601)))
    (logs / "monitoring.jsonl").write_text(lines(
        *({"tag": "shelfcast.drift", "kind": "drift", "timestamp": (START + dt.timedelta(seconds=s)).isoformat()}
          for s in range(0, 3600, 10)),
        {"tag": "shelfcast.drift", "kind": "drift", "timestamp": (START + dt.timedelta(seconds=3700)).isoformat()}))
    found = read_jsonl_events(logs, 100, START + dt.timedelta(seconds=3600))
    assert [e["event_id"] for e in found.events] == ["e3600", "e3601"]
    assert found.not_predictions == {"shelfcast.drift": 1}
    assert read_jsonl_events(logs, 100).not_predictions == {"shelfcast.drift": 361}


def app_line(second: float, **fields) -> bytes:
    """A line as the app writes it (eventlog/records.py encode_line): compact, `timestamp` third, microseconds."""
    stamp = (START + dt.timedelta(seconds=second)).isoformat(timespec="microseconds")
    record = {"event_id": f"e{second}", "request_id": f"r{second}", "timestamp": stamp, "output": {"unit_sales": 1.0},
              **fields}
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


@pytest.mark.parametrize("layout", ["app", "spaced"])
def test_a_window_is_read_whole_whatever_the_order_of_the_lines(tmp_path, monkeypatch, layout):
    """A clock stepped back (or events re-sent after an outage: a Fluentd file output) writes older times after newer
    ones. The reading back to `since` stopped at the first line more than 60 s older than it, so the window's events
    written before that line were never read: here all but the last 10 of 2,010. Many blocks (READ_BLOCK small), so
    the whole-block skip and the line-by-line reading both meet the window's lines among older ones."""
    monkeypatch.setattr(event_sources, "READ_BLOCK", 4096)
    since = START + dt.timedelta(hours=2)
    write = app_line if layout == "app" else (lambda second, **f: lines(event(second, **f)).encode())
    window = [7200 + s for s in range(2000)]  # in the window, written first
    stepped_back = range(600, 3000)  # the clock stepped back 2 hours: older than the window, written after it
    log = tmp_path / "predictions.jsonl"
    log.write_bytes(b"".join(write(s) for s in range(0, 600)) + b"".join(write(s) for s in window)
                    + b"".join(write(s) for s in stepped_back)
                    + b"".join(write(s) for s in range(9300, 9310)))  # the clock right again
    found = read_jsonl_events(log, 100_000, since)
    assert [e["event_id"] for e in found.events] == [f"e{s}" for s in [*window, *range(9300, 9310)]]
    assert [e["event_id"] for e in read_jsonl_events(log, 5, since).events] == [f"e{s}" for s in range(9305, 9310)]


def test_lines_placed_by_their_timestamp_alone_are_only_those_it_places_for_sure(tmp_path, monkeypatch):
    """Lines older than the window are skipped by their `"timestamp"` field without parsing them, a block of them at
    a time; a line where that field may not be the event's time (a second `"timestamp"`, a nested one before the
    top-level, a number before it, another time form) is parsed, and placed by what json.loads reads."""
    monkeypatch.setattr(event_sources, "READ_BLOCK", 256)
    since = START + dt.timedelta(hours=1)
    old, new = (START + dt.timedelta(seconds=5)).isoformat(timespec="microseconds"), (
        START + dt.timedelta(hours=2)).isoformat(timespec="microseconds")
    tricky = [
        {"event_id": "dup"},  # the timestamp twice, the older first: json.loads keeps the last
        {"event_id": "nested", "inputs": {"timestamp": old}, "timestamp": new},
        {"event_id": "number", "latency_ms": 1.5, "timestamp": new},
        {"event_id": "z", "request_id": "r", "timestamp": new.replace("+00:00", "Z")},
    ]
    body = b"".join(app_line(s) for s in range(100))  # older than the window: whole blocks of them skipped
    for record in tricky:
        text = json.dumps(record, separators=(",", ":"))
        if record["event_id"] == "dup":  # a dict holds a key once: written by hand, as an edited line would be
            text = f'{{"event_id":"dup","request_id":"r","timestamp":"{old}","output":1.0,"timestamp":"{new}"}}'
        body += text.encode() + b"\n" + b"".join(app_line(s) for s in range(100, 110))
    log = tmp_path / "predictions.jsonl"
    log.write_bytes(body + app_line(7300))
    found = read_jsonl_events(log, 100, since)
    assert [e["event_id"] for e in found.events] == ["dup", "nested", "number", "z", "e7300"]
