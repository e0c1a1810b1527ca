"""Indexing an index's documents again for fields just added to its mapping (setup's "fields added") at any size.

A field added to a mapping covers only the documents indexed after it, so setup reads the earlier ones again with
`_update_by_query`. Sent synchronously, that request over an index of tens of millions of events answered after the
client's 30 s timeout: the index was named as one that "could not be changed" while the cluster went on. So it runs
as a task, followed to its end (monitoring/cluster_task.py), and its end is reported as measured: the task's own
count of documents updated of its total, or, where the task cannot be read, how far the index's highest sequence
number (`max` of `_seq_no`) has advanced since the start, of its document count: the update writes each document
once, whether or not its event holds a new field (the documents that hold one, an `exists` count, never reach the
total when the older events lack the new fields, the usual case after an upgrade). That measure is exact for an index
of one shard (the template's); events written meanwhile count too, and they are indexed with the new fields anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from monitoring.cluster_task import TaskPace, documents_done, follow_count, follow_task, start_task
from pipeline.event_sources import ElasticsearchEvents, EventSourceError


@dataclass(frozen=True)
class IndexedAgain:
    """How many of the index's `total` documents were indexed again (`done`), and how that was measured."""

    total: int
    done: int
    measured_by: str
    failures: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failures and self.done >= self.total


def index_again(elasticsearch: ElasticsearchEvents, index: str, say: Callable[[str], None],
                pace: TaskPace = TaskPace()) -> IndexedAgain:
    """Run `_update_by_query` over `index` as a task and follow it to its end."""
    elasticsearch.request("POST", f"/{index}/_refresh")
    total = int(elasticsearch.request("GET", f"/{index}/_count")["count"])
    start = highest_sequence_number(elasticsearch, index)
    counted = f"{index}'s highest sequence number"
    doing = f"indexing {index} again"
    started = start_task(elasticsearch, f"/{index}/_update_by_query?conflicts=proceed&refresh=true"
                         "&wait_for_completion=false", {}, "the update by query", counted, say)
    if "task" in started:
        result = follow_task(elasticsearch, str(started["task"]), doing, total, counted, say, pace)
        if result is not None:
            return IndexedAgain(int(result.get("total", total)), documents_done(result), "updated, by its task",
                                list(result.get("failures") or []))
    elif "total" in started:  # a cluster that updated before answering: its answer is the result
        return IndexedAgain(int(started["total"]), documents_done(started), "updated",
                            list(started.get("failures") or []))

    def written_since_start() -> int | None:
        try:
            return highest_sequence_number(elasticsearch, index) - start
        except EventSourceError as exc:
            if exc.status is not None:
                raise
            return None  # busy updating: not answered in time

    follow_count(written_since_start, doing, total, say, pace)
    elasticsearch.request("POST", f"/{index}/_refresh")
    return IndexedAgain(total, min(total, highest_sequence_number(elasticsearch, index) - start),
                        "counted: the sequence numbers written since it started")


def highest_sequence_number(elasticsearch: ElasticsearchEvents, index: str) -> int:
    """The index's highest `_seq_no` (-1 when empty): each document written, a new one or again, raises it by one."""
    answer = elasticsearch.request("POST", f"/{index}/_search", {
        "size": 0, "aggs": {"highest": {"max": {"field": "_seq_no"}}}})
    value = answer["aggregations"]["highest"]["value"]
    return -1 if value is None else int(value)
