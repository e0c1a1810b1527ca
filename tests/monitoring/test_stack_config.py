"""Structural checks of the monitoring stack's files: Fluentd config, index templates, Kibana objects.

No Elasticsearch or Kibana runs here; these tests make sure the files agree with each
other and with what the app logs: every Kibana reference resolves, every field a panel
uses is mapped, every feature the bundle's statistics name is mapped as a number.
"""

from __future__ import annotations

import fnmatch
import json
import re

import pytest
import yaml

from eventlog.forward import MAX_MESSAGE_BYTES
from monitoring.setup_stack import SAVED_OBJECTS, index_templates, leaf_types
from pipeline.features import CATEGORICAL_FIELDS, FeatureSpec, dense_feature_names


@pytest.fixture(scope="module")
def templates() -> dict[str, dict]:
    return index_templates()


@pytest.fixture(scope="module")
def saved_objects() -> list[dict]:
    return [json.loads(line) for line in SAVED_OBJECTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def template_for(templates: dict, index_title: str) -> dict:
    matching = [t for t in templates.values()
                if any(fnmatch.fnmatch(index_title.replace("*", "2017.08.16"), p) for p in t["index_patterns"])]
    assert len(matching) == 1, f"data view {index_title!r} is covered by {len(matching)} templates"
    return matching[0]


def test_prediction_template_maps_every_event_field_explicitly(templates, repo_root):
    fields = leaf_types(templates["shelfcast-prediction"]["template"]["mappings"]["properties"])
    for name in ("@timestamp", "tag", "timestamp", "event_id", "request_id", "model_name", "model_version",
                 "latency_ms", "inputs.store_nbr", "inputs.item_nbr", "inputs.date", "inputs.onpromotion",
                 "output.unit_sales", "family", "store", "horizon_days", "model_variant"):
        assert name in fields, name
    assert {fields[n] for n in ("family", "store", "model_variant")} == {"keyword"}
    assert fields["horizon_days"] == "integer"
    assert {fields[n] for n in ("event_id", "request_id", "model_version", "inputs.store_nbr")} == {"keyword"}
    assert fields["timestamp"] == fields["@timestamp"] == fields["inputs.date"] == "date"
    assert fields["latency_ms"] == fields["output.unit_sales"] == "float"
    assert fields["output.store_closed"] == "boolean"  # a closed store-day's 0 units (pipeline/closed_days.py)
    assert fields["output.closed_reason"] == "keyword"  # and why: a holiday's rule or closed for good
    params = yaml.safe_load((repo_root / "params.yaml").read_text())["features"]
    spec_keys = ("history_days", "mean_windows", "dow_weeks", "promo_windows", "horizon")
    spec = FeatureSpec(**{k: params[k] for k in spec_keys})
    for name in dense_feature_names(spec):
        assert fields.get(f"features.dense.{name}") == "float", name
    for name in CATEGORICAL_FIELDS:
        assert fields.get(f"features.categorical.{name}") == "integer", name


def test_fluentd_routes_tags_to_indices_that_templates_cover(templates, repo_root):
    conf = (repo_root / "monitoring" / "fluentd" / "fluent.conf").read_text()
    assert re.search(r"<source>\s*@type forward\s*@id \w+\s*port 24224", conf)
    matches = dict(re.findall(r"<match ([^>]+)>(.*?)\n</match>", conf, re.S))
    for tags, prefix in (("shelfcast.prediction", "shelfcast-prediction"),
                         ("shelfcast.metrics shelfcast.drift", "shelfcast-monitoring")):
        body = matches[tags]
        assert "@type elasticsearch" in body and "logstash_format true" in body
        assert f"logstash_prefix {prefix}\n" in body and "logstash_dateformat %Y.%m.%d" in body
        assert "include_tag_key true" in body and "tag_key tag" in body and "id_key event_id" in body
        assert re.search(r"<buffer tag, time>\s*@type file", body) and "retry_forever true" in body
        template_for(templates, f"{prefix}-*")


def test_the_apps_largest_event_is_half_of_every_fluentd_buffer_chunk(repo_root):
    """eventlog.forward.MAX_MESSAGE_BYTES is half the chunk_limit_size of the buffers prediction events reach (Fluentd
    discards a record larger than a chunk after acknowledging it); the app's message names that figure. A chunk
    limit changed in fluent.conf alone would let events be counted as sent and never stored."""
    conf = (repo_root / "monitoring" / "fluentd" / "fluent.conf").read_text()
    body = dict(re.findall(r"<match ([^>]+)>(.*?)\n</match>", conf, re.S))["shelfcast.prediction"]
    limits = re.findall(r"chunk_limit_size (\d+)MB", body)
    assert limits and all(int(mb) * 1024 * 1024 == 2 * MAX_MESSAGE_BYTES for mb in limits), limits
    events_source = (repo_root / "app" / "events.py").read_text()
    assert f"chunk_limit_size {2 * MAX_MESSAGE_BYTES // (1024 * 1024)}MB" in events_source


def test_fluentd_image_pins_its_base_and_plugin(repo_root):
    dockerfile = (repo_root / "monitoring" / "fluentd" / "Dockerfile").read_text()
    assert re.search(r"^FROM fluent/fluentd:v\d+\.\d+\.\d+-debian-\d+\.\d+$", dockerfile, re.M)
    assert re.search(r"fluent-plugin-elasticsearch:\d+\.\d+\.\d+", dockerfile)
    assert re.search(r"^USER fluent$", dockerfile, re.M) and "HEALTHCHECK" in dockerfile


def test_every_saved_object_reference_resolves(saved_objects):
    by_key = {(o["type"], o["id"]) for o in saved_objects}
    assert len(by_key) == len(saved_objects), "duplicate saved-object ids"
    for obj in saved_objects:
        for ref in obj.get("references", []):
            assert (ref["type"], ref["id"]) in by_key, f"{obj['id']}: reference {ref} does not resolve"
    dashboard = next(o for o in saved_objects if o["type"] == "dashboard")
    names = {r["name"] for r in dashboard["references"]}
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    assert panels and all(p["panelRefName"] in names for p in panels)
    assert len(panels) == len(dashboard["references"])
    for obj in saved_objects:
        if obj["type"] == "visualization":
            source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
            assert source["indexRefName"] in {r["name"] for r in obj["references"]}
            for saved in source.get("filter", []):  # a panel's filter names its index pattern by reference too
                assert saved["meta"]["indexRefName"] in {r["name"] for r in obj["references"]}, obj["id"]


def test_every_field_a_panel_uses_is_mapped(saved_objects, templates):
    views = {o["id"]: o for o in saved_objects if o["type"] == "index-pattern"}
    used = set()
    for obj in saved_objects:
        if obj["type"] != "visualization":
            continue
        view = views[obj["references"][0]["id"]]
        mapping = template_for(templates, view["attributes"]["title"])["template"]["mappings"]["properties"]
        fields = leaf_types(mapping)
        assert view["attributes"]["timeFieldName"] in fields
        state = json.loads(obj["attributes"]["visState"])
        source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        filtered = [saved["meta"]["key"] for saved in source.get("filter", [])]
        for field in [agg["params"].get("field") for agg in state["aggs"]] + filtered:
            if field:
                assert field in fields, f"{obj['id']}: field {field} is not mapped for {view['attributes']['title']}"
                used.add(field)
    # the dashboard covers what the issue asks for
    for field in ("@timestamp", "output.unit_sales", "family", "store", "inputs.onpromotion", "horizon_days",
                  "latency_ms", "model_version", "model_variant", "drift.max_feature_psi", "metrics.candidate_nwrmsle"):
        assert field in used, field


def test_monitoring_events_fields_are_mapped(templates):
    from monitoring.drift import drift_summary_event
    from monitoring.metrics_events import metrics_event

    fields = leaf_types(templates["shelfcast-monitoring"]["template"]["mappings"]["properties"])
    metrics = {"rows": 10, "candidate": {"nwrmsle": 0.5, "rmse": 2.0}, "baseline": {"nwrmsle": 0.6, "rmse": 2.5},
               "improvement_over_baseline": 0.1, "threshold_test_passed": 1}
    report = {"status": "ok", "alarm": False, "events": 5, "features": {"horizon": {"psi": 0.1, "drifted": False}},
              "categorical": {}, "unseen": {"any": 0.0}, "prediction": {"psi": 0.05}, "live": {"nwrmsle": 0.4},
              "model": {"name": "m", "version": "v"}}
    for event in (metrics_event(metrics, {"bundle_version": "v1"}), drift_summary_event(report)):
        flat = {}
        stack = [("", event)]
        while stack:
            prefix, value = stack.pop()
            for key, item in value.items():
                if isinstance(item, dict):
                    stack.append((f"{prefix}{key}.", item))
                else:
                    flat[f"{prefix}{key}"] = item
        assert set(flat) <= set(fields), set(flat) - set(fields)
