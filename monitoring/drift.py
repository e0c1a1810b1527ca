"""Drift report: what the app is asked vs what the model was trained on.

    python -m monitoring.drift [--bundle models/production] [--events logs/predictions.jsonl
                               | --elasticsearch http://localhost:9200 [--index shelfcast-prediction-*]]
                               [--actuals sales.csv] [--params params.yaml] [--output-dir logs/drift]

Compares the requests the bundle answered with its served-horizon reference (features at
its own origin and horizon days; pipeline/drift_stats.py); events logged by other model
versions (an earlier production, a canary) and a shadow's are set aside and counted.
Writes drift.json and drift.html (a verdict and its reason per feature, inline SVG charts)
and exits 1 when a `drift:` threshold of params.yaml is crossed, so a scheduler (cron, CI)
can alert; 0 when nothing is, 2 on any error (the inputs cannot be read, or a bug): never 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from monitoring.drift_analysis import ROLE_UNWEIGHTED, analyse
from pipeline.actuals import ActualsError, read_actuals
from monitoring.drift_params import DriftParamsError, load_drift_params
from pipeline.event_sources import (DEFAULT_INDEX_PATTERN, DEFAULT_PREDICTION_LOG, ENV_PREDICTION_LOG,
                                    ElasticsearchEvents, EventSourceError, parse_time, prediction_log,
                                    read_jsonl_events)
from monitoring.report_html import render_report
from monitoring.public_paths import PublicPaths
from monitoring.serving_data import EventShapeError
from pipeline.atomic import write_json_atomic, write_text_atomic
from pipeline.bundle import BundleError, verify_bundle
from pipeline.drift_stats import ROLE_CALENDAR
from pipeline.stage import (CommandParser, interruption_behind, output_any_terminal_can_take, run_interruptible,
                            stdout_closed, stopped_writing)

DEFAULT_BUNDLE = Path("models/production")
DEFAULT_OUTPUT_DIR = Path("logs/drift")
REPORT_JSON, REPORT_HTML = "drift.json", "drift.html"
EXIT_OK, EXIT_ALARM, EXIT_ERROR = 0, 1, 2


class BundleStatistics(NamedTuple):
    metadata: dict  # bundle.json
    stats: dict  # training_stats.json
    digest: str  # what the app logs as each event's model_digest


def read_bundle_statistics(path: Path | str) -> BundleStatistics:
    """What drift needs of a verified bundle; the model graph is not loaded."""
    path = Path(path)
    digest = verify_bundle(path)
    try:
        metadata = json.loads((path / "bundle.json").read_text(encoding="utf-8"))
        stats = json.loads((path / "training_stats.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BundleError(f"{path}: bundle.json/training_stats.json is not valid JSON ({exc})") from None
    if "vocabularies" not in metadata or "dense" not in stats:
        raise BundleError(f"{path}: the bundle has no vocabularies or training statistics for drift checks")
    return BundleStatistics(metadata, stats, digest)


SET_ASIDE_REASON = ("not answered by this bundle: another model version (an earlier production, a canary) computes "
                    "other features and vocabulary ids, and a shadow's events mirror requests production answered")


NO_MODEL_NAMED = "naming no model (no model_digest, model_name or model_version)"


def answered_by(bundle: BundleStatistics, events: Sequence[Mapping[str, Any]]
                ) -> tuple[list[Mapping[str, Any]], dict[str, int]]:
    """The events this bundle answered, and a count of the others by variant and model version.

    An event names its model by `model_digest` (the bundle digest, app/service.py), or, logged before
    that field, by `model_name` and `model_version`. Only this bundle's events can be decoded with its
    feature names and vocabularies.
    """
    name, version = bundle.metadata.get("name"), bundle.metadata.get("version")
    judged, others = [], Counter()
    for event in events:
        variant = str(event.get("model_variant", "production"))
        digest = event.get("model_digest")
        if digest is not None:
            ours = digest == bundle.digest
        else:
            ours = event.get("model_name") == name and event.get("model_version") == version
        if ours and variant != "shadow":
            judged.append(event)
            continue
        if digest is None and event.get("model_name") is None and event.get("model_version") is None:
            others[NO_MODEL_NAMED] += 1  # e.g. `{}`: no model's event, not some other version's
            continue
        label = f"{variant} {event.get('model_version', '(no model version)')}"
        if digest is not None and event.get("model_version") == version and digest != bundle.digest:
            label += f" (bundle {str(digest)[:12]})"  # the same version, installed from another bundle
        others[label] += 1
    return judged, dict(others)


def since_time(text: str) -> dt.datetime:
    """--since as an aware time; one given without an offset is taken as UTC, as the app stamps events."""
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 time such as 2017-08-16T10:00:00+02:00 "
                                         f"(taken as UTC without an offset), got {text!r}") from None


def write_report(report: Mapping[str, Any], output_dir: Path | str) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    json_path, html_path = output_dir / REPORT_JSON, output_dir / REPORT_HTML
    write_json_atomic(json_path, report)
    write_text_atomic(html_path, render_report(report))
    return json_path, html_path


DRIFT_TAG = "shelfcast.drift"


def alarmable(report: Mapping[str, Any]) -> dict[str, dict]:
    """The record of every feature that can raise the alarm, by name ('category <field>' for a categorical input):
    calendar and unweighted features are shown, not alarmed."""
    records = {name: record for name, record in report.get("features", {}).items()
               if record.get("role") not in (ROLE_CALENDAR, ROLE_UNWEIGHTED)}
    records.update({f"category {name}": record for name, record in report.get("categorical", {}).items()})
    return records


def _alarmable(report: Mapping[str, Any]) -> dict[str, float]:
    """PSI of every feature that can raise the alarm."""
    return {name: record["psi"] for name, record in alarmable(report).items()}


def drift_summary_event(report: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers the Kibana drift panels plot (the full report stays in drift.json).

    A report with no verdict (fewer than drift.min_events distinct requests) sends its status and counts, not its
    PSIs and shares: those of a handful of events are noise the report shows as "not judged", while the panels plot
    each as a point, with no verdict beside it (5 events gave a largest feature PSI of 7.2 and a forecast PSI of 5.4,
    30 to 50 times the alarms', on a night's hourly run)."""
    drifted = sum(r["drifted"] for r in report["features"].values()) + \
        sum(r["drifted"] for r in report["categorical"].values())
    summary: dict[str, Any] = {"status": report["status"], "alarm": report["alarm"], "events": report["events"],
                               "drifted_features": drifted}
    if report["status"] != "insufficient_data":
        psi = _alarmable(report)
        worst = max(psi, key=psi.get) if psi else None
        summary.update({"max_feature_psi": psi[worst] if worst else 0.0, "max_feature_psi_name": worst or "",
                        "unseen_share": report["unseen"].get("any", 0.0),
                        "new_series_share": (report.get("new_series") or {}).get("share", 0.0)})
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
    unweighted = len(report.get("unweighted", {}).get("features", []))
    shown += f"; {unweighted} feature(s) the model gives no weight shown, not alarmed" if unweighted else ""
    # the inputs that can alarm, and the forecasts: a calendar feature is counted once, among those shown, even
    # where no events make it inconclusive too (an empty log's line said 12 shown and 44 inconclusive of 44 records)
    rows = (*alarmable(report).values(), *filter(None, [report.get("prediction")]))
    unsure = sum(r.get("verdict") == "inconclusive" for r in rows)
    shown += f"; {unsure} inconclusive (too few events to tell)" if unsure else ""
    set_aside = report.get("set_aside") or {}
    if set_aside.get("events"):
        counts = ", ".join(f"{label}: {n}" for label, n in sorted(set_aside["by_model"].items()))
        shown += f"; {set_aside['events']} event(s) of other models set aside ({counts})"
    if set_aside.get("not_predictions"):
        counts = ", ".join(f"{sender}: {n}" for sender, n in sorted(set_aside["not_predictions"].items()))
        shown += f"; {sum(set_aside['not_predictions'].values())} record(s) that are not prediction events " \
                 f"skipped ({counts})"
    live = report.get("live") or {}
    if live and not live.get("rows") and live.get("note"):  # --actuals given, and no forecast could be scored
        shown += f"; live accuracy not judged: {live['note']}"
    if (report.get("reference") or {}).get("forecast_note"):
        shown += f"; {report['reference']['forecast_note']}"
    if report["status"] == "insufficient_data":
        events, requests = report["events"], report.get("distinct_requests", report["events"])
        verdict = (f"no verdict: {events} event{' is' if events == 1 else 's are'} too few" if requests >= events else
                   f"no verdict: {events} events, but {requests} distinct request(s) are too few")
        if report.get("possible_requests"):
            verdict += (f" (this bundle can be asked at most {report['possible_requests']:,} distinct requests: lower "
                        "drift.min_events)")
    elif report["alarm"]:
        also = [what for what, hit in (
            ("the forecasts shifted", (report.get("prediction") or {}).get("drifted")),
            ("live accuracy over its bound", (report.get("live") or {}).get("over_bound")),
            ("unseen categories", report.get("unseen_over_bound")),
            ("requests for a store×item without history", (report.get("new_series") or {}).get("over_bound"))) if hit]
        verdict = (f"ALARM: {len(report['reasons'])} reason(s) over {report['events']} events, "
                   f"{dense} feature(s) and {categorical} categorical input(s) drifted"
                   + "".join(f", {what}" for what in also))
    else:
        verdict = f"ok: {report['events']} events, no feature drifted"
    return f"drift: {verdict}{shown}; report {html_path}"


