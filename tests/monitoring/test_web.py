"""The monitoring blueprint on a Flask app: the latest drift report and recent prediction statistics."""

from __future__ import annotations

import json
import os
import re
import time

from flask import Flask

from monitoring import drift, web
from monitoring.web import monitoring_blueprint


def client_for(tmp_path, monkeypatch):
    monkeypatch.setenv("SHELFCAST_DRIFT_DIR", str(tmp_path / "drift"))
    monkeypatch.setenv("SHELFCAST_PREDICTION_LOG", str(tmp_path / "predictions.jsonl"))
    app = Flask(__name__)
    app.register_blueprint(monitoring_blueprint)
    return app.test_client()


def test_page_before_any_event_or_report(tmp_path, monkeypatch):
    client = client_for(tmp_path, monkeypatch)
    page = client.get("/monitoring")
    assert page.status_code == 200
    assert b"No drift report yet" in page.data and b"No prediction events" in page.data
    assert client.get("/monitoring/drift-report").status_code == 404
    assert client.get("/api/v1/monitoring").get_json()["drift"] is None


def test_page_shows_the_latest_report_and_recent_statistics(tmp_path, monkeypatch, stream, jsonl, production_bundle):
    client = client_for(tmp_path, monkeypatch)
    events = stream(400, seed=11,
                    shift=lambda dense, cat, pred: dense["target_onpromotion"].__setitem__(slice(None), 1.0))
    for event in events:
        event["inputs"]["onpromotion"] = True
    jsonl(tmp_path / "predictions.jsonl", events)
    assert drift.main(["--bundle", str(production_bundle), "--events", str(tmp_path / "predictions.jsonl"),
                       "--output-dir", str(tmp_path / "drift")]) == drift.EXIT_ALARM
    page = client.get("/monitoring").get_data(as_text=True)
    assert "Drift alarm" in page and "target_onpromotion" in page and "On promotion" in page and "100.0%" in page
    data = client.get("/api/v1/monitoring").get_json()
    assert data["recent"]["events"] == 400 and data["recent"]["promotion_share"] == 1.0
    assert data["drift"]["alarm"] is True and data["drift"]["top_features"][0]["drifted"]
    assert data["drift"]["top_features"][0]["verdict"] == "drift"
    assert not any(f["name"] in ("horizon", "target_day_of_month") for f in data["drift"]["top_features"])
    report = client.get("/monitoring/drift-report")
    assert report.status_code == 200 and b"<svg" in report.data
    # Its inline styles are allowed by its own policy (the app's strict default would drop them); scripts are not.
    policy = report.headers["Content-Security-Policy"]
    assert "style-src 'unsafe-inline'" in policy and "default-src 'none'" in policy and "script" not in policy
    # the two directives that do not fall back to default-src: an injected <base> or <form> is refused too
    assert "base-uri 'none'" in policy and "form-action 'none'" in policy


def test_traffic_is_split_by_release_variant(tmp_path, monkeypatch, jsonl):
    """Production and canary events in one log: each variant's own counts, canary errors, latency and forecast."""
    client = client_for(tmp_path, monkeypatch)

    def event(variant, request, latency, units, **extra):
        return {"timestamp": f"2026-12-01T10:00:{request % 60:02d}+00:00", "request_id": f"r{request}",
                "instance_index": 0, "model_variant": variant, "model_version": {"production": "3"}.get(variant, "4"),
                "latency_ms": latency, "output": {"unit_sales": units}, "source": "api",
                "inputs": {"store_nbr": 1, "item_nbr": request, "date": "2017-08-16", "onpromotion": False}, **extra}

    events = [event("production", i, 10.0 + i % 3, 2.0) for i in range(30)]
    events += [event("canary", 100 + i, 40.0, 6.0) for i in range(10)]
    events += [event("production", 200 + i, 12.0, 2.0, canary_failed=True) for i in range(2)]  # canary failed
    jsonl(tmp_path / "predictions.jsonl", events)
    variants = {row["variant"]: row for row in client.get("/api/v1/monitoring").get_json()["recent"]["variants"]}
    assert list(variants) == ["production", "canary"]
    production, canary = variants["production"], variants["canary"]
    assert (production["requests"], production["predictions"], production["errors"]) == (32, 32, None)
    assert (canary["requests"], canary["predictions"], canary["errors"]) == (10, 10, 2)
    assert production["latency_ms"]["p50"] == 11.0 and canary["latency_ms"] == {"p50": 40.0, "p95": 40.0}
    assert (production["forecast_mean"], canary["forecast_mean"]) == (2.0, 6.0)
    page = client.get("/monitoring").get_data(as_text=True)
    table = page[page.index('<table id="variants"'):page.index("</table>", page.index('<table id="variants"'))]
    assert 'class="variant-production"' in table and 'class="variant-canary"' in table and "variant-shadow" not in table
    assert "40.00 / 40.00" in table and "6.00" in table and "not logged" in table
    assert "<script" not in page and "style=" not in page


