"""The monitoring blueprint on a Flask app: the latest drift report and recent prediction statistics."""

from __future__ import annotations

from flask import Flask

from monitoring import drift
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
    events = stream(400, seed=11, shift=lambda dense, cat, pred: dense["target_onpromotion"].__setitem__(slice(None), 1.0))
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
