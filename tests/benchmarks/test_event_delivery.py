"""benchmarks/event_delivery.py: what breaks the README's delivery promise, told apart from what does not."""

from __future__ import annotations

import pytest

from tests.benchmarks.conftest import _benchmark_module


@pytest.fixture(scope="module")
def delivery():
    return _benchmark_module("event_delivery")


def test_duplicates_and_counted_drops_keep_the_promise(delivery):
    kept = delivery.Figures("kill-worker", answered=100, delivered=100, duplicated=40, counted_dropped=0,
                            left_in_spool=0, spooled=102, received=102).judge()
    limited = delivery.Figures("spool-limit", answered=100, delivered=30, duplicated=0, counted_dropped=72,
                               left_in_spool=0, spooled=102, received=30).judge()
    assert kept.problems == [] and limited.problems == [] and limited.uncounted_lost == 0


def test_a_loss_not_counted_as_dropped_breaks_it(delivery):
    answered = delivery.Figures("restart", answered=100, delivered=97, duplicated=0, counted_dropped=1,
                                left_in_spool=0, spooled=100, received=97).judge()
    assert answered.uncounted_lost == 2 and answered.problems == ["2 answered events lost and not counted as dropped"]
    # an event spooled for a request whose client saw no answer is lost all the same if it never arrives uncounted
    unanswered = delivery.Figures("sigterm", answered=100, delivered=100, duplicated=0, counted_dropped=0,
                                  left_in_spool=0, spooled=103, received=100).judge()
    assert unanswered.uncounted_lost == 3 and unanswered.problems


def test_a_case_that_answered_nothing_or_left_its_spool_breaks_it(delivery):
    assert delivery.Figures("sighup", 0, 0, 0, 0, 0).judge().problems == ["no request answered: the case measured "
                                                                          "nothing"]
    left = delivery.Figures("restart", 10, 10, 0, 0, left_in_spool=2, spooled=10, received=10).judge()
    assert left.problems == ["2 segment(s) still in the spool after the last server stopped"]


def test_the_summary_names_the_broken_cases(delivery):
    results = [delivery.Figures("sigterm", 10, 10, 0, 0, 0, 10, 10).judge(),
               delivery.Figures("restart", 10, 8, 0, 0, 0, 10, 8).judge()]
    assert delivery.summary(results).endswith("2 uncounted lost: BROKEN in restart")
    assert delivery.summary(results[:1]).endswith("as the README promises")


@pytest.mark.parametrize("flags, message", [
    (["--clients", "0"], "--clients must be at least 1 and --seconds more than 0, got 0 and 3"),
    (["--seconds", "0"], "--clients must be at least 1 and --seconds more than 0, got 4 and 0"),
    (["--port-base", "70000"], "--port-base must be 0 (free ports) or a port, 1 to 65535, got 70000"),
])
def test_a_run_that_sends_nothing_is_refused_before_any_server(delivery, flags, message, monkeypatch, capsys):
    """No clients or no seconds: every case started its servers only to be judged "no request answered" at the end;
    a --port-base past 65535 ended in StopIteration. Now a usage error before any server."""
    def no_case(*args):
        raise AssertionError("event_delivery ran a case")

    monkeypatch.setattr(delivery, "why_unavailable", lambda: None)
    monkeypatch.setattr(delivery, "run_case", no_case)
    with pytest.raises(SystemExit) as stopped:
        delivery.main(flags)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
