"""Shelfcast web app: serves the production model bundle (a form for people, a JSON API for programs).

``create_app()`` builds one app per process: gunicorn calls it in each worker after the
fork (app/wsgi.py), so every worker has its own model reference and prediction-event sink.
Flask's debug mode is forced off here; only ``python -m app --dev`` turns it on.

Importing this package loads no more than Flask and app/config.py: gunicorn's master imports it for the worker
class (app/gunicorn_worker.py), and what the master has imported its workers inherit as it was, code and all. The
app's own modules (the model, NumPy, Numba, the event sink) are imported by ``create_app``, in each worker after
the fork, so a SIGHUP's new workers run the code now on disk, and a worker pinned to a core sizes its BLAS and Numba
pools for it (app/gunicorn_conf.py).
"""

from __future__ import annotations

import logging
import os
import random
import re
import time

from typing import TYPE_CHECKING

from flask import Flask, g, request
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

from app.config import AppSettings

if TYPE_CHECKING:
    from app.events import PredictionEventSink
    from app.predictor import Predictor

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # an X-Request-ID like this is echoed, any other replaced
# Sent with every response unless a route set its own (a report page may need other sources).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'self'; form-action 'self'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
# Sent with every response that sets no Cache-Control of its own (static files and Swagger UI's set theirs): a page or
# an answer holding data (a forecast with 56 days of a product's sales, /monitoring, /readyz) is never stored by a
# shared cache (a CDN, a corporate proxy: Varnish keeps an answer without one 120 s), and a browser asks again before
# reusing its copy, so a reload shows the model serving now; Back still shows the page it left (no-store would
# forecast, and log, it again).
CACHE_CONTROL = "private, no-cache"
log = logging.getLogger(__name__)


def serving_model_identity(model) -> dict | None:
    """What monitoring compares a drift report's model with (``monitoring.web.SERVING_MODEL``)."""
    return None if model is None else {"name": model.name, "version": model.version, "digest": model.bundle.digest}


def create_app(settings: AppSettings | None = None, sink: PredictionEventSink | None = None,
               predictor: Predictor | None = None) -> Flask:
    """The app, with the model loaded now if one is there (else /readyz answers 503 until it appears)."""
    from app.errors import register_error_handlers
    from app.events import PredictionEventSink
    from app.metrics import REQUEST_DURATION, count_event, labelled, metrics_blueprint, refusal_counter
    from app.model_store import ProductionWithFallback
    from app.predictor import Predictor
    from app.request_buffer import (ARRIVED, BODY_MALFORMED, BODY_TIMED_OUT, BODY_TOO_LARGE, TRANSFER_CODINGS,
                                    BufferedRequests, malformed_body)
    from app.routes_api import api
    from app.routes_docs import docs
    from app.routes_health import health
    from app.routes_web import web
    from app.state import EXTENSION_KEY, ServingState
    from app.validation import check_body_encoding
    from app.variants import Variants
    from monitoring.web import SERVING_MODEL, monitoring_blueprint
    from pipeline.release_store import PRODUCTION, ReleaseStore

    settings = settings or AppSettings.from_environment()
    app = Flask(__name__)
    app.config.update(DEBUG=False, TESTING=False, PROPAGATE_EXCEPTIONS=False,
                      MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.debug = False  # FLASK_DEBUG in the environment must not turn the debugger on in production

    variants = None
    if predictor is None:  # production, its last good releases, and the canary/shadow beside it (models/)
        models_dir = settings.model_dir.parent
        predictor = ProductionWithFallback(Predictor(settings.model_dir, settings.reload_interval_s,
                                                     series_cache_entries=settings.series_cache_entries,
                                                     count_refusal=refusal_counter(PRODUCTION)),
                                           ReleaseStore(models_dir))
        variants = Variants(models_dir, settings.reload_interval_s, series_cache_entries=settings.series_cache_entries,
                            count_refusal=refusal_counter)
        variants.check_now()
    predictor.check_now()
    if predictor.model is None:
        log.warning("no model served yet: %s", predictor.last_error or f"nothing at {settings.model_dir}")
    sink = sink or PredictionEventSink.from_environment(count=count_event)
    state = app.extensions[EXTENSION_KEY] = ServingState(settings=settings, predictor=predictor, sink=sink,
                                                         variants=variants)
    state.note_served()

    # Request ids from a generator seeded once per process (create_app runs after gunicorn's fork):
    # as unique as uuid4, without an os.urandom system call on every request.
    ids = random.Random(os.urandom(32))

    @app.before_request
    def start_request():
        g.started = request.environ.get(ARRIVED) or time.perf_counter()  # read whole, before its turn's wait
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if REQUEST_ID.fullmatch(given) else f"{ids.getrandbits(128):032x}"
        if request.environ.get(BODY_TOO_LARGE):
            raise RequestEntityTooLarge()
        if request.environ.get(BODY_TIMED_OUT):
            raise RequestTimeout(f"the request body did not arrive within {settings.body_timeout_s} s")
        if BODY_MALFORMED in request.environ:  # before routing, as the two above: the message itself is bad
            raise malformed_body(request.environ[BODY_MALFORMED])
        transfer = request.environ.get(TRANSFER_CODINGS, "")
        if request.content_length or transfer:  # a sized or a chunked body
            check_body_encoding(request.headers.get("Content-Encoding", ""), request.mimetype_params.get("charset"),
                                transfer)
        if request.method == "OPTIONS" and request.environ.get("PATH_INFO") == "*":
            return server_options()
        return None

    server_methods = None

    def server_options():
        """``OPTIONS *`` (RFC 9110 §9.3.7, asking about the server, not a resource): 200 with the methods some
        path here takes. Werkzeug reads the target ``*`` as the path ``/*``, and it had answered the HTML 404
        "no such path /*"."""
        nonlocal server_methods
        if server_methods is None:
            server_methods = ", ".join(sorted({m for rule in app.url_map.iter_rules() for m in rule.methods or ()}))
        return app.response_class(status=200, headers={"Allow": server_methods, "Content-Length": "0"})

    @app.after_request
    def tag_response(response):
        headers = response.headers
        headers["X-Request-ID"] = getattr(g, "request_id", "")
        for name, value in SECURITY_HEADERS.items():
            if name not in headers:
                headers.add(name, value)  # as setdefault, without set()'s second scan of the headers
        if "Cache-Control" not in headers:
            headers["Cache-Control"] = CACHE_CONTROL
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        labelled(REQUEST_DURATION, rule).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        state.note_served(g.get("candidates"))  # what a forecast looked up: no second stat of the candidates
        return response

    register_error_handlers(app, settings.max_body_bytes)
    app.register_blueprint(web)
    app.register_blueprint(api)
    app.register_blueprint(health)
    app.register_blueprint(metrics_blueprint)  # /metrics: Prometheus text format
    app.register_blueprint(docs)  # /docs: Swagger UI on the OpenAPI document
    app.register_blueprint(monitoring_blueprint)  # /monitoring: drift report + recent predictions
    app.extensions[SERVING_MODEL] = lambda: serving_model_identity(predictor.model)  # /monitoring: a report on
    # another model than the one serving says so
    # The body is read in full (size and time limits) before Flask runs; see app/request_buffer.py.
    # Its health probes' paths (as routes_health.py declares them) take no turn behind the forecasts.
    probes = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith(f"{health.name}.")}
    app.wsgi_app = BufferedRequests(app.wsgi_app, settings.max_body_bytes, settings.body_timeout_s, probes)
    return app
