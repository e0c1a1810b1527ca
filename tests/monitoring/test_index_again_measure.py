"""How setup measures an update by query it cannot read the task of (monitoring/index_again.py), on an index as
Elasticsearch keeps one: each shard numbers its writes (`_seq_no`) from 0 on its own, and Fluentd goes on writing
new events while the update runs. osmem-server (the other setup tests' cluster) numbers the writes of all shards in
one sequence and answers nothing while it updates, so neither shows there; this loopback index does both, and
refuses the task read (a user without the `monitor` privilege), so setup counts."""

from __future__ import annotations

import itertools
import threading
import time
import urllib.parse
import zlib

import pytest

from monitoring.cluster_task import TaskPace
from monitoring.index_again import index_again
from pipeline.event_sources import ElasticsearchEvents
from tests.monitoring.loopback_cluster import json_cluster, request_body

INDEX = "shelfcast-prediction-2026.01.05"
EVENTS = 600
BATCH = 50


class ShardedIndex:
    """Documents routed to shards by _id, each shard's writes numbered by its own sequence; `_update_by_query`
    writes a snapshot of them again in batches on a thread of its own, stopping after `update_stops_after`
    documents (its task ended early, as on a node restart); after each batch, and as long again after the update,
    Fluentd writes `written_meanwhile` new events."""

    def __init__(self, shards: int, update_stops_after: int = EVENTS, written_meanwhile: int = BATCH):
        self.sequence_numbers = [dict() for _ in range(shards)]  # per shard: _id -> _seq_no
        self.next_number = [0] * shards
        self.update_stops_after = update_stops_after
        self.written_meanwhile = written_meanwhile
        self.new_events = itertools.count()
        self.lock = threading.Lock()
        self.update: threading.Thread | None = None
        for n in range(EVENTS):
            self.write(f"event-{n}")

    def write(self, event_id: str) -> None:
        with self.lock:
            shard = zlib.crc32(event_id.encode()) % len(self.sequence_numbers)
            self.sequence_numbers[shard][event_id] = self.next_number[shard]
            self.next_number[shard] += 1

    def _update_by_query(self) -> None:
        with self.lock:
            snapshot = [event_id for shard in self.sequence_numbers for event_id in shard]
        for start in range(0, min(len(snapshot), self.update_stops_after), BATCH):
            for event_id in snapshot[start:start + BATCH]:
                self.write(event_id)
            for _ in range(self.written_meanwhile):
                self.write(f"new-{next(self.new_events)}")
            time.sleep(0.02)
        for _ in range(len(snapshot) // BATCH):  # Fluentd writes on after the update ended
            for _ in range(self.written_meanwhile):
                self.write(f"new-{next(self.new_events)}")
            time.sleep(0.02)

    def answer(self, request) -> tuple[int, dict]:
        path, _, query = request.path.partition("?")
        body = request_body(request)
        if path == f"/{INDEX}/_refresh":
            return 200, {}
        if path == f"/{INDEX}/_count":
            with self.lock:
                return 200, {"count": sum(len(shard) for shard in self.sequence_numbers)}
        if path == f"/{INDEX}/_settings":
            return 200, {INDEX: {"settings": {"index": {"number_of_shards": str(len(self.sequence_numbers))}}}}
        if path == f"/{INDEX}/_update_by_query":
            self.update = threading.Thread(target=self._update_by_query, daemon=True)
            self.update.start()
            return 200, {"task": "node-1:7"}
        if path.startswith("/_tasks/"):
            return 403, {"error": "action [cluster:monitor/task/get] is unauthorized"}
        if path == f"/{INDEX}/_search":
            return 200, {"aggregations": self._aggregations(body["aggs"], urllib.parse.parse_qs(query))}
        return 400, {"error": f"no handler for {request.command} {request.path}"}

    def _aggregations(self, aggs: dict, query: dict) -> dict:
        """`max` and `range` of `_seq_no`, over the shards `preference=_shards:N,...` names (all without one)."""
        preference = query.get("preference", ["_shards:" + ",".join(map(str, range(len(self.sequence_numbers))))])
        shards = [int(n) for n in preference[0].removeprefix("_shards:").split(",")]
        with self.lock:
            numbers = [number for n in shards for number in self.sequence_numbers[n].values()]
        out = {}
        for name, agg in aggs.items():
            assert next(iter(agg.values()))["field"] == "_seq_no", agg
            if "max" in agg:
                out[name] = {"value": float(max(numbers)) if numbers else None}
            else:
                ranges = agg["range"]["ranges"]
                out[name] = {"buckets": [{"doc_count": sum(r.get("from", -1) <= v < r.get("to", 2 ** 63)
                                                           for v in numbers)} for r in ranges]}
        return out


def _index_again(cluster: ShardedIndex, lines: list[str]):
    with json_cluster(cluster.answer) as url:
        again = index_again(ElasticsearchEvents(url, timeout_s=5.0), INDEX, lines.append,
                            TaskPace(poll_s=0.02, stall_s=0.6))
        cluster.update.join()
    return again


def test_new_events_written_meanwhile_are_not_taken_for_the_update():
    """Before: the update's task ended half way, Fluentd's new events advanced the highest sequence number as far
    as the other half would have, and the update was reported complete ("600 of 600")."""
    lines: list[str] = []
    again = _index_again(ShardedIndex(shards=1, update_stops_after=EVENTS // 2), lines)
    assert (again.done, again.total, again.complete) == (EVENTS // 2, EVENTS, False), lines
    assert any("not grown for 0.6 s at 300 of 600 documents" in line for line in lines), lines


@pytest.mark.parametrize("shards,written_meanwhile", [(3, 0), (3, BATCH), (1, BATCH)])
def test_an_update_of_an_index_of_several_shards_is_counted_to_its_end(shards, written_meanwhile):
    """Before: each of 3 shards numbers its own writes, so the highest `_seq_no` advanced by about a third of the
    update, which was reported stopped at ~1/3 of its documents (an error line and exit 1) though it had completed."""
    lines: list[str] = []
    again = _index_again(ShardedIndex(shards, written_meanwhile=written_meanwhile), lines)
    assert (again.done, again.total, again.complete) == (EVENTS, EVENTS, True), lines
    assert again.measured_by == "counted: its documents written again since the fields were added, shard by shard"