def run(bundle: Path, events_path: Path | None, elasticsearch: str | None, index: str, since: dt.datetime | None,
        actuals_path: Path | None, params_path: Path, output_dir: Path) -> dict[str, Any]:
    params = load_drift_params(params_path)
    judged_bundle = read_bundle_statistics(bundle)
    not_predictions: dict[str, int] = {}
    if elasticsearch:
        source = ElasticsearchEvents.from_environment(elasticsearch, index)
        logged = source.prediction_events(params.max_events, None if since is None else since.isoformat())
        events, not_predictions = logged.events, logged.not_predictions
        # the report is served: the events named by their index, not by the cluster's address (nor a login its URL
        # holds), as a log is named without the host's folders (monitoring/public_paths.py)
        described = f"Elasticsearch index {index}"
    else:
        events_path = events_path or prediction_log()
        logged = read_jsonl_events(events_path, params.max_events, since)
        events, not_predictions = logged.events, logged.not_predictions
        # the report is served (/monitoring/drift-report, public behind the proxy): the log named relative to the
        # app's root, or by its folder's and its own name, never the host's absolute path (monitoring/public_paths.py)
        described = PublicPaths([Path(events_path).parent]).path(events_path)
    events, other_models = answered_by(judged_bundle, events)
    set_aside = {"events": sum(other_models.values()), "by_model": other_models, "reason": SET_ASIDE_REASON,
                 "not_predictions": not_predictions}
    actuals = read_actuals(actuals_path) if actuals_path else None
    report = analyse(events, judged_bundle.metadata, judged_bundle.stats, params, actuals, source=described,
                     set_aside=set_aside)
    report["model"]["digest"] = judged_bundle.digest
    write_report(report, output_dir)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Ctrl-C and SIGTERM end it as they end a stage: the one line and 130 / 143 (run_interruptible), not a
    KeyboardInterrupt traceback and -2; its exit statuses 0 (ok), 1 (alarm) and 2 (error) are the report's alone."""
    return run_interruptible("drift", lambda: _drift(argv))


