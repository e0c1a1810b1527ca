"""A new team's own data after serving: drift, Kibana's panels and the release rule on foreign-shaped events.

tests/pipeline/test_foreign_data.py drives each foreign shape (tests/pipeline/foreign_data.py) to one API
prediction. This goes on from there, as a team would: its validation window's requests through the real app
(events to the JSON-lines log), `python -m monitoring.drift --actuals` on them with the shape's own raw
train.csv, the production bundle's horizon traffic indexed as Fluentd writes it into the OpenSearch-API server
the Kibana tests use, every dashboard panel's query run on it, drift read back from that index, and a canary
judged by `pipeline.release`'s rule. ``sparse_large_ids`` (stores up to 32767, item ids up to 2**31 - 1) is
where int32 overflow, float rounding, exponent notation or ids sorted as numbers against vocabularies sorted
as text would show; ``no_oil_or_transactions`` is a store's own export (no id column, extra columns, another
column order) read back as actuals. No fault was found when this was written: it guards the path.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import train
from pipeline.event_sources import ElasticsearchEvents
from pipeline.serving_bundle import roll_forward
from monitoring.drift import drift_summary_event
from monitoring.drift_analysis import analyse
from monitoring.drift_params import DriftParams
from monitoring.metrics_events import metrics_event
from monitoring.setup_stack import install_index_templates
from tests.pipeline.foreign_data import FOREIGN_SHAPES, ForeignShape, item_ids
from tests.pipeline.test_foreign_data import _ingest_in_process, _project

from .conftest import REPO, served_validation_requests
from .test_kibana_panels import VISUALIZATIONS, bulk_as_fluentd, innermost_buckets, kibana_request, saved_objects

pytestmark = pytest.mark.slow  # a training run per shape (~10-20 s on 2 busy cores) and the drift CLI
REQUESTS = 400


@pytest.fixture(scope="module", params=["sparse_large_ids", "no_oil_or_transactions"])
def project(request, tmp_path_factory) -> tuple[ForeignShape, Path]:
    """The shape and its project: ingested, trained (models/candidate), rolled forward to models/production as
    promote does."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        root, source = _project(tmp_path_factory.mktemp(request.param), request.param)
        _ingest_in_process(root, source, monkeypatch)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert train.main(["--root", str(root), "--quiet"]) == 0
        roll_forward(root, root / "models/candidate", root / "models/production", candidate_digest="test")
    return FOREIGN_SHAPES[request.param], root


def serve(model_dir: Path, instances: list[dict], log: Path, batch: int) -> list[dict]:
    """`instances` through the real app, `batch` a request; the events its JSON-lines sink wrote."""
    from app import create_app
    from app.config import AppSettings
    from app.events import PredictionEventSink

    sink = PredictionEventSink.from_environment({"SHELFCAST_PREDICTION_LOG": str(log)})
    client = create_app(AppSettings(model_dir=model_dir, reload_interval_s=0), sink=sink).test_client()
    for start in range(0, len(instances), batch):
        answer = client.post("/api/v1/predict", json={"instances": instances[start:start + batch]})
        assert answer.status_code == 200, answer.get_data(as_text=True)
    sink.close()
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def horizon_requests(root: Path) -> list[dict]:
    """The validation window's requests moved on by its length: the production bundle's horizon, same series."""
    first = {name: dt.date.fromisoformat(json.loads((root / "models" / name / "bundle.json").read_text(
        encoding="utf-8"))["horizon_dates"][0]) for name in ("candidate", "production")}
    later = first["production"] - first["candidate"]
    return [{**r, "date": (dt.date.fromisoformat(r["date"]) + later).isoformat()}
            for r in served_validation_requests(root / "models/candidate", REQUESTS, seed=1, project=root)]


def drift(root: Path, bundle: Path, out: Path, *source: str) -> tuple[int, dict, str]:
    done = subprocess.run([sys.executable, "-m", "monitoring.drift", "--bundle", str(bundle), *source,
                           "--params", str(root / "params.yaml"), "--output-dir", str(out)],
                          cwd=root, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          timeout=300)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr[-3000:]
    return (done.returncode, json.loads((out / "drift.json").read_text(encoding="utf-8")),
            (out / "drift.html").read_text(encoding="utf-8"))


def shares(values) -> dict[str, float]:
    counts = collections.Counter(str(v) for v in values)
    total = sum(counts.values())
    return {key: count / total for key, count in counts.items()}


