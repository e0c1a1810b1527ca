"""Every Kibana panel's query, run against events the app really logged, returns data a reader can use.

The saved objects (monitoring/kibana/shelfcast.ndjson) are loaded as Kibana would read
them; each visualization's aggregations become the search request Kibana's legacy
visualizations send (`kibana_request` below: metric aggregations inside the bucket
aggregations, in order, the dashboard's time range as a filter). The requests run on
osmem-server (an in-memory server with the Elasticsearch/OpenSearch REST API) holding
our real index templates and documents indexed as Fluentd's elasticsearch output writes
them: the prediction events the Flask app logged for real requests, and the drift and
validation-metrics events built by the functions `--emit` sends.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from monitoring.drift import drift_summary_event
from monitoring.drift_analysis import analyse
from monitoring.drift_params import DriftParams
from pipeline.event_sources import ElasticsearchEvents, EventSourceError
from monitoring.metrics_events import metrics_event
from monitoring.setup_stack import SAVED_OBJECTS, install_index_templates

PREFIX = {"shelfcast.prediction": "shelfcast-prediction", "shelfcast.metrics": "shelfcast-monitoring",
          "shelfcast.drift": "shelfcast-monitoring"}
XY_TYPES = {"line", "histogram", "area", "horizontal_bar"}
METRIC_TYPES = {"avg", "max", "min", "sum", "percentiles", "cardinality"}
AUTO_INTERVAL = "3h"  # what Kibana's "auto" picks for the dashboard's 7-day range


def saved_objects() -> list[dict]:
    return [json.loads(line) for line in SAVED_OBJECTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def _bucket_agg(agg: dict, metrics: dict[str, str]) -> dict:
    params, kind = agg["params"], agg["type"]
    if kind == "terms":
        key = params.get("orderBy", "_count")
        if key not in ("_key", "_count"):
            if key not in metrics:
                raise AssertionError(f"terms on {params['field']} is ordered by metric {key!r}, not in the panel")
            key = "_count" if metrics[key] == "count" else key  # Kibana orders by a count metric as _count
        body = {"field": params["field"], "size": params["size"], "order": {key: params.get("order", "desc")}}
    elif kind == "date_histogram":
        interval = params.get("interval", "auto")
        body = {"field": params["field"], "fixed_interval": AUTO_INTERVAL if interval == "auto" else interval,
                "min_doc_count": int(params.get("min_doc_count", 1))}
    elif kind == "histogram":
        body = {"field": params["field"], "interval": params["interval"],
                "min_doc_count": 0 if params.get("min_doc_count") else 1}
    else:
        raise AssertionError(f"bucket aggregation {kind!r} is not translated here: extend kibana_request()")
    return {kind: body}


def _metric_agg(agg: dict) -> dict:
    params = agg["params"]
    body = {"field": params["field"]}
    if agg["type"] == "percentiles":
        body["percents"] = params["percents"]
    return {agg["type"]: body}


def panel_filters(source: dict, visualization_id: str) -> tuple[list[dict], list[dict]]:
    """(filter, must_not) clauses of a panel's saved filters, as Kibana sends them: each enabled filter's own
    query, in the bool query's filter clause, or its must_not when negated."""
    wanted, unwanted = [], []
    for saved in source["filter"]:
        meta = saved["meta"]
        assert meta.get("type") == "phrase" and set(saved["query"]) == {"match_phrase"}, \
            f"{visualization_id}: only phrase filters are translated here: extend panel_filters()"
        assert saved["query"]["match_phrase"] == {meta["key"]: meta["params"]["query"]}, visualization_id
        if not meta.get("disabled"):
            (unwanted if meta.get("negate") else wanted).append(saved["query"])
    return wanted, unwanted


