"""setup --reindex on an index too big to copy within one HTTP request's timeout.

At Favorita's scale an index holds tens of millions of prediction events and its copy runs for many minutes; the
client's timeout (ElasticsearchEvents' 30 s) ended the synchronous `POST /_reindex` long before. The copy here is
made to outlast a lowered request timeout instead: a few thousand events against a 0.3 s timeout, on osmem-server
(the tests' OpenSearch-API server: no tasks API, and it answers `wait_for_completion=false`, and nothing else,
only once it has copied).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitoring.cluster_task import TaskPace
from monitoring.setup_stack import index_templates, install_index_templates, reconcile_existing_indices
from pipeline.event_sources import ElasticsearchEvents

INDEX = "shelfcast-prediction-2026.01.05"


def an_older_index(path: str) -> tuple[int, dict] | None:
    """What the loopback clusters below share: healthy, templates acknowledged, and INDEX mapped as an older Shelfcast
    left it (store a number); None for any other request."""
    if path == "/_cluster/health":
        return 200, {"status": "green"}
    if path.startswith("/_index_template/"):
        return 200, {"acknowledged": True}
    if path == "/shelfcast-prediction-*/_mapping":
        older = index_templates()["shelfcast-prediction"]["template"]["mappings"]["properties"]
        return 200, {INDEX: {"mappings": {"properties": {**older, "store": {"type": "long"}}}}}
    return None
TARGET = f"{INDEX}-remapped"
EVENTS = 6000
SHORT_TIMEOUT_S = 0.3


def _index_made_before_the_template(search: ElasticsearchEvents, events: int) -> None:
    """The template's mapping but for `store` as a number (an older app's), `events` prediction events in it."""
    older = index_templates()["shelfcast-prediction"]["template"]
    properties = {**older["mappings"]["properties"], "store": {"type": "long"}}
    search.request("PUT", f"/{INDEX}", {"settings": older["settings"],
                                        "mappings": {**older["mappings"], "properties": properties}})
    for start in range(0, events, 2000):
        lines = []
        for n in range(start, min(events, start + 2000)):
            lines.append(json.dumps({"index": {"_index": INDEX, "_id": f"event-{n}"}}))
            lines.append(json.dumps({"event_id": f"event-{n}", "timestamp": "2026-01-05T10:00:00+00:00",
                                     "@timestamp": "2026-01-05T10:00:00.000+00:00", "store": 1 + n % 54,
                                     "family": "GROCERY I", "model_variant": "production", "horizon_days": 1 + n % 16,
                                     "prediction": 1.5}))
        search.request("POST", "/_bulk", ndjson="\n".join(lines) + "\n")
    search.request("POST", f"/{INDEX}/_refresh")
    install_index_templates(search)


def _indices(search: ElasticsearchEvents) -> dict[str, int]:
    return {row["index"]: int(row["docs.count"])
            for row in search.request("GET", "/_cat/indices/shelfcast-*?format=json")}


@pytest.fixture
def search():
    from osmem_server import OsmemServer

    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        yield ElasticsearchEvents(server.url, timeout_s=60.0)


def test_a_copy_longer_than_the_request_timeout_is_followed_to_its_end_and_counted(search):
    """Before: the reindex request timed out, its clean-up (deleting the copy) timed out behind it on the busy
    cluster, and the index was left write-blocked (Fluentd's events refused) and named as one that 'could not be
    changed'. Now the copy runs as a task, setup follows it with progress lines and deletes the source only once the
    copy counts as many documents."""
    _index_made_before_the_template(search, EVENTS)
    short = ElasticsearchEvents(search.url, timeout_s=SHORT_TIMEOUT_S)
    said: list[str] = []
    lines = reconcile_existing_indices(short, reindex=True, say=said.append, pace=TaskPace(poll_s=0.2, stall_s=90))
    assert lines == [f"index {INDEX} (store is long, the template maps keyword) copied into {TARGET} with template "
                     f"shelfcast-prediction's mappings ({EVENTS} of {EVENTS} documents, counted) and deleted; its "
                     f"name is now an alias of {TARGET}, so events for it, new or sent again, go there"]
    assert any("following" in line and f"{TARGET}'s document count" in line for line in said), said
    assert _indices(search) == {TARGET: EVENTS}
    mapping = search.request("GET", f"/{TARGET}/_mapping")[TARGET]["mappings"]["properties"]
    assert mapping["store"]["type"] == "keyword"


def test_a_rerun_after_an_interrupted_copy_copies_what_is_missing_once(search, capsys):
    """An interrupted run leaves <index>-remapped holding part of the events (and the source write-blocked). The rerun
    says so and copies only the documents the copy lacks (op_type=create: a prediction event's _id is its event_id):
    no event twice, the source deleted once the counts agree."""
    from monitoring.setup_stack import main as setup

    _index_made_before_the_template(search, 1000)
    search.request("POST", "/_reindex?refresh=true", {"max_docs": 400, "source": {"index": INDEX},
                                                      "dest": {"index": TARGET}})  # the interrupted copy's part
    search.request("PUT", f"/{INDEX}/_settings", {"index.blocks.write": True})
    assert _indices(search) == {INDEX: 1000, TARGET: 400}
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5", "--reindex"]) == 0
    out = capsys.readouterr().out
    assert f"setup: {TARGET} already holds 400 of {INDEX}'s 1000 documents (an earlier copy was interrupted)" in out
    assert f"({1000} of {1000} documents, counted) and deleted" in out
    assert _indices(search) == {TARGET: 1000}
    ids = search.request("POST", f"/{TARGET}/_search", {"size": 0, "aggs": {"ids": {"cardinality": {
        "field": "event_id"}}}})["aggregations"]["ids"]["value"]
    assert ids == 1000


def test_an_event_sent_again_after_the_copy_overwrites_its_document(search):
    """The app's delivery is at least once and an event's _id is its event_id, so a copy sent again overwrites its
    document (README "Prediction logging"). After --reindex deleted the index, the next event for that day recreated
    it, and a second copy of an event already copied (Fluentd's buffer holds such copies while it is stopped for
    the copy) became a second document: 11 documents for 10 events. The index's name now goes on, in the same step
    as its deletion, as an alias of the copy, so the copy's document is overwritten; a new event lands there too."""
    from monitoring.setup_stack import main as setup

    _index_made_before_the_template(search, 10)
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5", "--reindex"]) == 0
    sent_again = {"event_id": "event-3", "timestamp": "2026-01-05T10:00:00+00:00", "store": "4"}
    new = {**sent_again, "event_id": "event-10"}
    search.request("POST", "/_bulk?refresh=true", ndjson="".join(
        json.dumps({"index": {"_index": INDEX, "_id": event["event_id"]}}) + "\n" + json.dumps(event) + "\n"
        for event in (sent_again, new)))
    assert search.request("POST", "/shelfcast-prediction-*/_count")["count"] == 11
    assert _indices(search) == {TARGET: 11}
    mapping = search.request("GET", f"/{INDEX}/_mapping")  # through the alias: the copy's, the template's
    assert list(mapping) == [TARGET] and mapping[TARGET]["mappings"]["properties"]["store"]["type"] == "keyword"
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5", "--reindex"]) == 0


def test_the_aliases_of_a_copied_index_move_to_its_copy(search):
    """An index copied by an earlier --reindex is the alias of its day's name; copied again (a later template
    changed a field), its aliases go with it to the new copy: deleting the index alone dropped them, and the day's
    next event recreated the day's index beside the copies."""
    from monitoring.setup_stack import main as setup

    _index_made_before_the_template(search, 10)
    day = "shelfcast-prediction-2026.01.04"  # as a previous --reindex left it: an alias of INDEX
    search.request("POST", "/_aliases", {"actions": [{"add": {"index": INDEX, "alias": day}}]})
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5", "--reindex"]) == 0
    assert search.request("GET", f"/{TARGET}/_alias")[TARGET]["aliases"].keys() == {INDEX, day}
    assert _indices(search) == {TARGET: 10}


def test_a_copy_that_cannot_be_counted_deletes_nothing_and_leaves_the_index_writable(search, capsys):
    """A `-remapped` index the copy cannot be counted in (here one blocked for reads): before, setup deleted the
    source on the copy request's answer alone, never reading the copy back. Now a copy it cannot count deletes
    nothing (one it cannot follow may still be running, and deleting its index lets the task's next batch recreate
    it); the block is lifted, the index named, and setup exits 1."""
    from monitoring.setup_stack import main as setup

    _index_made_before_the_template(search, 10)
    search.request("PUT", f"/{TARGET}", {})
    search.request("PUT", f"/{TARGET}/_settings", {"index.blocks.read": True})
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5", "--reindex"]) == 1
    err = capsys.readouterr().err
    assert (f"setup: warning: index {INDEX} does not match template shelfcast-prediction and could not be changed: "
            f"copying it into {TARGET} failed, so it is left as it was (writable, beside whatever {TARGET} "
            "holds)") in err
    search.request("POST", f"/{INDEX}/_doc/later?refresh=true", {"event_id": "later", "store": 2})  # writable
    assert search.request("GET", f"/{INDEX}/_count")["count"] == 11
    assert search.request("GET", f"/{TARGET}?ignore_unavailable=true")  # still there


def test_an_index_reached_only_through_an_alias_is_left_alone(search, capsys):
    """A wildcard matches aliases as well as indices: a team's own index `team-logs` with an alias named as a
    Shelfcast daily index was answered by `GET /shelfcast-prediction-*/_mapping` under its own name, and setup added
    the template's 74 fields to it, indexed its documents again, and with --reindex copied it into
    team-logs-remapped and deleted it. Now an index whose own name no template pattern matches is named with its
    alias and left as it is; the Shelfcast index beside it is still copied."""
    from monitoring.setup_stack import main as setup

    _index_made_before_the_template(search, 10)
    team_mapping = {"properties": {"message": {"type": "text"}, "family": {"type": "text"}}}
    search.request("PUT", "/team-logs", {"mappings": team_mapping})
    search.request("POST", "/_bulk?refresh=true", ndjson="".join(
        json.dumps({"index": {"_index": "team-logs"}}) + "\n" + json.dumps({"message": f"line {n}", "family": "x"})
        + "\n" for n in range(5)))
    alias = "shelfcast-prediction-2026.01.01"
    search.request("POST", "/_aliases", {"actions": [{"add": {"index": "team-logs", "alias": alias}}]})
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5"]) == 0
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5", "--reindex"]) == 1
    err = capsys.readouterr().err
    assert (f"setup: warning: index team-logs is not one of template shelfcast-prediction's (shelfcast-prediction-*): "
            f"alias {alias} on it matches them, so it was left as it is") in err
    every = {row["index"]: int(row["docs.count"]) for row in search.request("GET", "/_cat/indices?format=json")}
    assert every == {TARGET: 10, "team-logs": 5}  # the Shelfcast index copied and deleted, as before
    assert search.request("GET", "/team-logs/_mapping")["team-logs"]["mappings"] == team_mapping


@pytest.mark.parametrize("signum, line", [(2, "interrupted"), (15, "terminated (SIGTERM)")])
def test_a_copy_interrupted_leaves_the_index_writable_and_one_line(signum, line):
    """--reindex blocks writes to the index while it copies it. Ctrl-C (or SIGTERM: `docker compose stop`) while the
    copy ran ended setup in a KeyboardInterrupt traceback (or no word at all) and left the index blocked, so
    Fluentd's events to it were refused until someone lifted the block by hand (measured on osmem-server: 40,000
    events, Ctrl-C 2.5 s in, `blocks.write` still true). Now the block is lifted and one line says what is left.
    The cluster is a loopback one that holds the copy's start until the signal has come (osmem copies too fast
    to be interrupted at a known point)."""
    import os
    import subprocess
    import sys
    import threading
    import time

    from tests.monitoring.loopback_cluster import json_cluster, request_body

    copying, blocks = threading.Event(), []

    def rule(request):
        path = request.path.split("?")[0]
        if (answer := an_older_index(path)) is not None:
            return answer
        if path.endswith("/_mapping"):
            return 200, {}
        if path == f"/{INDEX}/_settings":
            blocks.append(request_body(request)["index.blocks.write"])
            return 200, {"acknowledged": True}
        if path == f"/{INDEX}/_count":
            return 200, {"count": 10}
        if path == "/_reindex":
            copying.set()
            time.sleep(30)  # still copying when the signal comes
            return 200, {"task": "node:1"}
        return (200, {}) if path.endswith("/_refresh") or path == f"/{TARGET}" else (404, {"error": path})

    with json_cluster(rule) as url:
        command = [sys.executable, "-m", "monitoring.setup_stack", "--elasticsearch", url, "--kibana", "none",
                   "--wait-s", "5", "--reindex"]
        setup = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert copying.wait(60), setup.communicate(timeout=30)
        setup.send_signal(signum)
        _, err = setup.communicate(timeout=60)
    assert setup.returncode == 128 + signum, err
    assert err.strip() == (f"setup: {line}; index {INDEX} writable again; its copy into {TARGET} may still be running "
                           "on the cluster: run setup --reindex again (Fluentd stopped), which copies only what the "
                           "copy lacks"), err
    assert blocks == [True, False]


def test_a_template_that_outranks_shelfcasts_is_an_error_naming_it(search, capsys):
    """Elasticsearch makes a new index from the one highest-priority template matching its name: a team's
    `shelfcast-*` template at priority 500 took every daily index (family and event_id as text), while setup said
    "installed" and exited 0. Now setup names it and exits 1; once its priority is lowered, setup succeeds."""
    from monitoring.setup_stack import main as setup

    team = {"index_patterns": ["shelfcast-*", "team-*"], "priority": 500,
            "template": {"mappings": {"properties": {"family": {"type": "text"}}}}}
    search.request("PUT", "/_index_template/team-all", team)
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5"]) == 1
    err = capsys.readouterr().err
    assert (f"setup: error: index templates shelfcast-monitoring, shelfcast-prediction installed in {search.url}, "
            "but they will not apply: index template team-all (priority 500, patterns shelfcast-*, team-*) outranks "
            "shelfcast-monitoring, shelfcast-prediction (priority 200): new indices of theirs get its mappings, not "
            "Shelfcast's; lower its priority or narrow its patterns") in err, err
    search.request("PUT", "/_index_template/team-all", {**team, "priority": 100})
    assert setup(["--elasticsearch", search.url, "--kibana", "none", "--wait-s", "5"]) == 0
    search.request("POST", f"/{INDEX}/_doc?refresh=true", {"family": "GROCERY I"})
    assert search.request("GET", f"/{INDEX}/_mapping")[INDEX]["mappings"]["properties"]["family"]["type"] == "keyword"


def test_a_copy_that_cannot_replace_its_index_leaves_it_writable(capsys):
    """A whole copy whose index cannot be replaced by it (a user without the privilege to delete indices or manage
    aliases: 403): the index stayed blocked for writes, Fluentd's events to it refused. Now the block is lifted and
    the index named; both are kept. A loopback cluster: osmem-server grants every request."""
    from monitoring.setup_stack import main as setup
    from tests.monitoring.loopback_cluster import json_cluster, request_body

    blocks = []

    def rule(request):
        path = request.path.split("?")[0]
        if (answer := an_older_index(path)) is not None:
            return answer
        if path == f"/{INDEX}/_settings":
            blocks.append(request_body(request)["index.blocks.write"])
            return 200, {"acknowledged": True}
        if path.endswith("/_count"):
            return 200, {"count": 10}
        if path == "/_reindex":
            return 200, {"total": 10, "created": 10, "failures": []}
        if path == f"/{INDEX}/_alias":
            return 200, {INDEX: {"aliases": {}}}
        if path == "/_aliases":
            return 403, {"error": "action [indices:admin/aliases] is unauthorized"}
        return (200, {}) if path.endswith(("/_refresh", "/_mapping")) or path == f"/{TARGET}" else (404, {})

    with json_cluster(rule) as url:
        assert setup(["--elasticsearch", url, "--kibana", "none", "--wait-s", "5", "--reindex"]) == 1
    err = capsys.readouterr().err
    assert (f"setup: warning: index {INDEX} does not match template shelfcast-prediction and could not be changed: it "
            f"was copied into {TARGET} whole, but could not be replaced by it, so both are left (the source writable "
            "again") in err and "HTTP 403" in err, err
    assert blocks == [True, False]
