"""Indexing an index's documents again for fields just added to its mapping (setup's "fields added") at any size.

A field added to a mapping covers only the documents indexed after it, so setup reads the earlier ones again with
`_update_by_query`. Sent synchronously, that request over an index of tens of millions of events answered after the
client's 30 s timeout: the index was named as one that "could not be changed" while the cluster went on. So it runs
as a task, followed to its end (monitoring/cluster_task.py), and its end is reported as measured: the task's own
count of documents updated of its total, or, where the task cannot be read, how many of the documents there at the
start have been written since. Each shard numbers its writes (`_seq_no`) in a sequence of its own, so each shard's
highest number once the fields were added is its mark, and a document at or below its shard's mark has not been
written since: the update writes each once, whether or not its event holds a new field, and new events Fluentd
writes meanwhile land above the mark, so neither they nor the shards' numbering make an unfinished update look
finished. Before, the measure was how far the index's highest `_seq_no` advanced: Fluentd's writes counted as the
update's (one that stopped half way was reported complete) and an index of several shards advanced by a fraction
(one that completed was reported stopped). Counting the documents that hold a new field (`exists`) would never
reach the total where older events lack the new fields, the usual case after an upgrade.
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
    marks = shard_marks(elasticsearch, index)
    counted = f"{index}'s documents not written since the fields were added"
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

    def written_since_marks() -> int | None:
        try:
            return total - not_written_since(elasticsearch, index, marks)
        except EventSourceError as exc:
            if exc.status is not None:
                raise
            return None  # busy updating: not answered in time

    follow_count(written_since_marks, doing, total, say, pace)
    return IndexedAgain(total, max(0, total - not_written_since(elasticsearch, index, marks)),
                        "counted: its documents written again since the fields were added, shard by shard")


def shard_marks(elasticsearch: ElasticsearchEvents, index: str) -> dict[int, int]:
    """Each shard's highest `_seq_no` now (-1 when it is empty): a document written later, a new one or again, is
    numbered above its shard's mark."""
    settings = next(iter(elasticsearch.request("GET", f"/{index}/_settings").values()))
    shards = int(settings["settings"]["index"]["number_of_shards"])
    marks = {}
    for shard in range(shards):
        answer = elasticsearch.request("POST", f"/{index}/_search?preference=_shards:{shard}", {
            "size": 0, "aggs": {"highest": {"max": {"field": "_seq_no"}}}})
        value = answer["aggregations"]["highest"]["value"]
        marks[shard] = -1 if value is None else int(value)
    return marks


def not_written_since(elasticsearch: ElasticsearchEvents, index: str, marks: dict[int, int]) -> int:
    """The documents of `index` numbered at or below their shard's mark: not written since the marks were taken (a
    `range` aggregation, which reads `_seq_no`'s doc values as `max` does; OpenSearch-API servers that keep no index
    of `_seq_no` answer a range query on it with nothing)."""
    elasticsearch.request("POST", f"/{index}/_refresh")
    left = 0
    for shard, mark in marks.items():
        answer = elasticsearch.request("POST", f"/{index}/_search?preference=_shards:{shard}", {
            "size": 0, "aggs": {"not_since": {"range": {"field": "_seq_no", "ranges": [{"to": mark + 1}]}}}})
        left += int(answer["aggregations"]["not_since"]["buckets"][0]["doc_count"])
    return left