def kibana_request(visualization: dict, time_from: str, time_to: str) -> dict:
    """The search body a legacy Kibana visualization sends: buckets nested in order, metrics innermost."""
    state = json.loads(visualization["attributes"]["visState"])
    source = json.loads(visualization["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
    assert source["query"]["query"] == "", \
        f"{visualization['id']}: panel queries are not translated here: extend kibana_request()"
    wanted, unwanted = panel_filters(source, visualization["id"])
    aggs = [a for a in state["aggs"] if a.get("enabled", True)]
    metrics = [a for a in aggs if a["schema"] == "metric"]
    buckets = [a for a in aggs if a["schema"] != "metric"]
    unknown = [a["type"] for a in metrics if a["type"] != "count" and a["type"] not in METRIC_TYPES]
    assert not unknown, f"{visualization['id']}: metric aggregation(s) {unknown} not translated here"
    inner = {a["id"]: _metric_agg(a) for a in metrics if a["type"] != "count"}
    kinds = {a["id"]: a["type"] for a in metrics}
    for bucket in reversed(buckets):
        node = _bucket_agg(bucket, kinds)
        if inner:
            node["aggs"] = inner
        inner = {bucket["id"]: node}
    query = {"bool": {"must": [{"match_all": {}}], "filter": [*wanted, {"range": {"@timestamp": {
        "gte": time_from, "lte": time_to, "format": "strict_date_optional_time"}}}]}}
    if unwanted:
        query["bool"]["must_not"] = unwanted
    return {"size": 0, "aggs": inner, "query": query}


def innermost_buckets(answer: dict, buckets: list[dict]) -> list[dict]:
    level = [answer["aggregations"]] if buckets else [{"doc_count": answer["hits"]["total"]["value"],
                                                       **answer.get("aggregations", {})}]
    for bucket in buckets:
        level = [b for node in level for b in node[bucket["id"]]["buckets"]]
    return level


def metric_value(bucket: dict, metric: dict):
    if metric["type"] == "count":
        return bucket["doc_count"] or None
    value = bucket[metric["id"]]
    if metric["type"] == "percentiles":
        values = [v for v in value["values"].values() if v is not None]
        return values or None
    return value.get("value")


def bulk_as_fluentd(search: ElasticsearchEvents, documents: list[tuple[str, dict]]) -> None:
    """What fluent.conf's elasticsearch outputs write: daily index by event time, @timestamp, tag, _id."""
    lines = []
    for tag, record in documents:
        moment = dt.datetime.fromisoformat(record["timestamp"])
        document = {**record, "@timestamp": moment.isoformat(timespec="milliseconds"), "tag": tag}
        lines.append(json.dumps({"index": {"_index": f"{PREFIX[tag]}-{moment:%Y.%m.%d}", "_id": record["event_id"]}}))
        lines.append(json.dumps(document))
    answer = search.request("POST", "/_bulk?refresh=true", ndjson="\n".join(lines) + "\n")
    assert not answer["errors"], [i for i in answer["items"] if i["index"].get("error")][:3]


@pytest.fixture(scope="module")
def logged_events(tiny_bundle, tmp_path_factory) -> list[dict]:
    """Prediction events the app logged for real requests: several stores, items, days and promotions."""
    from app import create_app
    from app.config import AppSettings
    from app.events import PredictionEventSink

    log = tmp_path_factory.mktemp("kibana") / "predictions.jsonl"
    sink = PredictionEventSink.from_environment({"SHELFCAST_PREDICTION_LOG": str(log)})
    client = create_app(AppSettings(model_dir=tiny_bundle, reload_interval_s=0), sink=sink).test_client()
    model = client.get("/api/v1/model").get_json()
    stores = [s["store_nbr"] for s in model["stores"]]
    items = client.get("/api/v1/items?q=").get_json()
    item_ids = [i["item_nbr"] for i in (items.get("items") if isinstance(items, dict) else items)][:8]
    first = dt.date.fromisoformat(model["horizon"]["first_date"])
    days = [(first + dt.timedelta(days=d)).isoformat() for d in range(model["horizon"]["days"])]
    instances = [{"store_nbr": stores[k % len(stores)], "item_nbr": item_ids[k % len(item_ids)],
                  "date": days[(k * 5) % len(days)], "onpromotion": k % 4 == 0} for k in range(48)]
    for start in range(0, len(instances), 12):
        answer = client.post("/api/v1/predict", json={"instances": instances[start:start + 12]})
        assert answer.status_code == 200, answer.get_json()
    sink.close()
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def search_with_events(logged_events, bundle_parts):
    from osmem_server import OsmemServer

    metadata, stats = bundle_parts
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    report = analyse(logged_events, metadata, stats, DriftParams(min_events=10))
    quality = {"rows": 100, "candidate": {"nwrmsle": 0.5, "rmse": 3.0}, "baseline": {"nwrmsle": 0.6, "rmse": 3.5},
               "improvement_over_baseline": 0.17, "threshold_test_passed": 1}
    monitoring = [("shelfcast.drift", drift_summary_event(report)),
                  ("shelfcast.metrics", metrics_event(quality, {"bundle_version": metadata["version"]}))]
    documents = [("shelfcast.prediction", event) for event in logged_events]
    documents += [(tag, {**event, "event_id": f"{tag}-1", "timestamp": now}) for tag, event in monitoring]
    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        install_index_templates(search)
        bulk_as_fluentd(search, documents)
        yield search


VISUALIZATIONS = [o for o in saved_objects() if o["type"] == "visualization"]


@pytest.mark.parametrize("visualization", VISUALIZATIONS, ids=[v["id"] for v in VISUALIZATIONS])
def test_every_panel_returns_data_for_every_series(visualization, search_with_events):
    objects = {(o["type"], o["id"]): o for o in saved_objects()}
    view = objects[("index-pattern", visualization["references"][0]["id"])]["attributes"]["title"]
    dashboard = next(o for o in objects.values() if o["type"] == "dashboard")["attributes"]
    assert (dashboard["timeFrom"], dashboard["timeTo"]) == ("now-7d", "now")
    now = dt.datetime.now(dt.timezone.utc)
    body = kibana_request(visualization, (now - dt.timedelta(days=7)).isoformat(),
                          (now + dt.timedelta(minutes=1)).isoformat())
    answer = search_with_events.request("POST", f"/{view}/_search", body)
    state = json.loads(visualization["attributes"]["visState"])
    metrics = [a for a in state["aggs"] if a["schema"] == "metric"]
    buckets = innermost_buckets(answer, [a for a in state["aggs"] if a["schema"] != "metric"])
    assert buckets and any(b["doc_count"] for b in buckets), f"{visualization['id']}: no data in {view}"
    for metric in metrics:
        assert any(metric_value(b, metric) is not None for b in buckets), \
            f"{visualization['id']}: metric {metric['id']} ({metric['type']}) has no value in any bucket"


@pytest.mark.parametrize("visualization", [v for v in VISUALIZATIONS
                                           if json.loads(v["attributes"]["visState"])["type"] in XY_TYPES],
                         ids=lambda v: v["id"])
def test_every_metric_of_a_chart_is_drawn_as_a_series(visualization):
    """Legacy XY charts draw the metrics listed in seriesParams, on a value axis that exists."""
    state = json.loads(visualization["attributes"]["visState"])
    params = state["params"]
    axes = {axis["id"] for axis in params.get("valueAxes", [])}
    drawn = {series["data"]["id"]: series for series in params.get("seriesParams", [])}
    for metric in (a for a in state["aggs"] if a["schema"] == "metric"):
        assert metric["id"] in drawn, f"{visualization['id']}: metric {metric['id']} has no series"
        assert drawn[metric["id"]]["show"] and drawn[metric["id"]]["valueAxis"] in axes
        assert metric["params"].get("customLabel"), f"{visualization['id']}: metric {metric['id']} has no label"
    assert params.get("categoryAxes") and all(axis.get("title", {}).get("text") for axis in params["valueAxes"])


def test_panels_group_by_readable_values(search_with_events, bundle_parts):
    """Family names (not vocabulary codes), store labels, horizon in whole days, model variants."""
    metadata, _ = bundle_parts

    def keys(field: str, size: int = 100) -> list:
        answer = search_with_events.request("POST", "/shelfcast-prediction-*/_search", {
            "size": 0, "aggs": {"k": {"terms": {"field": field, "size": size}}}})
        return [b["key"] for b in answer["aggregations"]["k"]["buckets"]]

    families = keys("family")
    assert families and set(families) <= set(metadata["vocabularies"]["family"])
    assert all(not str(f).isdigit() for f in families)
    cities = set(metadata["vocabularies"]["city"])
    assert all(any(city in store for city in cities) for store in keys("store"))
    horizon = sorted(keys("horizon_days"))
    assert horizon[0] >= 1 and horizon[-1] <= metadata["horizon"] and len(horizon) > 1
    assert all(float(h).is_integer() for h in horizon)
    assert keys("model_variant") == ["production"]  # the release variant that answered (app/variants.py)


CHAIN_FIELDS = {"family", "store"}  # one bar per product family / store: as many as the chain has


def test_family_and_store_panels_lose_no_bars_of_a_larger_chain(search_with_events):
    """They showed Favorita's 33 families and 54 stores at most, with no other bucket: a larger chain lost bars
    silently. Now 500 bars, and what is past them is one labelled bar (the request Kibana sends for it, here)."""
    panels = {agg["params"]["field"]: agg for v in VISUALIZATIONS
              for agg in json.loads(v["attributes"]["visState"])["aggs"]
              if agg["type"] == "terms" and agg["params"]["field"] in CHAIN_FIELDS}
    assert set(panels) == CHAIN_FIELDS
    for field, agg in panels.items():
        params = agg["params"]
        assert params["size"] >= 500 and params["otherBucket"] is True
        assert params["otherBucketLabel"].startswith("other "), params
        answer = search_with_events.request("POST", "/shelfcast-prediction-*/_search", {
            "size": 0, "aggs": {"top": {"terms": {"field": field, "size": 1}}}})
        total, top = answer["hits"]["total"]["value"], answer["aggregations"]["top"]["buckets"]
        other = search_with_events.request("POST", "/shelfcast-prediction-*/_search", {
            "size": 0, "query": {"bool": {"must_not": [{"terms": {field: [top[0]["key"]]}}]}}})
        assert 0 < other["hits"]["total"]["value"] == total - top[0]["doc_count"], field


def test_the_latency_panel_counts_each_request_once(logged_events):
    """Each of a batch's predictions is logged with the batch's latency (app/service.py): percentiles over events
    weighted a request by its size (4 requests of 12 instances were 48 observations). The panel counts one event
    per request -- its first instance's -- and leaves the shadow's forecasts (made after the response) out."""
    from osmem_server import OsmemServer

    panel = next(v for v in VISUALIZATIONS if v["id"] == "shelfcast-latency-percentiles")
    requests = {event["request_id"] for event in logged_events}
    assert len(requests) == 4 and len(logged_events) == 48
    slow = logged_events[0]["request_id"]
    documents = [("shelfcast.prediction", {**event, "latency_ms": 900.0 if event["request_id"] == slow else 1.0})
                 for event in logged_events]
    documents += [("shelfcast.prediction", {**event, "event_id": f"shadow-{event['event_id']}",  # as variants.py logs
                                            "model_variant": "shadow", "latency_ms": 5000.0})
                  for event in logged_events]
    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        install_index_templates(search)
        bulk_as_fluentd(search, documents)
        now = dt.datetime.now(dt.timezone.utc)
        body = kibana_request(panel, (now - dt.timedelta(days=7)).isoformat(),
                              (now + dt.timedelta(minutes=1)).isoformat())
        body["aggs"] = {"all": {"percentiles": {"field": "latency_ms", "percents": [50, 95]}}}  # over the whole range
        answer = search.request("POST", "/shelfcast-prediction-*/_search?track_total_hits=true", body)
    assert answer["hits"]["total"]["value"] == len(requests)
    values = answer["aggregations"]["all"]["values"]  # 3 requests at 1 ms, one at 900 ms: the median is 1 ms
    assert values["50.0"] == pytest.approx(1.0) and values["95.0"] > 1.0


# What users asked and were served: a shadow forecasts a copy of every request after the response (never returned),
# so its events must change none of these panels. The variants panel shows the shadow on purpose; the versions panel
# names every model that forecast.
SERVED_PANELS = ["shelfcast-predictions-over-time", "shelfcast-forecast-by-family", "shelfcast-forecast-by-store",
                 "shelfcast-forecast-distribution", "shelfcast-promotion-share", "shelfcast-horizon",
                 "shelfcast-latency-percentiles"]


def test_a_shadow_changes_no_panel_of_what_users_were_served(logged_events):
    """A shadow mirrors every request: its events doubled "Predictions over time", and a shadow forecasting 100x
    moved "Mean forecast by family/store" and the forecast distribution, though no user was served those forecasts
    (the latency panel already left it out)."""
    from osmem_server import OsmemServer

    panels = [v for v in VISUALIZATIONS if v["id"] in SERVED_PANELS]
    assert {v["id"] for v in panels} == set(SERVED_PANELS)
    shadow = [("shelfcast.prediction", {**event, "event_id": f"shadow-{event['event_id']}", "model_variant": "shadow",
                                        "model_version": "shadow-version", "model_digest": "f" * 64,
                                        "output": {"unit_sales": 100.0 * event["output"]["unit_sales"] + 50.0}})
              for event in logged_events]
    now = dt.datetime.now(dt.timezone.utc)
    window = ((now - dt.timedelta(days=7)).isoformat(), (now + dt.timedelta(minutes=1)).isoformat())

    def answers(search) -> dict[str, dict]:
        return {v["id"]: search.request("POST", "/shelfcast-prediction-*/_search",
                                        kibana_request(v, *window))["aggregations"] for v in panels}

    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        install_index_templates(search)
        bulk_as_fluentd(search, [("shelfcast.prediction", event) for event in logged_events])
        served = answers(search)
        bulk_as_fluentd(search, shadow)
        with_shadow = answers(search)
    changed = [panel for panel in SERVED_PANELS if with_shadow[panel] != served[panel]]
    assert not changed, f"a shadow's events changed {changed}"


CLOSED_DAY_FIELD = "output.store_closed"


def test_closed_day_answers_can_be_told_apart_on_the_forecast_panels(logged_events):
    """A day the store is closed is served 0 units with output.store_closed (pipeline/closed_days.py): the forecast
    panels count those answers, as served, and say how to see them apart; the filter they name must select exactly
    them from the indices the template maps (a field the template left unmapped would match nothing)."""
    from osmem_server import OsmemServer

    panels = [v for v in VISUALIZATIONS if CLOSED_DAY_FIELD in v["attributes"].get("description", "")]
    assert {v["id"] for v in panels} == {"shelfcast-forecast-by-family", "shelfcast-forecast-by-store",
                                         "shelfcast-forecast-distribution"}
    answered_closed = {"unit_sales": 0.0, "expected_units": 0.0, "store_closed": True}
    closed = [{**event, "event_id": f"closed-{event['event_id']}", "output": answered_closed}
              for event in logged_events[:7]]
    now = dt.datetime.now(dt.timezone.utc)
    window = ((now - dt.timedelta(days=7)).isoformat(), (now + dt.timedelta(minutes=1)).isoformat())
    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        install_index_templates(search)
        bulk_as_fluentd(search, [("shelfcast.prediction", event) for event in logged_events + closed])
        for panel in panels:
            body = kibana_request(panel, *window)
            every = search.request("POST", "/shelfcast-prediction-*/_search", body)["hits"]["total"]["value"]
            assert every == len(logged_events) + len(closed), panel["id"]
            body["query"]["bool"]["filter"].append({"match_phrase": {CLOSED_DAY_FIELD: True}})
            answer = search.request("POST", "/shelfcast-prediction-*/_search", body)
            assert answer["hits"]["total"]["value"] == len(closed), panel["id"]


def test_setup_after_the_first_events_makes_every_panel_work(logged_events, capsys):
    """An index template applies only to indices created after it: events that arrived before setup (or a template
    changed by an upgrade) left today's index mapped by guess -- family and model_variant as text, store as a number
    -- and the panels grouping by them failed until the next day's index. setup names each such index and its fields;
    with --reindex it copies the index into one the template maps, and every panel has data again."""
    from osmem_server import OsmemServer

    from monitoring.setup_stack import main as setup

    now = dt.datetime.now(dt.timezone.utc)
    window = ((now - dt.timedelta(days=7)).isoformat(), (now + dt.timedelta(minutes=1)).isoformat())
    before = [("shelfcast.prediction", {**event, "store": int(event["inputs"]["store_nbr"])})  # an older app's store
              for event in logged_events]
    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        bulk_as_fluentd(search, before)  # Fluentd wrote before setup ran
        today = f"shelfcast-prediction-{now:%Y.%m.%d}"
        assert setup(["--elasticsearch", server.url, "--kibana", "none", "--wait-s", "5"]) == 0
        warned = capsys.readouterr().err
        assert f"index {today} was created before template shelfcast-prediction" in warned
        assert "family is text, the template maps keyword" in warned and "store is long" in warned
        hint = r"made before the template\): run `python -m monitoring.setup_stack --reindex`"
        with pytest.raises(EventSourceError, match=hint):
            search.events(10)  # drift and release read through this: sorting on event_id (text) failed with HTTP 400
        assert setup(["--elasticsearch", server.url, "--kibana", "none", "--wait-s", "5", "--reindex"]) == 0
        assert f"index {today} (" in capsys.readouterr().out
        later = {**logged_events[0], "event_id": "after-setup"}
        bulk_as_fluentd(search, [("shelfcast.prediction", later)])  # the daily index: now an alias of its copy
        mapping = next(iter(search.request("GET", f"/{today}/_mapping").values()))["mappings"]["properties"]
        assert mapping["family"]["type"] == "keyword" and mapping["store"]["type"] == "keyword"
        panels = [v for v in VISUALIZATIONS if "prediction" in next(
            o for o in saved_objects() if o["id"] == v["references"][0]["id"])["attributes"]["title"]]
        for panel in panels:
            answer = search.request("POST", "/shelfcast-prediction-*/_search", kibana_request(panel, *window))
            state = json.loads(panel["attributes"]["visState"])
            buckets = innermost_buckets(answer, [a for a in state["aggs"] if a["schema"] != "metric"])
            assert any(b["doc_count"] for b in buckets), panel["id"]
        assert len(search.events(1000)) == len(logged_events) + 1
        assert setup(["--elasticsearch", server.url, "--kibana", "none", "--wait-s", "5"]) == 0
        assert "warning" not in capsys.readouterr().err  # a second run finds every index mapped


def test_setup_after_an_upgrade_adds_the_new_fields_to_todays_index_and_its_events(logged_events, capsys):
    """Today's index made by the previous template, which lacked fields the panels now group by (here
    model_variant and horizon_days): setup adds them to its mapping and indexes its events again for them (a field
    added to a mapping covers only the documents indexed after it), so the panels need not wait for tomorrow."""
    from osmem_server import OsmemServer

    from monitoring.setup_stack import index_templates, main as setup

    now = dt.datetime.now(dt.timezone.utc)
    today = f"shelfcast-prediction-{now:%Y.%m.%d}"
    older = index_templates()["shelfcast-prediction"]["template"]
    mappings = {**older["mappings"], "properties": {k: v for k, v in older["mappings"]["properties"].items()
                                                    if k not in ("model_variant", "horizon_days")}}
    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        search.request("PUT", f"/{today}", {"settings": older["settings"], "mappings": mappings})
        bulk_as_fluentd(search, [("shelfcast.prediction", event) for event in logged_events])
        assert setup(["--elasticsearch", server.url, "--kibana", "none", "--wait-s", "5"]) == 0
        out, err = capsys.readouterr()
        assert f"index {today}: 2 field(s) of template shelfcast-prediction added to its mapping, its " \
               f"{len(logged_events)} of {len(logged_events)} document(s) indexed again" in out and "warning" not in err
        mapping = search.request("GET", f"/{today}/_mapping")[today]["mappings"]["properties"]
        assert mapping["model_variant"]["type"] == "keyword" and mapping["horizon_days"]["type"] == "integer"
        answer = search.request("POST", "/shelfcast-prediction-*/_search", {
            "size": 0, "aggs": {"variant": {"terms": {"field": "model_variant"}}}})
        assert answer["aggregations"]["variant"]["buckets"][0]["doc_count"] == len(logged_events)


def test_an_index_that_cannot_be_changed_is_named_and_setup_goes_on(logged_events, capsys):
    """An older index Elasticsearch made read-only (the disk's flood-stage watermark) refuses the fields setup adds:
    that stopped setup with exit 1 before the dashboard was imported (and docker compose's Fluentd waits for setup to
    succeed). Now the index is named with the cluster's reason, and setup goes on; --reindex, asked for, exits 1."""
    from osmem_server import OsmemServer

    from monitoring.setup_stack import index_templates, main as setup

    older = index_templates()["shelfcast-prediction"]["template"]
    mappings = {**older["mappings"], "properties": {k: v for k, v in older["mappings"]["properties"].items()
                                                    if k != "model_variant"}}
    index = "shelfcast-prediction-2026.01.05"
    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        search.request("PUT", f"/{index}", {"settings": older["settings"], "mappings": mappings})
        event = {**logged_events[0], "@timestamp": "2026-01-05T10:00:00Z"}
        search.request("POST", f"/{index}/_doc?refresh=true", event)
        search.request("PUT", f"/{index}/_settings", {"index.blocks.read_only_allow_delete": True})
        assert setup(["--elasticsearch", server.url, "--kibana", "none", "--wait-s", "5"]) == 0
        err = capsys.readouterr().err
        assert f"warning: index {index} does not match template shelfcast-prediction and could not be changed" in err
        assert "flood-stage" in err and "setup: error" not in err
        assert setup(["--elasticsearch", server.url, "--kibana", "none", "--wait-s", "5", "--reindex"]) == 1


def test_a_copy_short_of_its_index_deletes_neither_and_leaves_the_index_writable(logged_events, capsys):
    """--reindex blocks writes to the index while copying it: a document the template cannot take (a horizon_days
    an older sender wrote as words) failed the copy, and the index stayed write-blocked (Fluentd's events refused
    from then on). A copy that ends short of its index (here one the cluster's tasks API, which osmem lacks, cannot
    report the refusal of) deletes neither index: the copy may still be filling, the index is the only whole one.
    Both are kept, the block lifted, one line says so; setup exits 1 as --reindex did not do its job."""
    from osmem_server import OsmemServer

    from monitoring.setup_stack import main as setup

    now = dt.datetime.now(dt.timezone.utc)
    today = f"shelfcast-prediction-{now:%Y.%m.%d}"
    words = {**logged_events[1], "event_id": "in-words", "horizon_days": "three"}
    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        bulk_as_fluentd(search, [("shelfcast.prediction", event) for event in [words, logged_events[0]]])
        assert setup(["--elasticsearch", server.url, "--kibana", "none", "--wait-s", "5", "--reindex",
                      "--progress-s", "0.1", "--stall-s", "1"]) == 1
        err = capsys.readouterr().err
        assert (f"setup: warning: index {today}: its copy {today}-remapped holds 1 of its 2 documents, so neither "
                "is deleted (the source writable again") in err
        bulk_as_fluentd(search, [("shelfcast.prediction", logged_events[2])])  # Fluentd can write to it again
        indices = {row["index"]: int(row["docs.count"])
                   for row in search.request("GET", "/_cat/indices/shelfcast-*?format=json")}
        assert indices == {today: 3, f"{today}-remapped": 1}


def test_the_drift_panel_shows_requests_for_a_store_item_without_history(tiny_bundle, bundle_parts, replay, tmp_path):
    """Drift alarms when too many requests are for a store×item the bundle has no history of (the app's new_series
    events); the dashboard's drift panels showed only the feature PSIs and unseen categories, all near 0 then, so
    an alarm showed as a calm dashboard. The unseen panel now draws that share too, from drift --emit's summary."""
    from osmem_server import OsmemServer

    from pipeline.bundle import load_bundle

    metadata, stats = bundle_parts
    snapshot = load_bundle(tiny_bundle).snapshot
    sold = set(zip(snapshot.store_nbr.tolist(), snapshot.item_nbr.tolist()))
    never = [(s, i) for s in snapshot.stores["store_nbr"].tolist() for i in snapshot.items["item_nbr"].tolist()
             if (s, i) not in sold]
    assert never, "the tiny data set sells every item in every store: nothing to ask for"
    day = metadata["horizon_dates"][0]
    requests = [{"store_nbr": s, "item_nbr": i, "date": day, "onpromotion": False} for s, i in sorted(sold)[:30]]
    requests += [{"store_nbr": s, "item_nbr": i, "date": day, "onpromotion": False} for s, i in never]
    log = replay(tiny_bundle, requests, tmp_path / "events.jsonl")
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    report = analyse(events, metadata, stats, DriftParams(min_events=10))
    share = len(never) / len(requests)
    assert report["new_series"]["share"] == pytest.approx(share)
    summary = {**drift_summary_event(report), "event_id": "drift-1",
               "timestamp": dt.datetime.now(dt.timezone.utc).isoformat()}
    assert summary["drift"]["new_series_share"] == pytest.approx(share)
    panel = next(v for v in VISUALIZATIONS if v["id"] == "shelfcast-drift-unseen")
    state = json.loads(panel["attributes"]["visState"])
    metric = next(a for a in state["aggs"] if a["schema"] == "metric" and a["params"]["field"] ==
                  "drift.new_series_share")
    now = dt.datetime.now(dt.timezone.utc)
    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        install_index_templates(search)
        bulk_as_fluentd(search, [("shelfcast.drift", summary)])
        answer = search.request("POST", "/shelfcast-monitoring-*/_search", kibana_request(
            panel, (now - dt.timedelta(days=7)).isoformat(), (now + dt.timedelta(minutes=1)).isoformat()))
        mapping = search.request("GET", "/shelfcast-monitoring-*/_mapping")
    buckets = innermost_buckets(answer, [a for a in state["aggs"] if a["schema"] != "metric"])
    assert [metric_value(b, metric) for b in buckets] == [pytest.approx(share, rel=1e-6)]
    assert all(m["mappings"]["properties"]["drift"]["properties"]["new_series_share"]["type"] == "float"
               for m in mapping.values())


def test_the_drift_panels_plot_no_figure_of_a_run_with_no_verdict(bundle_parts, stream):
    """`drift --emit` on a quiet hour: a handful of events give no verdict, and the report shows their PSIs as not
    judged. Its summary sent them all the same, and the drift panels, which plot the largest value of each time
    bucket with no verdict beside it, drew 5 events' noise next to a judged run: on the single_store foreign shape a
    largest feature PSI of 7.2 and a forecast PSI of 5.4 (30 to 50 times their alarms), here one unseen store in 5
    requests as 20 % of requests unseen, and a largest feature PSI of 7.6 against the judged run's 0.023. A run with
    no verdict now sends its status and counts only."""
    from osmem_server import OsmemServer

    from monitoring.drift import alarmable

    metadata, stats = bundle_parts
    judged = analyse(stream(1_500, seed=31), metadata, stats, DriftParams())
    few = stream(5, seed=32)
    few[0]["features"]["categorical"]["store_nbr"] = 0  # a store the model never saw
    unjudged = analyse(few, metadata, stats, DriftParams())
    assert (judged["status"], unjudged["status"]) == ("ok", "insufficient_data")
    assert max(r["psi"] for r in alarmable(unjudged).values()) > 10 * max(r["psi"] for r in alarmable(judged).values())
    now = dt.datetime.now(dt.timezone.utc)
    summaries = [("shelfcast.drift", {**drift_summary_event(report), "event_id": f"drift-{i}",
                                      "timestamp": (now - dt.timedelta(minutes=1 + i)).isoformat()})
                 for i, report in enumerate((judged, unjudged))]
    expected = summaries[0][1]["drift"]
    assert summaries[1][1]["drift"]["status"] == "insufficient_data" and summaries[1][1]["drift"]["events"] == 5
    window = ((now - dt.timedelta(days=7)).isoformat(), (now + dt.timedelta(minutes=1)).isoformat())
    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        install_index_templates(search)
        bulk_as_fluentd(search, summaries)
        for panel in (v for v in VISUALIZATIONS if v["id"] in ("shelfcast-drift-psi", "shelfcast-drift-unseen")):
            state = json.loads(panel["attributes"]["visState"])
            answer = search.request("POST", "/shelfcast-monitoring-*/_search", kibana_request(panel, *window))
            buckets = innermost_buckets(answer, [a for a in state["aggs"] if a["schema"] != "metric"])
            for metric in (a for a in state["aggs"] if a["schema"] == "metric"):
                field = metric["params"]["field"].removeprefix("drift.")
                drawn = [value for value in (metric_value(b, metric) for b in buckets) if value is not None]
                assert drawn == [pytest.approx(expected[field], abs=1e-6)], (panel["id"], field, drawn)
