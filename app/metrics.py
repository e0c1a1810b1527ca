"""GET /metrics: the app's Prometheus metrics (prometheus_client), summed over gunicorn's workers.

Each gunicorn worker is its own process with its own counters. app/gunicorn_conf.py points
PROMETHEUS_MULTIPROC_DIR at an emptied directory before the workers start, so every
metric here is kept in a memory-mapped file per process and /metrics, whichever worker
answers it, reads them all (prometheus_client's multiprocess mode; gunicorn_conf also
folds a dead worker's counts into one file, retired.json: app/metrics_files.py). Without that
variable (`python -m app`, tests) the process-local registry is served.

Metrics: shelfcast_predictions_total{source}, shelfcast_request_duration_seconds{endpoint} (histogram),
shelfcast_model_refusals_total{variant} (bundles refused at a load: a failed hot reload),
shelfcast_prediction_events_total{outcome} (emitted, rejected, spooled, sent, dropped, not_events, send_failures:
app/events.py COUNTS; see README "Prediction logging"), shelfcast_refused_requests_total{reason} (answered by the
gunicorn worker itself, not the app: REFUSAL_REASONS), shelfcast_model_info{variant,version,kind} (1 for each model a
live worker serves: production, and the canary and shadow when installed; no series for a model no longer served: each
worker's set is a file in the multiprocess folder, app/metrics_files.py).
"""

from __future__ import annotations

import os
import threading

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from app import metrics_files
from pipeline.release_store import CANARY, PRODUCTION, SHADOW

ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

PREDICTIONS = Counter("shelfcast_predictions", "Forecasts served, one per instance (a shadow's are not served)",
                      ["source"])
CLOSED_DAY_ANSWERS = Counter(
    "shelfcast_closed_day_answers", "Of the forecasts served, those answered 0 units for a day the store is closed "
    "(store_closed: pipeline/closed_days.py, not the model)", ["source"])
