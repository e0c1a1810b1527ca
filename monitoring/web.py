"""The app's monitoring page: the latest drift report and recent prediction statistics.

The embedded default for people without Kibana. Register it in the app factory:

    from monitoring.web import monitoring_blueprint
    app.register_blueprint(monitoring_blueprint)

Routes: GET /monitoring (HTML), GET /monitoring/drift-report (the full HTML report
`python -m monitoring.drift` wrote), GET /api/v1/monitoring (the same data as JSON).
Where to read: SHELFCAST_PREDICTION_LOG (default logs/predictions.jsonl) and
SHELFCAST_DRIFT_DIR (default logs/drift). The prediction statistics are at most
monitoring.recent_predictions.STATISTICS_TTL_S old (`StatisticsCache`); the drift report is read on every call.
A host app that names the model it serves (``SERVING_MODEL``) gets a warning when the report judged another one.
The answers name files as monitoring/public_paths.py says (relative to the app's root, never the host's absolute
path): the log, an unreadable report's or log's reasons, and the paths inside the served drift report.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, jsonify, render_template
from markupsafe import Markup

from monitoring.drift import DEFAULT_OUTPUT_DIR, REPORT_HTML, REPORT_JSON, alarmable
from monitoring.public_paths import PublicPaths, public_paths as named_by
from monitoring.recent_predictions import StatisticsCache
from pipeline.event_sources import prediction_log

ENV_DRIFT_DIR = "SHELFCAST_DRIFT_DIR"
# Where a host app puts a callable naming the model it serves ({"name", "version", "digest"}, or None), so the
# page can say when the drift report judged another one; without it, nothing is compared.
SERVING_MODEL = "monitoring.serving_model"

monitoring_blueprint = Blueprint("monitoring", __name__, template_folder="templates")
RECENT_STATISTICS = StatisticsCache()  # per process: the routes are unauthenticated, the log's read is not cheap


@monitoring_blueprint.app_template_filter("readable_time")
def readable_time(value: object) -> Markup | str:
    """An ISO timestamp as ``<time>``: "1 Dec 2026, 11:31 UTC", shown in local time by app/static/local_time.js."""
    if not value:
        return "–"
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    utc = when.astimezone(dt.timezone.utc)
    return Markup('<time datetime="{}">{}</time>').format(utc.isoformat(), f"{utc.day} {utc:%b %Y, %H:%M} UTC")


def _drift_dir() -> Path:
    return Path(os.environ.get(ENV_DRIFT_DIR, "").strip() or DEFAULT_OUTPUT_DIR)


def public_paths() -> PublicPaths:
    """How these answers name the files they read: the log, its folder and the drift folder are known."""
    log = prediction_log()
    return named_by(log, log.parent, _drift_dir())


def latest_drift_report() -> dict[str, Any] | None:
    """The last drift.json, or None (not run yet); an unreadable one is reported, not raised."""
    path = _drift_dir() / REPORT_JSON
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        return {"status": "unreadable", "reasons": [f"{path}: not valid JSON ({exc})"], "events": 0}
    except RecursionError:  # deeper than Python's parser recurses: before, the pages answered 500
        return {"status": "unreadable", "reasons": [f"{path}: JSON nested too deep to parse"], "events": 0}
    if not isinstance(report, dict):  # a list, a string, null: the page reads fields of an object
        return {"status": "unreadable", "reasons": [f"{path}: not a JSON object (a {type(report).__name__})"],
                "events": 0}
    misshapen = misshapen_field(report)
    if misshapen is not None:
        return {"status": "unreadable", "reasons": [f"{path}: {misshapen}"], "events": 0}
    return report


# The fields of drift.json the pages read, with the type monitoring/drift.py writes (each may be absent or null):
# objects the summary reads fields of, and numbers it formats ('%.3f'). Another tool's file or a hand-edited one with
# a string there made /monitoring answer 500 (TypeError in the template; a "features" list, both pages). A feature's
# PSI is always written (the page sorts by it); a p-value missing or null is shown as "–".
REPORT_OBJECTS = ("model", "unseen", "prediction", "live", "features", "categorical")
REPORT_NUMBERS = (("unseen", "any"), ("prediction", "psi"), ("live", "nwrmsle"))
FEATURE_NUMBERS = (("psi", True), ("p_value", False))  # (field, required)


def _is_number(value: object, required: bool = False) -> bool:
    return (value is None and not required) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def misshapen_field(report: dict[str, Any]) -> str | None:
    """The first field the pages read whose type is not the one drift.json has, named by its path, or None."""
    for name in REPORT_OBJECTS:
        if report.get(name) is not None and not isinstance(report[name], dict):
            return f"field {name!r} is not an object (a {type(report[name]).__name__})"
    if report.get("status") is not None and not isinstance(report["status"], str):
        return f"field 'status' is not a string (a {type(report['status']).__name__})"
    if report.get("reasons") is not None and not isinstance(report["reasons"], list):
        return f"field 'reasons' is not a list (a {type(report['reasons']).__name__})"
    for outer, inner in REPORT_NUMBERS:
        value = (report.get(outer) or {}).get(inner)
        if not _is_number(value):
            return f"field '{outer}.{inner}' is not a number (a {type(value).__name__})"
    for group in ("features", "categorical"):
        for name, record in (report.get(group) or {}).items():
            if not isinstance(record, dict):
                return f"field '{group}.{name[:80]}' is not an object (a {type(record).__name__})"
            for field, required in FEATURE_NUMBERS:
                if not _is_number(record.get(field), required):
                    return (f"field '{group}.{name[:80]}.{field}' is not a number "
                            f"(a {type(record.get(field)).__name__})")
    return None


def serving_model() -> dict[str, Any] | None:
    """The model the host app serves now, if it says (``SERVING_MODEL``)."""
    named = current_app.extensions.get(SERVING_MODEL)
    return named() if named is not None else None


def same_model(reported: dict[str, Any], serving: dict[str, Any]) -> bool:
    """By digest when both have one (a retrained bundle may keep its version), else by name and version."""
    if reported.get("digest") and serving.get("digest"):
        return reported["digest"] == serving["digest"]
    return (reported.get("name"), reported.get("version")) == (serving.get("name"), serving.get("version"))


def page_data() -> dict[str, Any]:
    drift = latest_drift_report()
    serving = serving_model()
    paths = public_paths()
    summary = None
    if drift is not None:
        features = alarmable(drift)  # what can alarm: a calendar or unweighted feature's PSI says nothing of the data
        worst = sorted(features.items(), key=lambda item: -item[1].get("psi", 0.0))[:8]
        summary = {"status": drift.get("status"), "alarm": drift.get("alarm", False),
                   "generated_at": drift.get("generated_at"), "events": drift.get("events"),
                   "reasons": [paths.text(str(reason)) for reason in drift.get("reasons") or []],
                   "model": drift.get("model", {}),
                   "of_serving_model": (None if serving is None or not drift.get("model")
                                        else same_model(drift["model"], serving)),  # None: nothing to compare
                   "unseen_share": drift.get("unseen", {}).get("any"),
                   "prediction_psi": (drift.get("prediction") or {}).get("psi"),
                   "live": drift.get("live"),
                   "top_features": [{"name": name, "psi": record.get("psi"), "p_value": record.get("p_value"),
                                     "drifted": record.get("drifted"),
                                     "verdict": record.get("verdict") or ("drift" if record.get("drifted") else "ok")}
                                    for name, record in worst]}
    recent = dict(RECENT_STATISTICS.get(prediction_log()))  # a copy: the cache's own is shared by later calls
    recent["log"] = paths.path(recent["log"])
    if recent.get("error"):
        recent["error"] = paths.text(str(recent["error"]))
    return {"recent": recent, "drift": summary, "serving_model": serving,
            "drift_report_available": (_drift_dir() / REPORT_HTML).is_file()}


@monitoring_blueprint.get("/monitoring")
def monitoring_page():
    # The host app's layout ("base.html": Shelfcast's header and navigation), else a bare one of our own.
    layout = current_app.jinja_env.select_template(["base.html", "monitoring_layout.html"])
    return render_template("monitoring.html", layout=layout, **page_data())


@monitoring_blueprint.get("/monitoring/drift-report")
def drift_report_page():
    path = _drift_dir() / REPORT_HTML
    try:  # read, not sent as the file: the paths in it (the log it read) are named as the other answers name them
        report = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        abort(404, description="no drift report yet: run `python -m monitoring.drift`")
    response = current_app.response_class(public_paths().text(report), mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    # The report is one self-contained file (it is also opened from disk), so its styles are inline:
    # allow those, and nothing else — no scripts, no other sources; base-uri and form-action do not fall back to
    # default-src, so they are named (an injected <base> or <form> would have been allowed).
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'")
    return response


@monitoring_blueprint.get("/api/v1/monitoring")
def monitoring_json():
    return jsonify(page_data())