def assert_names_the_requested_ids(report: dict, html: str, events: list[dict]) -> None:
    """The report's store and item bins are the requested ids, written in full, each with its requests' share."""
    for field in ("store_nbr", "item_nbr"):
        bins = report["categorical"][field]["bins"]
        live = dict(zip(bins["labels"], bins["live"]))
        asked = shares(e["inputs"][field] for e in events)
        assert {label: share for label, share in live.items() if share} == pytest.approx(asked), field
        assert all(label.isdigit() for label in asked)
        for label in asked:
            assert f"<title>{label}: live {live[label]:.3f}</title>" in html, (field, label)


def test_validation_window_traffic_drifts_not_and_its_live_error_beats_the_baseline(project, tmp_path):
    shape, project = project
    bundle = project / "models/candidate"  # the bundle evaluate judged on this window: its actuals are known
    requests = served_validation_requests(bundle, REQUESTS, seed=0, project=project)
    events = serve(bundle, requests, tmp_path / "predictions.jsonl", batch=20)
    assert {e["inputs"]["store_nbr"] for e in events} == set(shape.stores)
    actuals = next((project / "data/raw").glob("train.csv*"))  # the store's own export, as it came
    status, report, html = drift(project, bundle, tmp_path / "drift", "--events", str(tmp_path / "predictions.jsonl"),
                                 "--actuals", str(actuals))
    assert status == 0 and report["alarm"] is False, report["reasons"]
    assert report["events"] == report["distinct_requests"] == len(requests)
    assert report["unseen"]["any"] == 0.0 and report["new_series"]["events"] == 0
    live = report["live"]
    assert live["rows"] == len(requests) and live["ratio_to_baseline"] < 1.0, live  # every row found, by its ids
    assert_names_the_requested_ids(report, html, events)
    stores = {int(row.split(",")[0]): row.split(",")[1]
              for row in (project / "data/raw/stores.csv").read_text().splitlines()[1:]}
    city = report["categorical"]["city"]["bins"]  # a store's attribute follows its number: mapped, not reordered
    asked = shares(stores[e["inputs"]["store_nbr"]] for e in events)
    assert {k: v for k, v in zip(city["labels"], city["live"]) if v} == pytest.approx(asked)


def test_horizon_traffic_through_the_event_index_fills_every_panel_with_the_real_ids(project, tmp_path):
    from osmem_server import OsmemServer

    shape, project = project
    bundle = project / "models/production"
    events = serve(bundle, horizon_requests(project), tmp_path / "predictions.jsonl", batch=8)
    metadata = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    stats = json.loads((bundle / "training_stats.json").read_text(encoding="utf-8"))
    stamp = {"timestamp": dt.datetime.now(dt.timezone.utc).isoformat()}
    quality = {"rows": 100, "candidate": {"nwrmsle": 0.5, "rmse": 3.0}, "baseline": {"nwrmsle": 0.6, "rmse": 3.5},
               "improvement_over_baseline": 0.17, "threshold_test_passed": 1}  # as the Kibana tests' evaluate event
    monitoring = [("shelfcast.drift", {**drift_summary_event(analyse(events, metadata, stats, DriftParams())),
                                       "event_id": "drift-1", **stamp}),
                  ("shelfcast.metrics", {**metrics_event(quality, {"bundle_version": metadata["version"]}),
                                         "event_id": "metrics-1", **stamp})]
    objects = {(o["type"], o["id"]): o for o in saved_objects()}
    now = dt.datetime.now(dt.timezone.utc)
    window = ((now - dt.timedelta(days=7)).isoformat(), (now + dt.timedelta(minutes=1)).isoformat())
    with OsmemServer.start(japanese=False, addr="127.0.0.1:0") as server:
        search = ElasticsearchEvents(server.url)
        install_index_templates(search)
        bulk_as_fluentd(search, [("shelfcast.prediction", e) for e in events] + monitoring)
        for panel in VISUALIZATIONS:
            view = objects[("index-pattern", panel["references"][0]["id"])]["attributes"]["title"]
            answer = search.request("POST", f"/{view}/_search", kibana_request(panel, *window))
            state = json.loads(panel["attributes"]["visState"])
            buckets = innermost_buckets(answer, [a for a in state["aggs"] if a["schema"] != "metric"])
            assert any(b["doc_count"] for b in buckets), f"{panel['id']}: no data in {view}"

        def terms(field: str) -> dict:
            answer = search.request("POST", "/shelfcast-prediction-*/_search", {
                "size": 0, "aggs": {"k": {"terms": {"field": field, "size": 1000}}}})
            return {b["key"]: b["doc_count"] for b in answer["aggregations"]["k"]["buckets"]}

        assert terms("inputs.store_nbr") == collections.Counter(str(e["inputs"]["store_nbr"]) for e in events)
        assert terms("inputs.item_nbr") == collections.Counter(str(e["inputs"]["item_nbr"]) for e in events)
        assert set(terms("inputs.item_nbr")) <= {str(i) for i in item_ids(shape).tolist()}
        assert {label.split(" — ")[0] for label in terms("store")} == {str(s) for s in shape.stores}
        status, report, html = drift(project, bundle, tmp_path / "drift", "--elasticsearch", server.url)
    assert status == 0 and report["alarm"] is False, report["reasons"]
    assert report["events"] == len(events)
    assert_names_the_requested_ids(report, html, events)