def _drift(argv: Sequence[str] | None) -> int:
    output_any_terminal_can_take()
    parser = CommandParser(prog="python -m monitoring.drift", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle (default: %(default)s)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--events", type=Path, help="JSON-lines log or directory of them (default: "
                        f"${ENV_PREDICTION_LOG}, else {DEFAULT_PREDICTION_LOG})")
    source.add_argument("--elasticsearch", metavar="URL", default=os.environ.get("ELASTICSEARCH_URL") or None,
                        help="read events from Elasticsearch/OpenSearch (default: $ELASTICSEARCH_URL if set)")
    parser.add_argument("--index", default=DEFAULT_INDEX_PATTERN, help="index pattern (default: %(default)s)")
    parser.add_argument("--since", type=since_time,
                        help="only events at or after this ISO-8601 time (UTC when it has no offset)")
    parser.add_argument("--actuals", type=Path, help="CSV of store_nbr,item_nbr,date,unit_sales for live NWRMSLE")
    parser.add_argument("--params", type=Path, default=None,
                        help="thresholds, its drift: section (default: ./params.yaml where present, else the built-in "
                             "thresholds)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where drift.json/html go")
    parser.add_argument("--emit", action="store_true",
                        help=f"also send a {DRIFT_TAG} summary event (Fluentd if FLUENTD_HOST is set, else logs/)")
    args = parser.parse_args(argv)
    if args.events is not None:
        args.elasticsearch = None
    if args.params is not None and not args.params.is_file():  # a misspelt path silently judged by the built-ins
        print(f"drift: error: --params {args.params}: no such file (leave --params out for ./params.yaml, or the "
              "built-in thresholds where there is none)", file=sys.stderr)
        return EXIT_ERROR
    args.params = args.params or Path("params.yaml")
    try:
        return report_and_verdict(args)
    except (BundleError, EventSourceError, EventShapeError, ActualsError, DriftParamsError) as exc:
        print(f"drift: error: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 a bug is still an error (2), never the alarm (1) cron acts on
        if interruption_behind(exc) is not None:
            raise  # a Ctrl-C another error carries (an import's RuntimeError): run_interruptible's line
        if stdout_closed(exc):  # stdout closed early (`| head`): the one line and 141, as every command
            return stopped_writing("drift")
        traceback.print_exc()
        print(f"drift: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_ERROR


def report_and_verdict(args: argparse.Namespace) -> int:
    report = run(args.bundle, args.events, args.elasticsearch, args.index, args.since, args.actuals,
                 args.params, args.output_dir)
    for reason in report["reasons"]:
        print(f"drift: {reason}")
    print(summary_line(report, args.output_dir / REPORT_HTML))
    verdict = EXIT_ALARM if report["alarm"] else EXIT_OK
    if args.emit:  # after the verdict is shown: a summary that cannot be sent must not hide an alarm
        from monitoring.monitoring_events import emit_monitoring_event

        try:
            print(f"drift: {DRIFT_TAG} summary sent to {emit_monitoring_event(DRIFT_TAG, drift_summary_event(report))}")
        except (OSError, ValueError) as exc:  # ValueError: a malformed FLUENTD_HOST/PORT/TIMEOUT, named
            print(f"drift: error: the {DRIFT_TAG} summary could not be sent or logged: {exc}", file=sys.stderr)
            return EXIT_ALARM if report["alarm"] else EXIT_ERROR  # the alarm is what cron must act on
    return verdict


if __name__ == "__main__":
    sys.exit(main())
