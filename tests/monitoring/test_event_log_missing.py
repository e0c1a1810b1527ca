"""`make drift` / `release decide` before any prediction was served: the line names the log once and says how its
place is chosen (it read 'to logs/predictions.jsonl, $SHELFCAST_PREDICTION_LOG or else logs/predictions.jsonl')."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.event_sources import EventSourceError, jsonl_files


def test_no_log_yet_names_the_default_once(monkeypatch, tmp_path):
    monkeypatch.delenv("SHELFCAST_PREDICTION_LOG", raising=False)
    monkeypatch.chdir(tmp_path)  # a project that has served nothing yet (the checkout's own logs/ may hold some)
    with pytest.raises(EventSourceError) as raised:
        jsonl_files(Path("logs/predictions.jsonl"))
    message = str(raised.value)
    assert message == ("logs/predictions.jsonl: no such file or directory (the app logs prediction events to "
                       "logs/predictions.jsonl unless $SHELFCAST_PREDICTION_LOG moves it; serve some predictions "
                       "first)")


def test_no_log_yet_names_the_moved_log(monkeypatch, tmp_path):
    moved = tmp_path / "events.jsonl"
    monkeypatch.setenv("SHELFCAST_PREDICTION_LOG", str(moved))
    with pytest.raises(EventSourceError) as raised:
        jsonl_files(moved)
    assert f"to {moved} ($SHELFCAST_PREDICTION_LOG); serve some predictions first" in str(raised.value)