def test_a_canary_of_the_same_bundle_is_promoted_on_its_traffic(project, tmp_path):
    """The release rule on these ids: the canary's sticky share by store×item, production's replay of its requests
    paired with its answers, one request each (the latency comparison counts requests)."""
    from pipeline import release
    from pipeline.release_replay import ProductionReplay
    from pipeline.release_store import CANARY, PRODUCTION, ReleaseStore

    _, project = project

    models = tmp_path / "models"
    for variant in (PRODUCTION, CANARY):
        shutil.copytree(project / "models/production", models / variant)
    ReleaseStore(models).set_canary_share(0.5)
    events = serve(models / PRODUCTION, horizon_requests(project), tmp_path / "predictions.jsonl", batch=1)
    by_series = collections.defaultdict(set)
    for event in events:
        by_series[(event["inputs"]["store_nbr"], event["inputs"]["item_nbr"])].add(event["model_variant"])
    assert all(len(variants) == 1 for variants in by_series.values())  # sticky
    for event in events:  # the forecasts are judged here, not this machine's latency (a slow minute made one wait)
        event["latency_ms"] = 1.0
    traffic = release.read_traffic(events)
    verdict = release.judge(traffic, CANARY, replay=ProductionReplay(models / PRODUCTION))
    assert verdict.decision == "promote", verdict
    assert verdict.figures["compared_pairs"] == traffic[CANARY].predictions > 0
    assert verdict.figures["forecast_log_shift"] == 0.0 and verdict.figures["forecast_volume_log_ratio"] == 0.0


def test_a_single_stores_client_that_flags_no_promotion_raises_the_alarm(tmp_path_factory, tmp_path):
    """The promotion flag is the one input a client sets besides what it asks for: a client that stops sending it
    (every request `onpromotion: false`, an integration that never learnt the promotion calendar) is the
    training-serving skew drift is for. A shop of one store and 300 items, 1,500 of its validation window's
    requests (297 series): their real flags are `ok`, and the same requests unflagged were `inconclusive` ("PSI 0.428
    > 0.25, but ... the KS test cannot tell it from chance (p=0.15)"): Kolmogorov's p-value, a continuous
    variable's, on a flag, and a shop of 300 series could never reach its p < 0.001 (a flag repeated by a series
    counts once). The flag's own test, two shares: p=5e-6, the alarm."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        root, source = _project(tmp_path_factory.mktemp("single_store"), "single_store")
        _ingest_in_process(root, source, monkeypatch)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert train.main(["--root", str(root), "--quiet"]) == 0
    bundle = root / "models/candidate"
    requests = served_validation_requests(bundle, 1_500, seed=0, project=root)
    assert any(r["onpromotion"] for r in requests)
    serve(bundle, requests, tmp_path / "flagged.jsonl", batch=200)
    status, report, _ = drift(root, bundle, tmp_path / "flagged", "--events", str(tmp_path / "flagged.jsonl"))
    assert status == 0 and report["alarm"] is False, report["reasons"]
    assert report["features"]["target_onpromotion"]["verdict"] == "ok"
    serve(bundle, [{**r, "onpromotion": False} for r in requests], tmp_path / "unflagged.jsonl", batch=200)
    status, report, html = drift(root, bundle, tmp_path / "unflagged", "--events", str(tmp_path / "unflagged.jsonl"))
    assert status == 1 and report["alarm"] is True, report["features"]["target_onpromotion"]
    assert [r for r in report["reasons"] if r.startswith("feature ")] == \
        [f"feature target_onpromotion: {report['features']['target_onpromotion']['note']}"]
    assert "two-proportion z p=" in report["reasons"][0] and "two-proportion z p=" in html
    assert report["features"]["target_onpromotion"]["test"] == "proportions"
