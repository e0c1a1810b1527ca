"""Drift report: what the app is asked vs what the model was trained on.

    python -m monitoring.drift [--bundle models/production] [--events logs/predictions.jsonl
                               | --elasticsearch http://localhost:9200 [--index shelfcast-prediction-*]]
                               [--actuals sales.csv] [--params params.yaml] [--output-dir logs/drift]

Compares the requests with the bundle's served-horizon reference (features at its own
origin and horizon days; pipeline/drift_stats.py). Writes drift.json and drift.html
(a verdict and its reason per feature, inline SVG charts) and exits 1 when a `drift:`
threshold of params.yaml is crossed, so a scheduler (cron, CI) can alert;
0 when nothing is, 2 when the inputs cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from monitoring.drift_analysis import ActualsError, analyse, read_actuals
from monitoring.drift_params import DriftParamsError, load_drift_params
from pipeline.event_sources import DEFAULT_INDEX_PATTERN, ElasticsearchEvents, EventSourceError, read_jsonl_events
from monitoring.report_html import render_report
from monitoring.serving_data import EventShapeError
from pipeline.atomic import write_json_atomic, write_text_atomic
from pipeline.bundle import BundleError, verify_bundle

DEFAULT_BUNDLE = Path("models/production")
DEFAULT_EVENTS = Path("logs/predictions.jsonl")
DEFAULT_OUTPUT_DIR = Path("logs/drift")
REPORT_JSON, REPORT_HTML = "drift.json", "drift.html"
EXIT_OK, EXIT_ALARM, EXIT_ERROR = 0, 1, 2


def read_bundle_statistics(path: Path | str) -> tuple[dict, dict]:
    """(bundle.json, training_stats.json) of a verified bundle; the model graph is not loaded."""
    path = Path(path)
    verify_bundle(path)
    try:
        metadata = json.loads((path / "bundle.json").read_text(encoding="utf-8"))
        stats = json.loads((path / "training_stats.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BundleError(f"{path}: bundle.json/training_stats.json is not valid JSON ({exc})") from None
    if "vocabularies" not in metadata or "dense" not in stats:
        raise BundleError(f"{path}: the bundle has no vocabularies or training statistics for drift checks")
    return metadata, stats


def write_report(report: Mapping[str, Any], output_dir: Path | str) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    json_path, html_path = output_dir / REPORT_JSON, output_dir / REPORT_HTML
    write_json_atomic(json_path, report)
    write_text_atomic(html_path, render_report(report))
    return json_path, html_path


DRIFT_TAG = "shelfcast.drift"


def _alarmable(report: Mapping[str, Any]) -> dict[str, float]:
    """PSI of every feature that can raise the alarm (calendar features are shown, not alarmed)."""
    psi = {name: record["psi"] for name, record in report["features"].items() if record.get("role") != "calendar"}
    psi.update({f"category {name}": record["psi"] for name, record in report["categorical"].items()})
    return psi


def drift_summary_event(report: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers the Kibana drift panels plot (the full report stays in drift.json)."""
    psi = _alarmable(report)
    worst = max(psi, key=psi.get) if psi else None
    drifted = sum(r["drifted"] for r in report["features"].values()) + \
        sum(r["drifted"] for r in report["categorical"].values())
    summary: dict[str, Any] = {"status": report["status"], "alarm": report["alarm"], "events": report["events"],
                               "max_feature_psi": psi[worst] if worst else 0.0, "max_feature_psi_name": worst or "",
                               "drifted_features": drifted, "unseen_share": report["unseen"].get("any", 0.0)}
    if report.get("prediction"):
        summary["prediction_psi"] = report["prediction"]["psi"]
    if report.get("live") and report["live"].get("nwrmsle") is not None:
        summary["live_nwrmsle"] = report["live"]["nwrmsle"]
    return {"kind": "drift", "model_name": report["model"]["name"], "model_version": report["model"]["version"],
            "drift": summary}