def test_latency_is_counted_once_per_request_not_once_per_prediction(tmp_path, monkeypatch, jsonl):
    """The app logs each of a batch's predictions with the batch's latency (app/service.py), so percentiles over
    events weighted a request by its size: one slow batch of 200 made the p50 of 41 requests 500 ms."""
    client = client_for(tmp_path, monkeypatch)

    def event(request, index, latency, variant="production", batch=1):
        return {"timestamp": "2026-12-01T10:00:00+00:00", "request_id": request, "instance_index": index,
                "batch_size": batch, "model_variant": variant, "model_version": "3", "latency_ms": latency,
                "output": {"unit_sales": 2.0}, "source": "api",
                "inputs": {"store_nbr": 1, "item_nbr": index, "date": "2017-08-16", "onpromotion": False}}

    events = [event(f"quick-{i}", 0, 5.0) for i in range(40)]
    events += [event("slow-batch", i, 500.0, batch=200) for i in range(200)]
    events += [event(f"quick-{i}", 0, 900.0, "shadow") for i in range(40)]  # after the response: not a user's wait
    events += [event("shared", 0, 6.0, batch=2), event("shared", 1, 8.0, "canary", batch=2)]  # one request, 2 parts
    jsonl(tmp_path / "predictions.jsonl", events)
    recent = client.get("/api/v1/monitoring").get_json()["recent"]
    assert recent["events"] == 282
    # 42 requests: 40 at 5 ms, the shared one half at 6 and half at 8 ms (its two parts), the batch at 500 ms; the
    # p99 is the batch's (41 of 42 requests, 97.6 %, are quicker: percentiles are the latencies requests had)
    assert recent["latency_ms"] == {"p50": 5.0, "p95": 5.0, "p99": 500.0, "requests": 42}
    variants = {row["variant"]: row for row in recent["variants"]}
    assert variants["production"]["latency_ms"] == {"p50": 5.0, "p95": 5.0}  # 40 at 5, one at 6, one at 500
    assert variants["canary"]["latency_ms"] == {"p50": 8.0, "p95": 8.0}
    assert variants["shadow"]["latency_ms"] == {"p50": 900.0, "p95": 900.0}
    page = client.get("/monitoring").get_data(as_text=True)
    assert "Latency p50 / p95 / p99 per request</th><td>5.00 / 5.00 / 500.00 ms (42 requests)</td>" in page
    assert "counted once per request however many predictions it asked for" in " ".join(page.split())


