"""Copying one index into another on the cluster (setup --reindex) at any size.

A copy of months of prediction events runs for many minutes: sent as one synchronous `POST /_reindex`, its answer
came after the client's timeout (ElasticsearchEvents' 30 s) or a proxy's, setup gave up while the cluster kept
copying, and its clean-up deleted a copy still being written. So the copy is started as a task
(`wait_for_completion=false`), followed to its end with a progress line every few seconds (the task's status; where
the cluster has no tasks API or the user lacks the `monitor` privilege, the copy's own document count), and judged
by counting: the source may go only when the copy holds as many documents as it.

Documents are written with `op_type=create` and `conflicts=proceed`: a prediction event's `_id` is its event_id, so
a document already in the copy is the same event, and a rerun after an interruption copies only what the copy lacks
(a plain overwrite gives the same documents but writes every one of them again).
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

from pipeline.event_sources import ElasticsearchEvents, EventSourceError

REFUSED_TASK_READS = (400, 403, 404, 405)  # no tasks API here, no `monitor` privilege, or no record of the task


@dataclass(frozen=True)
class CopyPace:
    """How a copy is followed: a progress line every `poll_s`; followed by its count (no task to ask), a copy that
    has not grown for `stall_s` is taken as stopped, and judged as it stands."""

    poll_s: float = 5.0
    stall_s: float = 300.0


@dataclass(frozen=True)
class CopyOutcome:
    """The source's and the copy's document counts once the copy ended, and the documents it refused, if known."""

    total: int
    copied: int
    failures: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failures and self.copied == self.total


def document_count(elasticsearch: ElasticsearchEvents, index: str) -> int:
    return int(elasticsearch.request("GET", f"/{index}/_count")["count"])


def copy_index(elasticsearch: ElasticsearchEvents, source: str, target: str, say: Callable[[str], None],
               pace: CopyPace = CopyPace()) -> CopyOutcome:
    """Copy `source` into `target` (made by its index template if absent) and count both once it ended."""
    elasticsearch.request("POST", f"/{source}/_refresh")
    total = document_count(elasticsearch, source)
    if elasticsearch.request("GET", f"/{target}?ignore_unavailable=true"):
        say(f"{target} already holds {document_count(elasticsearch, target)} of {source}'s {total} documents (an "
            "earlier copy was interrupted): copying the ones it lacks")
    body = {"conflicts": "proceed", "source": {"index": source}, "dest": {"index": target, "op_type": "create"}}
    try:
        started = elasticsearch.request("POST", "/_reindex?wait_for_completion=false&refresh=true", body)
    except EventSourceError as exc:
        if exc.status is not None:
            raise
        say(f"the cluster did not answer the start of the copy within {elasticsearch.timeout_s:g} s ({exc}); it "
            f"may be copying: following {target}'s document count")
        started = {}
    failures: list = []
    if "task" in started:
        result = _follow_task(elasticsearch, str(started["task"]), source, target, total, say, pace)
        if result is None:
            _follow_count(elasticsearch, target, total, say, pace)
        else:
            failures = list(result.get("failures") or [])
    elif "total" in started:  # a cluster that copied before answering: its answer is the result
        failures = list(started.get("failures") or [])
    else:
        _follow_count(elasticsearch, target, total, say, pace)
    elasticsearch.request("POST", f"/{target}/_refresh")
    return CopyOutcome(total, document_count(elasticsearch, target), failures)


def _follow_task(elasticsearch: ElasticsearchEvents, task: str, source: str, target: str, total: int,
                 say: Callable[[str], None], pace: CopyPace) -> dict | None:
    """The task's result once completed (`GET /_tasks/<id>`), or None where the task cannot be read."""
    path = f"/_tasks/{urllib.parse.quote(task, safe=':')}"
    while True:
        try:
            answer = elasticsearch.request("GET", path)
        except EventSourceError as exc:
            if exc.status is not None and exc.status not in REFUSED_TASK_READS:
                raise
            say(f"task {task} cannot be read ({exc}): following {target}'s document count")
            return None
        if answer.get("completed"):
            if answer.get("error"):
                raise EventSourceError(f"task {task} stopped: {answer['error'].get('reason', answer['error'])}")
            return answer.get("response", {})
        status = answer.get("task", {}).get("status", {})
        done = sum(int(status.get(key, 0)) for key in ("created", "updated", "version_conflicts"))
        say(f"copying {source} into {target}: {done} of {status.get('total') or total} documents")
        time.sleep(pace.poll_s)


def _follow_count(elasticsearch: ElasticsearchEvents, target: str, total: int, say: Callable[[str], None],
                  pace: CopyPace) -> None:
    """Until the copy counts `total` documents, or has not grown for `pace.stall_s` (a request the cluster does not
    answer in time, busy copying, counts as no growth)."""
    last, grew_at = -1, time.monotonic()
    while True:
        try:
            counted = document_count(elasticsearch, target)
        except EventSourceError as exc:
            if exc.status not in (None, 404):  # 404: the copy's first documents have not made it yet
                raise
            counted = last
        if counted >= total:
            return
        if counted != last:
            last, grew_at = counted, time.monotonic()
            say(f"{target}: {max(counted, 0)} of {total} documents copied")
        elif time.monotonic() - grew_at >= pace.stall_s:
            say(f"{target} has not grown for {pace.stall_s:g} s: the copy is taken as stopped")
            return
        time.sleep(pace.poll_s)