def summary_line(report: Mapping[str, Any], html_path: Path) -> str:
    """One line for the terminal or a cron mail: the verdict first, then what it rests on."""
    dense = sum(r["drifted"] for r in report["features"].values())
    categorical = sum(r["drifted"] for r in report["categorical"].values())
    calendar = len(report.get("not_alarmed", {}).get("features", []))
    shown = f"; {calendar} calendar feature(s) shown, not alarmed" if calendar else ""
    rows = (*report["features"].values(), *report["categorical"].values())
    unsure = sum(r.get("verdict") == "inconclusive" for r in rows)
    shown += f"; {unsure} inconclusive (too few events to tell)" if unsure else ""
    if report["status"] == "insufficient_data":
        verdict = f"no verdict: {report['events']} events are too few"
    elif report["alarm"]:
        verdict = (f"ALARM: {len(report['reasons'])} reason(s) over {report['events']} events, "
                   f"{dense} feature(s) and {categorical} categorical input(s) drifted")
    else:
        verdict = f"ok: {report['events']} events, no feature drifted"
    return f"drift: {verdict}{shown}; report {html_path}"


def run(bundle: Path, events_path: Path | None, elasticsearch: str | None, index: str, since: str | None,
        actuals_path: Path | None, params_path: Path, output_dir: Path) -> dict[str, Any]:
    params = load_drift_params(params_path)
    metadata, stats = read_bundle_statistics(bundle)
    if elasticsearch:
        source = ElasticsearchEvents(elasticsearch, index, username=os.environ.get("ELASTICSEARCH_USERNAME"),
                                     password=os.environ.get("ELASTICSEARCH_PASSWORD"))
        events = source.events(params.max_events, since)
        described = f"{elasticsearch}/{index}"
    else:
        events_path = events_path or DEFAULT_EVENTS
        events = read_jsonl_events(events_path, params.max_events)
        if since:
            events = [e for e in events if str(e.get("timestamp", "")) >= since]
        described = str(events_path)
    # a shadow's events mirror requests production already answered (app/variants.py): not traffic
    events = [e for e in events if e.get("model_variant") != "shadow"]
    actuals = read_actuals(actuals_path) if actuals_path else None
    report = analyse(events, metadata, stats, params, actuals, source=described)
    write_report(report, output_dir)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.drift", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle (default: %(default)s)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--events", type=Path, help=f"JSON-lines log or directory of them (default: {DEFAULT_EVENTS})")
    source.add_argument("--elasticsearch", metavar="URL", default=os.environ.get("ELASTICSEARCH_URL") or None,
                        help="read events from Elasticsearch/OpenSearch (default: $ELASTICSEARCH_URL if set)")
    parser.add_argument("--index", default=DEFAULT_INDEX_PATTERN, help="index pattern (default: %(default)s)")
    parser.add_argument("--since", help="only events at or after this ISO-8601 time")
    parser.add_argument("--actuals", type=Path, help="CSV of store_nbr,item_nbr,date,unit_sales for live NWRMSLE")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="thresholds (drift: section)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where drift.json/html go")
    parser.add_argument("--emit", action="store_true",
                        help=f"also send a {DRIFT_TAG} summary event (Fluentd if FLUENTD_HOST is set, else logs/)")
    args = parser.parse_args(argv)
    if args.events is not None:
        args.elasticsearch = None
    try:
        report = run(args.bundle, args.events, args.elasticsearch, args.index, args.since, args.actuals,
                     args.params, args.output_dir)
    except (BundleError, EventSourceError, EventShapeError, ActualsError, DriftParamsError) as exc:
        print(f"drift: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.emit:
        from monitoring.monitoring_events import emit_monitoring_event

        print(f"drift: {DRIFT_TAG} summary sent to {emit_monitoring_event(DRIFT_TAG, drift_summary_event(report))}")
    for reason in report["reasons"]:
        print(f"drift: {reason}")
    print(summary_line(report, args.output_dir / REPORT_HTML))
    return EXIT_ALARM if report["alarm"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