def test_the_overall_forecasts_are_those_users_were_served_not_the_shadows(tmp_path, monkeypatch, jsonl):
    """A shadow forecasts a copy of every request after the response (never returned): a shadow forecasting 100x
    made the page's overall forecast mean 50x what users were served, and its promotion share and sources counted
    every request twice. Its own figures stay in the per-variant table."""
    client = client_for(tmp_path, monkeypatch)

    def event(request, variant, units, promoted):
        return {"timestamp": f"2026-12-01T10:00:{request % 60:02d}+00:00", "request_id": f"r{request}",
                "instance_index": 0, "batch_size": 1, "model_variant": variant,
                "model_version": {"shadow": "4"}.get(variant, "3"), "latency_ms": 5.0,
                "output": {"unit_sales": units}, "source": "api",
                "inputs": {"store_nbr": 1, "item_nbr": request, "date": "2017-08-16", "onpromotion": promoted}}

    events = [event(i, "production", 2.0, i < 10) for i in range(40)]
    events += [event(i, "shadow", 200.0, True) for i in range(40)]
    jsonl(tmp_path / "predictions.jsonl", events)
    recent = client.get("/api/v1/monitoring").get_json()["recent"]
    assert recent["forecast_units"] == {"mean": 2.0, "p50": 2.0, "p95": 2.0}
    assert recent["promotion_share"] == 0.25 and recent["sources"] == {"api": 40}
    variants = {row["variant"]: row for row in recent["variants"]}
    assert variants["shadow"]["forecast_mean"] == 200.0 and variants["shadow"]["predictions"] == 40
    page = " ".join(client.get("/monitoring").get_data(as_text=True).split())
    assert "Forecast mean / p50 / p95 served</th><td>2.00 / 2.00 / 2.00 units" in page


def test_recent_predictions_are_read_as_the_release_decision_reads_them(tmp_path, monkeypatch, jsonl):
    """One reader for the page and `release decide`: other senders' records are not predictions, a torn last line
    (a writer killed mid-line) is skipped, and a line that is not JSON is skipped and counted, not allowed to
    hide every other event's statistics (it blanked the whole section: "The prediction log cannot be read")."""
    client = client_for(tmp_path, monkeypatch)
    log = tmp_path / "predictions.jsonl"
    events = [{"timestamp": f"2026-12-01T10:00:{i:02d}+00:00", "request_id": f"r{i}", "model_variant": "production",
               "model_version": "3", "latency_ms": 5.0, "output": {"unit_sales": 2.0}, "source": "api",
               "inputs": {"store_nbr": 1, "item_nbr": i, "date": "2017-08-16", "onpromotion": False}}
              for i in range(5)]
    jsonl(log, events + [{"tag": "shelfcast.monitoring", "kind": "drift_report", "status": "ok"}])
    with open(log, "ab") as handle:
        handle.write(b'{"timestamp": "2026-12-01T10:00:09+00:00", "request_')  # torn
    recent = client.get("/api/v1/monitoring").get_json()["recent"]
    assert (recent["events"], recent["error"], recent["sources"]) == (5, None, {"api": 5})

    monkeypatch.setattr(web.RECENT_STATISTICS, "ttl_s", 0.0)  # the changed log at once (the cache: test below)
    log.write_text(log.read_text().replace('"request_id": "r2"', 'not json, "request_id": "r2"'))
    recent = client.get("/api/v1/monitoring").get_json()["recent"]
    assert (recent["events"], recent["error"], recent["sources"]) == (4, None, {"api": 4})
    assert (recent["unreadable_lines"], recent["unreadable"]) == (1, {"not JSON": 1})
    page = client.get("/monitoring").get_data(as_text=True)
    assert "cannot be read" not in page and "4 events, from" in page
    skipped = " ".join(re.search(r'<p id="unreadable-lines"[^>]*>(.*?)</p>', page, re.S).group(1).split())
    assert skipped.startswith(f"1 line of <code>{log.parent.name}/{log.name}</code> could not be read as an event "
                              "and was skipped (not JSON: 1)")


def prediction(i: int, onpromotion: bool = False) -> dict:
    return {"timestamp": f"2026-12-01T10:00:{i % 60:02d}+00:00", "request_id": f"r{i}", "model_variant": "production",
            "model_version": "3", "latency_ms": 5.0, "output": {"unit_sales": 2.0}, "source": "api",
            "inputs": {"store_nbr": 1, "item_nbr": i, "date": "2017-08-16", "onpromotion": onpromotion}}


