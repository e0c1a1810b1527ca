"""Copying one index into another on the cluster (setup --reindex) at any size.

A copy of months of prediction events runs for many minutes: sent as one synchronous `POST /_reindex`, its answer
came after the client's timeout (setup's --request-timeout-s) or a proxy's, setup gave up while the cluster kept
copying, and its clean-up deleted a copy still being written. So the copy is started as a task and followed to its
end (monitoring/cluster_task.py: the task's status, or the copy's own document count), and judged by counting:
the source may go only when the copy holds as many documents as it.

Documents are written with `op_type=create` and `conflicts=proceed`: a prediction event's `_id` is its event_id, so
a document already in the copy is the same event, and a rerun after an interruption copies only what the copy lacks
(a plain overwrite gives the same documents but writes every one of them again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from monitoring.cluster_task import TaskPace, follow_count, follow_task, start_task
from pipeline.event_sources import ElasticsearchEvents, EventSourceError


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
               pace: TaskPace = TaskPace()) -> CopyOutcome:
    """Copy `source` into `target` (made by its index template if absent) and count both once it ended."""
    elasticsearch.request("POST", f"/{source}/_refresh")
    total = document_count(elasticsearch, source)
    if elasticsearch.request("GET", f"/{target}?ignore_unavailable=true"):
        say(f"{target} already holds {document_count(elasticsearch, target)} of {source}'s {total} documents (an "
            "earlier copy was interrupted): copying the ones it lacks")
    body = {"conflicts": "proceed", "source": {"index": source}, "dest": {"index": target, "op_type": "create"}}
    counted = f"{target}'s document count"
    started = start_task(elasticsearch, "/_reindex?wait_for_completion=false&refresh=true", body, "the copy",
                         counted, say)
    failures: list = []
    doing = f"copying {source} into {target}"
    if "task" in started:
        result = follow_task(elasticsearch, str(started["task"]), doing, total, counted, say, pace)
        if result is None:
            follow_count(lambda: _count_so_far(elasticsearch, target), doing, total, say, pace)
        else:
            failures = list(result.get("failures") or [])
    elif "total" in started:  # a cluster that copied before answering: its answer is the result
        failures = list(started.get("failures") or [])
    else:
        follow_count(lambda: _count_so_far(elasticsearch, target), doing, total, say, pace)
    elasticsearch.request("POST", f"/{target}/_refresh")
    return CopyOutcome(total, document_count(elasticsearch, target), failures)


def _count_so_far(elasticsearch: ElasticsearchEvents, target: str) -> int | None:
    """The copy's count; None while the busy cluster does not answer in time or the copy's first documents have not
    made its index yet (404)."""
    try:
        return document_count(elasticsearch, target)
    except EventSourceError as exc:
        if exc.status not in (None, 404):
            raise
        return None
