"""Shelfcast web app: serves the production model bundle (a form for people, a JSON API for programs).

``create_app()`` builds one app per process: gunicorn calls it in each worker after the
fork (app/wsgi.py), so every worker has its own model reference and prediction-event sink.
Flask's debug mode is forced off here; only ``python -m app --dev`` turns it on.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time

from flask import Flask, g, request

from app.config import AppSettings
from app.events import PredictionEventSink
from app.predictor import Predictor
from app.state import EXTENSION_KEY, ServingState

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
log = logging.getLogger(__name__)


def create_app(settings: AppSettings | None = None, sink: PredictionEventSink | None = None,
               predictor: Predictor | None = None) -> Flask:
    """The app, with the model loaded now if one is there (else /readyz answers 503 until it appears)."""
    from app.errors import register_error_handlers
    from app.routes_api import api
    from app.routes_docs import docs
    from app.routes_health import health
    from app.routes_web import web
    from monitoring.web import monitoring_blueprint

    settings = settings or AppSettings.from_environment()
    app = Flask(__name__)
    app.config.update(DEBUG=False, TESTING=False, PROPAGATE_EXCEPTIONS=False,
                      MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.debug = False  # FLASK_DEBUG in the environment must not turn the debugger on in production

    predictor = predictor or Predictor(settings.model_dir, settings.reload_interval_s)
    predictor.check_now()
    if predictor.model is None:
        log.warning("no model served yet: %s", predictor.last_error or f"nothing at {settings.model_dir}")
    sink = sink or PredictionEventSink.from_environment()
    app.extensions[EXTENSION_KEY] = ServingState(settings=settings, predictor=predictor, sink=sink)

    # Request ids from a generator seeded once per process (create_app runs after gunicorn's fork):
    # as unique as uuid4, without an os.urandom system call on every request.
    ids = random.Random(os.urandom(32))

    @app.before_request
    def start_request() -> None:
        g.started = time.perf_counter()
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if REQUEST_ID.fullmatch(given) else f"{ids.getrandbits(128):032x}"

    @app.after_request
    def tag_response(response):
        response.headers["X-Request-ID"] = getattr(g, "request_id", "")
        return response

    register_error_handlers(app, settings.max_body_bytes)
    app.register_blueprint(web)
    app.register_blueprint(api)
    app.register_blueprint(health)
    app.register_blueprint(docs)  # /docs: Swagger UI on the OpenAPI document
    app.register_blueprint(monitoring_blueprint)  # /monitoring: drift report + recent predictions
    return app