REQUEST_DURATION = Histogram(
    "shelfcast_request_duration_seconds", "Time from the request's arrival (read whole) to its response, its "
    "wait for the worker's turn included, by route",
    ["endpoint"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
EVENTS = Counter("shelfcast_prediction_events", "Prediction events by outcome (emitted, spooled, sent, dropped, ...)",
                 ["outcome"])
UNFORECASTABLE = Counter(
    "shelfcast_unforecastable_instances", "Instances the API refused (422) because the served model cannot forecast "
    "them, by field: store_nbr and item_nbr a store or item it has no sales history for, date a day outside its "
    "horizon. "
    "They are not predictions, so no event and no drift report shows them: new items show here first",
    ["field"])
# Why the server answered a request itself, not its app (app/gunicorn_worker.py ThreadWorker.handle and handle_error),
# with the status it sent (None: the connection closed without an answer); each series is there from a worker's start,
# at 0 (ThreadWorker.init_process).
REFUSAL_REASONS: dict[str, int | None] = {
    "header_timeout": 408,  # its headers not in within SHELFCAST_HEADER_TIMEOUT_S
    "headers_too_large": 431,  # over SHELFCAST_MAX_HEADER_BYTES, or gunicorn's limit_request_fields / _field_size
    "request_line_too_long": 400,  # over gunicorn's limit_request_line
    "bad_request": 400,  # malformed: request line, method, version, a header field
    "expectation_failed": 417,  # an Expect other than 100-continue
    "unsupported_transfer_coding": 501,  # a Transfer-Encoding gunicorn does not implement
    "forbidden": 403,  # a PROXY line from a peer outside gunicorn's proxy_allow_ips
    "server_error": 500,  # an exception outside the app's own error handling (its traceback is in the log)
    # A port given --certfile speaks TLS: no answer can be sent before its handshake completes, nor once TLS failed.
    "tls_handshake_timeout": None,  # no handshake within SHELFCAST_HEADER_TIMEOUT_S: closed, nothing sent
    "tls_error": None,  # a handshake refused (no common version or cipher, not TLS) or a bad record: closed
    "plain_http_to_tls_port": 400,  # plain HTTP on the TLS port: answered in plain text, which the client reads
    "tls_to_plain_port": 400,  # a TLS handshake on a plain-HTTP port: answered at once (the client sees bad TLS)
}
REFUSED = Counter(
    "shelfcast_refused_requests", "Requests the server answered itself, not its app, by reason: "
    "header_timeout (408), headers_too_large (431), request_line_too_long, bad_request (400), expectation_failed "
    "(417), unsupported_transfer_coding (501), forbidden (403), server_error (500), tls_handshake_timeout and "
    "tls_error (closed, no answer), plain_http_to_tls_port, tls_to_plain_port (400)", ["reason"])
MODEL_REFUSALS = Counter(
    "shelfcast_model_refusals", "Model bundles a worker refused to load, by release variant (production, canary, "
    "shadow): corrupt, unreadable or implausible; each worker counts each installed bundle it refused once, and the "
    "model it served before keeps serving (GET /readyz says why production's was refused)", ["variant"])
MODEL_INFO = "shelfcast_model_info"
MODEL_INFO_HELP = ("1 for each model a live worker serves: its release variant (production, canary, shadow), version "
                   "and kind")
MODEL_LABELS = ("variant", "version", "kind")

metrics_blueprint = Blueprint("metrics", __name__)
_children: dict = {}  # (metric, label value) -> its child: labels() takes a lock and builds a key every call


def labelled(metric, value: str):
    """`metric.labels(value)`, looked up once per label value (metrics here have one label and are never cleared)."""
    child = _children.get((metric, value))
    if child is None:
        try:
            child = metric.labels(value)  # its process's file for the kind made with its first series
        except FileNotFoundError:  # the folder removed while serving: made again, or the error as it is
            directory = os.environ.get(ENV_MULTIPROC_DIR)
            if not directory or not metrics_files.restore(directory):
                raise
            child = metric.labels(value)
        _children[(metric, value)] = child
    return child
_served: dict = {"labels": frozenset()}
_served_lock = threading.Lock()


def refusal_counter(variant: str):
    """The callback a variant's Predictor counts its refusals with; the series shows from a worker's start, at 0."""
    return labelled(MODEL_REFUSALS, variant).inc


def count_event(outcome: str, count: int) -> None:
    """The event sink's counts (app/events.py SinkStats), as Prometheus counters."""
    labelled(EVENTS, outcome).inc(count)


def observe_models(production, candidates=(None, None)) -> None:
    """Mark the models this process serves now, by release variant (cheap when unchanged: after every request).
    ``candidates`` is app.variants.Candidates: the installed canary and shadow, or None for either."""
    served = {PRODUCTION: production}
    served[CANARY], served[SHADOW] = candidates
    labels = frozenset((variant, m.version, m.kind) for variant, m in served.items() if m is not None)
    if labels == _served["labels"]:
        return
    with _served_lock:
        _served["labels"] = labels
        directory = os.environ.get(ENV_MULTIPROC_DIR)
        if directory:  # where /metrics, answered by any worker, finds what each live worker serves
            metrics_files.write_served(directory, os.getpid(), sorted(labels))


def model_info(served) -> GaugeMetricFamily:
    """shelfcast_model_info: one series, at 1, per (variant, version, kind) served; none for a model no longer
    served (a prometheus_client Gauge cannot drop a label set in multiprocess mode: each one ever served stayed)."""
    family = GaugeMetricFamily(MODEL_INFO, MODEL_INFO_HELP, labels=MODEL_LABELS)
    for labels in sorted(served):
        family.add_metric(labels, 1)
    return family


class ServedModels:
    """A collector of shelfcast_model_info: this process's models, or with ``directory`` every live worker's."""

    def __init__(self, directory: str | None = None):
        self.directory = directory

    def collect(self):
        yield model_info(_served["labels"] if self.directory is None else metrics_files.read_served(self.directory))


REGISTRY.register(ServedModels())


def exposition() -> bytes:
    if os.environ.get(ENV_MULTIPROC_DIR):
        directory = os.environ[ENV_MULTIPROC_DIR]
        return metrics_files.exposition(directory, ServedModels(directory))
    return generate_latest(REGISTRY)


@metrics_blueprint.get("/metrics")
def metrics() -> Response:
    from flask import current_app

    from app.state import EXTENSION_KEY  # app.state imports, through the variants, this module

    state = current_app.extensions.get(EXTENSION_KEY)
    if state is not None:  # what it serves now: noted after each response, so a reload since showed a scrape late
        state.note_served()
    try:
        return Response(exposition(), mimetype=None, content_type=CONTENT_TYPE_LATEST)
    except metrics_files.DirectoryGone as gone:  # a 500 and a traceback a scrape, before
        return Response(f"{gone}\n", status=503, content_type="text/plain; charset=utf-8")
