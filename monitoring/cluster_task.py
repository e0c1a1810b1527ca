"""Following a long operation on the cluster (a copy, an update by query) to its end, whatever its size.

Sent as one synchronous request, an operation over tens of millions of events answers after the client's timeout
(setup's --request-timeout-s) or a proxy's: the client gives up while the cluster goes on. So it is started as a task
(`wait_for_completion=false`) and followed with a progress line every few seconds: by the task's status, or, where
the cluster has no tasks API or the user lacks the `monitor` privilege, by a document count that the operation
makes grow (the caller's: a copy's `_count`, the documents that hold a new field).
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

from pipeline.event_sources import ElasticsearchEvents, EventSourceError

REFUSED_TASK_READS = (400, 403, 404, 405)  # no tasks API here, no `monitor` privilege, or no record of the task
BUSY_ANSWERS = (429, 502, 503, 504)  # a cluster (or its proxy) too busy to answer now: the task goes on regardless


@dataclass(frozen=True)
class TaskPace:
    """How an operation is followed: a progress line every `poll_s`; followed by a count (no task to ask), one that
    has not grown for `stall_s` is taken as stopped, and judged as it stands."""

    poll_s: float = 5.0
    stall_s: float = 300.0


def start_task(elasticsearch: ElasticsearchEvents, path: str, body: dict, what: str, counted: str,
               say: Callable[[str], None]) -> dict:
    """POST `path` (with its `wait_for_completion=false`): the cluster's answer, or {} when it did not answer in time
    (it may be running: the caller follows its count)."""
    try:
        return elasticsearch.request("POST", path, body)
    except EventSourceError as exc:
        if exc.status is not None:
            raise
        say(f"the cluster did not answer the start of {what} within {elasticsearch.timeout_s:g} s ({exc}); it may "
            f"be running: following {counted}")
        return {}


def follow_task(elasticsearch: ElasticsearchEvents, task: str, doing: str, total: int, counted: str,
                say: Callable[[str], None], pace: TaskPace) -> dict | None:
    """The task's result once completed (`GET /_tasks/<id>`), or None where the task cannot be read; a task that
    stopped on an error raises it. A busy answer (429, 5xx of a gateway) or none in time is asked again, up to
    `pace.stall_s` of them in a row: the task runs on whether its reader is answered or not, and giving up on it at
    the first one reported a copy that went on as failed (and gave its source back to writers)."""
    path = f"/_tasks/{urllib.parse.quote(task, safe=':')}"
    unanswered_since = None
    while True:
        try:
            answer = elasticsearch.request("GET", path)
        except EventSourceError as exc:
            busy = exc.status is None or exc.status in BUSY_ANSWERS
            if exc.status is not None and not busy and exc.status not in REFUSED_TASK_READS:
                raise
            if busy:
                unanswered_since = unanswered_since or time.monotonic()
                if time.monotonic() - unanswered_since < pace.stall_s:
                    say(f"{doing}: task {task} not answered this time ({exc}); asking again")
                    time.sleep(pace.poll_s)
                    continue
            say(f"task {task} cannot be read ({exc}): following {counted}")
            return None
        unanswered_since = None
        if answer.get("completed"):
            if answer.get("error"):
                raise EventSourceError(f"task {task} stopped: {answer['error'].get('reason', answer['error'])}")
            return answer.get("response", {})
        status = answer.get("task", {}).get("status", {})
        say(f"{doing}: {documents_done(status)} of {status.get('total') or total} documents")
        time.sleep(pace.poll_s)


def documents_done(status: dict) -> int:
    """The documents a copy's or an update's task status (or result) has been through."""
    return sum(int(status.get(key) or 0) for key in ("created", "updated", "deleted", "noops", "version_conflicts"))


def follow_count(count: Callable[[], int | None], doing: str, total: int, say: Callable[[str], None],
                 pace: TaskPace) -> bool:
    """Until `count()` reaches `total` (True), or has not grown for `pace.stall_s` (False). A count of None (a request
    the busy cluster did not answer in time, an index not there yet) is no growth. A count that falls (False at
    once) is no operation's progress: documents deleted or the index replaced by someone else; before, it was taken
    as growth, a line of progress, and restarted the stall time, so a count falling and growing again never stalled."""
    last, grew_at = -1, time.monotonic()
    while True:
        counted = count()
        counted = last if counted is None else counted
        if counted >= total:
            return True
        if 0 <= counted < last:
            say(f"{doing}: the count fell from {last} to {counted} of {total} documents: documents deleted or the "
                "index replaced meanwhile, not by this operation; judged as it stands")
            return False
        if counted != last:
            last, grew_at = counted, time.monotonic()
            say(f"{doing}: {max(counted, 0)} of {total} documents")
        elif time.monotonic() - grew_at >= pace.stall_s:
            say(f"{doing}: not grown for {pace.stall_s:g} s at {max(counted, 0)} of {total} documents: taken as "
                "stopped")
            return False
        time.sleep(pace.poll_s)
