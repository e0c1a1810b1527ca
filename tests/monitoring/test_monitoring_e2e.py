"""End to end: app -> fluent-logger -> a real forward-protocol receiver -> a search server -> drift.

What runs for real: the Flask app (create_app) serving the tiny bundle and logging through
its PredictionEventSink with FLUENTD_HOST set (spool + fluent-logger's sender with
acknowledgements); @fluent-org/logger's FluentServer (tests/fluentd_receiver, a forward-
protocol implementation we did not write); osmem-server (an in-memory server with the
Elasticsearch/OpenSearch REST API) holding our real index templates; and
`python -m monitoring.drift --elasticsearch URL` reading the events back.

What stands in for Fluentd (no Fluentd/Ruby here): `fluentd_out_elasticsearch()` below,
which does what monitoring/fluentd/fluent.conf's elasticsearch output does with
logstash_format: index `<prefix>-YYYY.MM.DD` from the event time, `@timestamp`, the tag
under `tag`, `_id` = event_id, one `_bulk` request. The index templates and the reader
are the production ones.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from monitoring import drift
from pipeline.event_sources import ElasticsearchEvents
from monitoring.setup_stack import install_index_templates
from tests.conftest import builtin_drift_thresholds

RECEIVER_DIR = Path(__file__).resolve().parents[1] / "fluentd_receiver"
PREFIX = {"shelfcast.prediction": "shelfcast-prediction", "shelfcast.metrics": "shelfcast-monitoring",
          "shelfcast.drift": "shelfcast-monitoring"}
REQUESTS, BATCH = 60, 5


@pytest.fixture
def receiver(tmp_path):
    """The Node FluentServer on 127.0.0.1, writing {tag, time, record} lines to a file."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: the forward-protocol receiver needs Node.js >= 18")
    if not (RECEIVER_DIR / "node_modules" / "@fluent-org" / "logger").is_dir():
        pytest.skip("tests/fluentd_receiver is not installed: run scripts/install_test_services.sh")
    output = tmp_path / "received.jsonl"
    process = subprocess.Popen([node, str(RECEIVER_DIR / "receiver.js"), "--port", "0", "--output", str(output)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(20)
    if not box or not box[0].startswith("ready "):
        process.kill()
        pytest.fail(f"receiver did not start: {box} {process.stderr.read() if process.poll() is not None else ''}")
    state = {"port": int(box[0].split()[1]), "output": output, "process": process}
    yield state
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def wait_for_tag(state, tag: str, timeout_s: float = 10.0) -> None:
    """The sender has written the event to the socket; wait (bounded) until the receiver has read it.

    fluent-logger's sender does not wait for Fluentd's acknowledgement, so a SIGTERM right after
    `emit` can reach the receiver before the last event's bytes do.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if state["output"].exists() and f'"{tag}"' in state["output"].read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"the receiver got no {tag} event in {timeout_s} s")


def stop_receiver(state) -> list[dict]:
    """SIGTERM (it exits having written everything it acknowledged), then what it received."""
    process = state["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    return [json.loads(line) for line in state["output"].read_text().splitlines()]


@pytest.fixture
def search_server():
    from osmem_server import OsmemServer

    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        yield ElasticsearchEvents(server.url)


def fluentd_out_elasticsearch(search: ElasticsearchEvents, received: list[dict]) -> dict:
    """Fluentd's elasticsearch output with logstash_format, include_tag_key and id_key event_id."""
    lines = []
    for entry in received:
        if entry["tag"].endswith(".heartbeat"):
            continue  # the sender's connection checks: fluent.conf sends them to @type null
        moment = dt.datetime.fromtimestamp(entry["time"], dt.timezone.utc)
        document = {**entry["record"], "@timestamp": moment.isoformat(timespec="milliseconds"), "tag": entry["tag"]}
        index = f"{PREFIX[entry['tag']]}-{moment:%Y.%m.%d}"
        lines.append(json.dumps({"index": {"_index": index, "_id": document["event_id"]}}))
        lines.append(json.dumps(document))
    answer = search.request("POST", "/_bulk?refresh=true", ndjson="\n".join(lines) + "\n")
    assert not answer["errors"], [i for i in answer["items"] if i["index"].get("error")][:3]
    return answer


def flatten(document: dict, prefix: str = "") -> set[str]:
    names = set()
    for key, value in document.items():
        names |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return names


def mapped(properties: dict, prefix: str = "") -> set[str]:
    names = set()
    for key, spec in properties.items():
        names |= mapped(spec["properties"], f"{prefix}{key}.") if "properties" in spec else {f"{prefix}{key}"}
    return names


def test_app_events_reach_the_search_server_and_drift_reads_every_one(
        production_bundle, receiver, search_server, tmp_path, monkeypatch):
    from app import create_app
    from app.config import AppSettings
    from app.events import PredictionEventSink
    from monitoring.metrics_events import emit_validation_metrics

    install_index_templates(search_server)
    environment = {"FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(receiver["port"]),
                   "SHELFCAST_EVENT_SPOOL": str(tmp_path / "spool")}
    sink = PredictionEventSink.from_environment(environment)
    app = create_app(AppSettings(model_dir=production_bundle, reload_interval_s=0), sink=sink)
    client = app.test_client()
    catalog = client.get("/api/v1/model").get_json()
    first = catalog["horizon"]["first_date"]
    items = client.get("/api/v1/items?q=").get_json()
    item_ids = [i["item_nbr"] for i in (items.get("items") if isinstance(items, dict) else items)][:BATCH]
    served = []
    for r in range(REQUESTS // BATCH):
        body = {"instances": [{"store_nbr": 1 + (r % 2), "item_nbr": item, "date": first, "onpromotion": r % 3 == 0}
                              for item in item_ids]}
        answer = client.post("/api/v1/predict", json=body, headers={"X-Request-ID": f"e2e-{r}"})
        assert answer.status_code == 200, answer.get_json()
        served.extend(answer.get_json()["predictions"])
    sink.close()
    assert sink.stats.snapshot()["sent"] == len(served) == REQUESTS

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "metrics.json").write_text(json.dumps({
        "rows": 100, "candidate": {"nwrmsle": 0.5, "rmse": 3.0}, "baseline": {"nwrmsle": 0.6, "rmse": 3.5},
        "improvement_over_baseline": 0.17, "threshold_test_passed": 1}))
    monkeypatch.setenv("FLUENTD_HOST", "127.0.0.1")
    monkeypatch.setenv("FLUENTD_PORT", str(receiver["port"]))
    assert emit_validation_metrics(tmp_path / "results" / "metrics.json", None).startswith("fluentd")
    wait_for_tag(receiver, "shelfcast.metrics")

    received = stop_receiver(receiver)
    assert sorted(e["tag"] for e in received).count("shelfcast.prediction") == REQUESTS
    fluentd_out_elasticsearch(search_server, received)

    mapping = search_server.request("GET", "/shelfcast-prediction-*/_mapping")
    index_mapping = next(iter(mapping.values()))["mappings"]["properties"]
    event_fields = flatten({**received[0]["record"], "@timestamp": 0, "tag": 0})
    assert event_fields <= mapped(index_mapping), f"unmapped event fields: {event_fields - mapped(index_mapping)}"
    quality = search_server.request("POST", "/shelfcast-monitoring-*/_search",
                                    {"query": {"term": {"tag": "shelfcast.metrics"}}})
    assert quality["hits"]["hits"][0]["_source"]["metrics"]["candidate_nwrmsle"] == 0.5

    out = tmp_path / "drift"
    code = drift.main(["--bundle", str(production_bundle), "--elasticsearch", search_server.url,
                       "--params", builtin_drift_thresholds(tmp_path), "--output-dir", str(out)])
    report = json.loads((out / "drift.json").read_text())
    assert code in (drift.EXIT_OK, drift.EXIT_ALARM) and report["events"] == REQUESTS
    read_back = {e["event_id"] for e in search_server.events(10_000)}
    sent = {e["record"]["event_id"] for e in received if e["tag"] == "shelfcast.prediction"}
    assert read_back == sent and len(sent) == REQUESTS
    assert report["served_model_versions"] == {catalog["version"]: REQUESTS}
