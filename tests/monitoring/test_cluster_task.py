"""Following a cluster task (monitoring/cluster_task.py) through the answers a busy cluster gives: Elasticsearch's
tasks API answers a GET /_tasks/<id> with 429 when its queues are full, and a proxy in front of it 502-504. osmem,
the OpenSearch-API server the other setup tests run against, has no tasks API, so this loopback server answers the
documented GET /_tasks/<id> document (running, then completed) behind a few such refusals."""

from __future__ import annotations

import time

import pytest

from monitoring.cluster_task import TaskPace, follow_count, follow_task
from pipeline.event_sources import ElasticsearchEvents, EventSourceError
from tests.monitoring.loopback_cluster import json_cluster

TASK = "node-1:42"
RUNNING = {"completed": False, "task": {"status": {"total": 1000, "created": 400}}}
DONE = {"completed": True, "response": {"total": 1000, "created": 1000, "failures": []}}


@pytest.fixture
def tasks_api():
    """(url, answers): GET /_tasks/<TASK> answers each (status, body) of the list in turn, then the last for ever."""
    answers: list[tuple[int, dict]] = []

    def rule(request):
        if request.path != f"/_tasks/{TASK}":
            return 404, {"error": f"no handler for {request.path}"}
        return answers.pop(0) if len(answers) > 1 else answers[0]

    with json_cluster(rule) as url:
        yield url, answers


def _follow(url: str, stall_s: float, lines: list[str]):
    return follow_task(ElasticsearchEvents(url, timeout_s=5.0), TASK, "copying", 1000, "the copy's count",
                       lines.append, TaskPace(poll_s=0.01, stall_s=stall_s))


def test_a_busy_cluster_is_asked_again_and_the_tasks_result_taken(tasks_api):
    """Before, the first 429 or 503 ended the follow with an error: setup reported the copy failed and gave its source
    back to writers while the cluster went on copying."""
    url, answers = tasks_api
    answers.extend([(200, RUNNING), (429, {"error": "rejected"}), (503, {"error": "busy"}), (504, {}), (200, RUNNING),
                    (200, DONE)])
    lines: list[str] = []
    assert _follow(url, 30.0, lines) == DONE["response"]
    assert sum("not answered this time" in line for line in lines) == 3, lines
    assert sum("400 of 1000 documents" in line for line in lines) == 2, lines


def test_a_cluster_busy_for_longer_than_the_stall_time_is_followed_by_its_count(tasks_api):
    url, answers = tasks_api
    answers.append((503, {"error": "busy"}))
    lines: list[str] = []
    assert _follow(url, 0.2, lines) is None
    assert lines[-1].startswith(f"task {TASK} cannot be read") and "following the copy's count" in lines[-1], lines


def test_a_task_read_refused_for_good_falls_back_at_once_and_another_error_is_raised(tasks_api):
    url, answers = tasks_api
    answers.append((403, {"error": "no monitor privilege"}))
    lines: list[str] = []
    assert _follow(url, 30.0, lines) is None and len(lines) == 1
    answers[:] = [(500, {"error": "a bug"})]
    with pytest.raises(EventSourceError, match="HTTP 500"):
        _follow(url, 30.0, [])


def test_a_count_that_falls_ends_the_follow_as_no_progress():
    """A copy's count that falls (its documents deleted, its index replaced) is not the copy's progress. Before, it
    was a line of progress and restarted the stall time, so a count falling and growing again was followed for ever;
    here the follow ran until its 5 s stall time."""
    counts = iter([0, 400, 700, 300] + [300] * 1000)
    lines: list[str] = []
    started = time.monotonic()
    pace = TaskPace(poll_s=0.01, stall_s=5.0)
    assert follow_count(lambda: next(counts), "copying", 1000, lines.append, pace) is False
    assert time.monotonic() - started < 2.0, lines
    assert lines == ["copying: 0 of 1000 documents", "copying: 400 of 1000 documents", "copying: 700 of 1000 documents",
                     "copying: the count fell from 700 to 300 of 1000 documents: documents deleted or the index "
                     "replaced meanwhile, not by this operation; judged as it stands"]


def test_a_count_not_answered_is_no_growth_and_one_that_reaches_the_total_ends_the_follow():
    counts = iter([None, 200, None, 1000])
    lines: list[str] = []
    assert follow_count(lambda: next(counts), "copying", 1000, lines.append, TaskPace(poll_s=0.01, stall_s=5.0))
    assert lines == ["copying: 200 of 1000 documents"]
