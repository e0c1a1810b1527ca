"""setup's "fields added" path on an index too big to index again within one HTTP request's timeout.

A field added to an existing index's mapping covers only later documents, so setup indexes the earlier ones again
(`_update_by_query`). At Favorita's scale (tens of millions of events) that ran past the client's 30 s timeout. As
in test_setup_stack_reindex.py, the update here is made to outlast a lowered request timeout instead: a few thousand
events against 0.3 s, on osmem-server (no tasks API: setup counts the documents not written since the fields were added,
by each shard's sequence numbers).
"""

from __future__ import annotations

import json

import pytest

from monitoring.cluster_task import TaskPace
from monitoring.setup_stack import index_templates, install_index_templates, reconcile_existing_indices
from pipeline.event_sources import ElasticsearchEvents

INDEX = "shelfcast-prediction-2026.01.05"
ADDED = ("model_variant", "horizon_days")  # fields the previous template lacked
EVENTS = 6000
SHORT_TIMEOUT_S = 0.3


def _index_made_by_the_previous_template(search: ElasticsearchEvents, events: int, without_added: int = 0,
                                         shards: int = 1) -> None:
    """The template's mapping less ADDED, `events` prediction events in it (the last `without_added` of them, an older
    app's, lacking the ADDED fields), then the current template installed."""
    older = index_templates()["shelfcast-prediction"]["template"]
    properties = {k: v for k, v in older["mappings"]["properties"].items() if k not in ADDED}
    search.request("PUT", f"/{INDEX}", {"settings": {**older["settings"], "number_of_shards": shards},
                                        "mappings": {**older["mappings"], "properties": properties}})
    for start in range(0, events, 2000):
        lines = []
        for n in range(start, min(events, start + 2000)):
            event = {"event_id": f"event-{n}", "timestamp": "2026-01-05T10:00:00+00:00",
                     "@timestamp": "2026-01-05T10:00:00.000+00:00", "store": str(1 + n % 54), "family": "GROCERY I",
                     "model_variant": "production", "horizon_days": 1 + n % 16, "prediction": 1.5}
            if n >= events - without_added:
                event = {k: v for k, v in event.items() if k not in ADDED}
            lines += [json.dumps({"index": {"_index": INDEX, "_id": f"event-{n}"}}), json.dumps(event)]
        search.request("POST", "/_bulk", ndjson="\n".join(lines) + "\n")
    search.request("POST", f"/{INDEX}/_refresh")
    install_index_templates(search)


def _indexed_with_variant(search: ElasticsearchEvents) -> int:
    """Events searchable by model_variant (osmem's terms aggregation reads a newly mapped field from the source, so
    it cannot tell an event indexed again from one that was not; `exists` can)."""
    return search.request("POST", f"/{INDEX}/_count", {"query": {"exists": {"field": "model_variant"}}})["count"]


@pytest.fixture
def search():
    from osmem_server import OsmemServer

    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        yield ElasticsearchEvents(server.url, timeout_s=60.0)


@pytest.mark.parametrize("shards", [1, 3])
def test_indexing_again_longer_than_the_request_timeout_is_followed_to_its_end_and_counted(search, shards):
    """Before: the synchronous `_update_by_query` timed out, and the index was named as one that 'could not be
    changed' (while the cluster went on). Now the update runs as a task, followed with progress lines, and its end is
    reported as measured; older events that lack the new fields (here 600) count as indexed again too. (An index
    of several shards as an Elasticsearch cluster numbers them: tests/monitoring/test_index_again_measure.py.)"""
    _index_made_by_the_previous_template(search, EVENTS, without_added=600, shards=shards)
    short = ElasticsearchEvents(search.url, timeout_s=SHORT_TIMEOUT_S)
    said: list[str] = []
    lines = reconcile_existing_indices(short, say=said.append, pace=TaskPace(poll_s=0.2, stall_s=90))
    assert lines == [f"index {INDEX}: 2 field(s) of template shelfcast-prediction added to its mapping, its {EVENTS} "
                     f"of {EVENTS} document(s) indexed again for them (counted: its documents written again since the "
                     "fields were added, shard by shard)"]
    assert any(f"following {INDEX}'s documents not written since the fields were added" in line
               for line in said), said
    assert _indexed_with_variant(search) == EVENTS - 600


def test_indexing_again_that_fails_is_an_error_and_the_next_run_does_it(search, capsys):
    """An index whose documents cannot be read again (here blocked for reads) gets its fields but not its documents
    indexed for them: one error line names it, and setup exits 1 (without --reindex too). Before, the next run found
    the fields mapped and did nothing, exit 0, so unless someone ran the update the line gave, its events stayed out
    of the panels on those fields for good (as after a run interrupted between adding the fields and indexing the
    documents again). The index's mapping now records the fields (_meta) until an update has run: the next run
    indexes the documents again, once."""
    from monitoring.setup_stack import main as setup

    _index_made_by_the_previous_template(search, 100)
    search.request("PUT", f"/{INDEX}/_settings", {"index.blocks.read": True})
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5"]) == 1
    err = capsys.readouterr().err
    assert (f"setup: error: index {INDEX}: 2 field(s) of template shelfcast-prediction added to its mapping, but "
            "indexing its documents again for them failed: ") in err
    search.request("PUT", f"/{INDEX}/_settings", {"index.blocks.read": False})
    assert _indexed_with_variant(search) == 0
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5"]) == 0
    out = capsys.readouterr().out
    assert _indexed_with_variant(search) == 100
    assert "; run setup again, which does it (the index's mapping records the fields until then)" in err
    assert (f"setup: index {INDEX}: 2 field(s) of template shelfcast-prediction added to its mapping by an earlier "
            "run, which stopped before indexing its documents again, its 100 of 100 document(s) indexed again") in out
    from monitoring.setup_stack import FIELDS_TO_INDEX_AGAIN

    assert FIELDS_TO_INDEX_AGAIN not in search.request("GET", f"/{INDEX}/_mapping")[INDEX]["mappings"]["_meta"]
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5"]) == 0
    assert "indexed again" not in capsys.readouterr().out  # once