def test_recent_statistics_are_read_once_per_ttl_while_the_log_changes(tmp_path, monkeypatch, jsonl):
    """Anyone may loop on the page, and each read of the log holds a worker's forecasts for ~0.2-0.4 s: the
    statistics are reused for the TTL, and read again after it once the log has changed."""
    client = client_for(tmp_path, monkeypatch)
    monkeypatch.setattr(web.RECENT_STATISTICS, "ttl_s", 0.5)
    log = tmp_path / "predictions.jsonl"
    jsonl(log, [prediction(i) for i in range(5)])
    assert client.get("/api/v1/monitoring").get_json()["recent"]["events"] == 5
    with open(log, "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(prediction(i)) + "\n" for i in range(5, 8))
    assert client.get("/api/v1/monitoring").get_json()["recent"]["events"] == 5  # within the TTL: reused
    assert "5 events, from" in client.get("/monitoring").get_data(as_text=True)  # the page: the same figures
    time.sleep(0.6)
    assert client.get("/api/v1/monitoring").get_json()["recent"]["events"] == 8  # after it: the new events
    assert "8 events, from" in client.get("/monitoring").get_data(as_text=True)


def test_an_unchanged_log_is_not_read_again_after_the_ttl(tmp_path, monkeypatch, jsonl):
    """The key is the log's identity (inode, size, mtime_ns, ctime_ns): while it is the same, the statistics are
    reused however long ago they were read; a same-size rewrite that keeps the mtime (`cp -p` of another log of
    the same size) still changes the ctime, and is read again."""
    from monitoring import recent_predictions

    client = client_for(tmp_path, monkeypatch)
    monkeypatch.setattr(web.RECENT_STATISTICS, "ttl_s", 0.2)
    reads = []
    real = recent_predictions.recent_statistics
    monkeypatch.setattr(recent_predictions, "recent_statistics", lambda *a, **k: reads.append(1) or real(*a, **k))
    log = tmp_path / "predictions.jsonl"
    jsonl(log, [prediction(i) for i in range(4)])
    assert client.get("/api/v1/monitoring").get_json()["recent"]["promotion_share"] == 0.0
    time.sleep(0.3)
    assert client.get("/api/v1/monitoring").get_json()["recent"]["promotion_share"] == 0.0
    assert len(reads) == 1  # past the TTL, the same log: not read again
    before = os.stat(log)
    with open(log, "r+b") as handle:  # the same inode and size, every "false" now "true " (still JSON)
        text = handle.read()
        handle.seek(0)
        handle.write(text.replace(b'"onpromotion": false', b'"onpromotion": true '))
    os.utime(log, ns=(before.st_atime_ns, before.st_mtime_ns))
    time.sleep(0.3)
    assert client.get("/api/v1/monitoring").get_json()["recent"]["promotion_share"] == 1.0


def write_report(tmp_path, model: dict | None) -> None:
    (tmp_path / "drift").mkdir(exist_ok=True)
    report = {"status": "drift", "alarm": True, "events": 300, "reasons": ["x drifted"], "features": {}}
    (tmp_path / "drift" / drift.REPORT_JSON).write_text(json.dumps({**report, **({"model": model} if model else {})}))


def test_the_features_that_moved_most_are_only_those_that_can_alarm(tmp_path, monkeypatch):
    """Found by a probe: the page's table led with a feature the model gives no weight (unweighted: shown, never
    alarmed) while drift's own summary leaves those out; it now lists what drift could alarm on."""
    (tmp_path / "drift").mkdir()
    features = {"target_is_national_holiday": {"psi": 0.9, "role": "unweighted", "verdict": "not alarmed"},
                "horizon": {"psi": 8.6, "role": "calendar", "verdict": "not alarmed"},
                "mean_log1p_7d": {"psi": 0.05, "role": "history", "verdict": "ok"}}
    report = {"status": "ok", "alarm": False, "events": 300, "reasons": [], "features": features,
              "categorical": {"store_nbr": {"psi": 0.02, "verdict": "ok"}}}
    (tmp_path / "drift" / drift.REPORT_JSON).write_text(json.dumps(report))
    client = client_for(tmp_path, monkeypatch)
    names = [f["name"] for f in client.get("/api/v1/monitoring").get_json()["drift"]["top_features"]]
    assert names == ["mean_log1p_7d", "category store_nbr"]


def test_a_report_for_another_model_than_the_hosts_is_said_to_be_so(tmp_path, monkeypatch):
    """The host app names the model it serves (web.SERVING_MODEL); monitoring compares without importing it."""
    client = client_for(tmp_path, monkeypatch)
    serving = {"name": "shelfcast-forecaster", "version": "7", "digest": "b" * 64}
    client.application.extensions[web.SERVING_MODEL] = lambda: serving
    write_report(tmp_path, {"name": "shelfcast-forecaster", "version": "6", "digest": "a" * 64})
    page = client.get("/monitoring").get_data(as_text=True)
    assert page.index('id="drift-other-model"') < page.index('id="drift-status"')  # read before the verdict
    assert "for another model (shelfcast-forecaster\n    <code>6</code>)" in page
    assert "the model now serving is shelfcast-forecaster\n    <code>7</code>" in page
    data = client.get("/api/v1/monitoring").get_json()
    assert data["drift"]["of_serving_model"] is False and data["serving_model"] == serving

    write_report(tmp_path, {"name": "shelfcast-forecaster", "version": "7", "digest": "b" * 64})
    assert 'id="drift-other-model"' not in client.get("/monitoring").get_data(as_text=True)
    write_report(tmp_path, {"name": "shelfcast-forecaster", "version": "7", "digest": "c" * 64})  # retrained, same
    assert client.get("/api/v1/monitoring").get_json()["drift"]["of_serving_model"] is False  # version: digest says


def test_without_a_named_serving_model_or_a_reports_model_nothing_is_compared(tmp_path, monkeypatch):
    client = client_for(tmp_path, monkeypatch)
    write_report(tmp_path, {"name": "shelfcast-forecaster", "version": "6"})
    assert client.get("/api/v1/monitoring").get_json()["drift"]["of_serving_model"] is None
    client.application.extensions[web.SERVING_MODEL] = lambda: {"name": "shelfcast-forecaster", "version": "7"}
    write_report(tmp_path, None)  # an unreadable or older report without its model: no claim either way
    page = client.get("/monitoring").get_data(as_text=True)
    assert client.get("/api/v1/monitoring").get_json()["drift"]["of_serving_model"] is None
    assert 'id="drift-other-model"' not in page and "<h1>Monitoring</h1>" in page  # the bare layout has it too


def test_closed_day_answers_are_counted_where_the_forecast_mean_includes_them(tmp_path, monkeypatch, jsonl):
    """A store-day closed a year earlier is served 0 units with store_closed (pipeline/closed_days.py): the served
    forecast mean dips over Christmas while drift and release decide leave those answers out; the page counts them."""
    client = client_for(tmp_path, monkeypatch)
    events = [{"timestamp": f"2026-12-01T10:00:{i:02d}+00:00", "request_id": f"r{i}", "instance_index": 0,
               "batch_size": 1, "model_variant": "production", "model_version": "3", "latency_ms": 5.0,
               "output": {"unit_sales": 0.0, "store_closed": True} if i < 10 else {"unit_sales": 4.0},
               "inputs": {"store_nbr": 1, "item_nbr": i, "date": "2016-12-25", "onpromotion": False}}
              for i in range(40)]
    jsonl(tmp_path / "predictions.jsonl", events)
    recent = client.get("/api/v1/monitoring").get_json()["recent"]
    assert recent["closed_day_answers"] == 10 and recent["forecast_units"]["mean"] == 3.0
    page = " ".join(client.get("/monitoring").get_data(as_text=True).split())
    assert '<tr id="closed-day-answers"><th scope="row">Closed-day answers</th><td>10: 0 units' in page


def test_a_drift_report_that_is_json_but_no_object_is_reported_unreadable_not_a_500(tmp_path, monkeypatch):
    """Found by a probe: a drift.json holding valid JSON that is no object (a list, a string; another tool's file, or
    an older one of another shape) made /monitoring and /api/v1/monitoring answer 500 (AttributeError in the page's
    summary), where an invalid one is shown as unreadable."""
    (tmp_path / "drift").mkdir()
    client = client_for(tmp_path, monkeypatch)
    for text in ("[1]", '"ok"', "null"):
        (tmp_path / "drift" / drift.REPORT_JSON).write_text(text)
        assert client.get("/monitoring").status_code == 200, text
        shown = client.get("/api/v1/monitoring").get_json()["drift"]
        assert shown["status"] == "unreadable" and "not a JSON object" in shown["reasons"][0], (text, shown)


def test_a_drift_report_nested_too_deep_to_parse_is_reported_unreadable_not_a_500(tmp_path, monkeypatch):
    """Found by an outside review's probe of every GET route: a drift.json of JSON nested deeper than Python's
    parser recurses (cut short or not; another tool's file, a damaged disk) made /monitoring and /api/v1/monitoring
    answer 500 (a RecursionError, not a ValueError), as a checksums.json or bundle.json did before."""
    (tmp_path / "drift").mkdir()
    client = client_for(tmp_path, monkeypatch)
    for text in ('{"a": [' * 3000, "[" * 100_000 + "]" * 100_000):
        (tmp_path / "drift" / drift.REPORT_JSON).write_text(text)
        assert client.get("/monitoring").status_code == 200, text[:20]
        shown = client.get("/api/v1/monitoring").get_json()["drift"]
        assert shown["status"] == "unreadable" and "nested too deep" in shown["reasons"][0], shown


def test_a_drift_report_whose_fields_have_other_types_is_reported_unreadable_naming_the_field(tmp_path, monkeypatch):
    """Found by a probe of the values /monitoring shows: a drift.json that is an object, but with a string where
    drift.py writes a number or an object (another tool's file, a hand-edited one, markup in every field) made
    /monitoring answer 500 (TypeError formatting '%.1f' in the template), and a "features" list both pages."""
    (tmp_path / "drift").mkdir()
    client = client_for(tmp_path, monkeypatch)
    markup = "<script>alert(1)</script>"
    feature = {"psi": 0.5, "p_value": 0.01, "drifted": True, "verdict": markup}
    cases = {"unseen.any": {"unseen": {"any": markup}}, "prediction.psi": {"prediction": {"psi": markup}},
             "live.nwrmsle": {"live": {"nwrmsle": markup, "rows": 3}}, "'features'": {"features": [markup]},
             "features.f.psi": {"features": {"f": {**feature, "psi": markup}}},
             "features.f.p_value": {"features": {"f": {**feature, "p_value": "0.01"}}},
             "features.f.psi'": {"features": {"f": {**feature, "psi": None}}},
             "categorical.store_nbr": {"categorical": {"store_nbr": markup}},
             "'model'": {"model": markup}, "'status'": {"status": [markup]}, "'reasons'": {"reasons": markup}}
    for named, fields in cases.items():
        (tmp_path / "drift" / drift.REPORT_JSON).write_text(json.dumps({"status": "ok", "events": 5, **fields}))
        page = client.get("/monitoring")
        assert page.status_code == 200 and markup.encode() not in page.data, named
        shown = client.get("/api/v1/monitoring").get_json()["drift"]
        assert shown["status"] == "unreadable" and named in shown["reasons"][0], (named, shown)
    # the same fields with their types are shown, escaped
    (tmp_path / "drift" / drift.REPORT_JSON).write_text(json.dumps(
        {"status": markup, "events": 5, "model": {"name": markup, "version": markup}, "reasons": [markup],
         "unseen": {"any": 0.25}, "prediction": {"psi": 0.5}, "features": {markup: feature}}))
    page = client.get("/monitoring")
    assert page.status_code == 200 and markup.encode() not in page.data and b"&lt;script&gt;" in page.data
    assert client.get("/api/v1/monitoring").get_json()["drift"]["status"] == markup
    # a feature without a p-value (a hand-written report): its cell is a dash, where the page answered 500
    (tmp_path / "drift" / drift.REPORT_JSON).write_text(json.dumps(
        {"status": "ok", "events": 5, "features": {"f": {"psi": 0.5, "verdict": "ok"}}}))
    page = client.get("/monitoring")
    assert page.status_code == 200 and "<td>0.500</td><td>–</td>" in page.get_data(as_text=True)
