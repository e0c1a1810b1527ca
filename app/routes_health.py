"""Liveness and readiness probes (for gunicorn supervisors, Docker and Kubernetes)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from app.state import serving_state
from monitoring.public_paths import public_paths

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():
    """Alive: the process answers, whether or not a model is loaded."""
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz():
    """Ready: a model is loaded; 503 until then, so no traffic is sent to a worker that cannot predict.

    While a model serves, the last refusal of the bundle at the model path (what and when: a corrupt or
    unreadable new bundle, the older model still serving) and the release served in production's place, if
    any, are reported too, so an operator sees why a promotion did not take; both go once a good bundle loads.
    Bundles are named as monitoring/public_paths.py says (``models/production``), never by the host's absolute
    path: the probe is public behind the compose proxy; the server's log names them in full. A model whose bundle was
    removed since it loaded (models/production deleted) still serves from memory, and ``missing`` says so."""
    predictor = serving_state().predictor
    model = predictor.model
    # the model folder and its release store (releases/, the fallbacks) are what a refusal's reason can name
    paths = public_paths(predictor.path, predictor.path.parent)
    if model is None:
        reason = paths.text(predictor.last_error) if predictor.last_error else \
            f"no model bundle loaded yet from {paths.path(predictor.path)}"
        return jsonify({"status": "unavailable", "reason": reason}), 503
    ready = {"status": "ready", "model": {"name": model.name, "version": model.version}}
    fallback = predictor.fallback_path
    if fallback is not None:
        ready["fallback"] = {"serving": paths.path(fallback), "instead_of": paths.path(predictor.path)}
    if fallback is None and predictor.absent_since:  # served from memory: a worker started now would not serve it
        ready["missing"] = {"bundle": paths.path(predictor.path), "since": predictor.absent_since,
                            "reason": "the bundle served was removed after it loaded; a worker started now serves the "
                                      "newest good release, or nothing"}
    if predictor.last_error:
        ready["refused"] = {"bundle": paths.path(predictor.path), "reason": paths.text(predictor.last_error),
                            "at": predictor.last_error_at}
    return jsonify(ready)
