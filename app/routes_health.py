"""Liveness and readiness probes (for gunicorn supervisors, Docker and Kubernetes)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from app.state import serving_state

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():
    """Alive: the process answers, whether or not a model is loaded."""
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz():
    """Ready: a model is loaded; 503 until then, so no traffic is sent to a worker that cannot predict."""
    predictor = serving_state().predictor
    model = predictor.model
    if model is None:
        reason = predictor.last_error or f"no model bundle loaded yet from {predictor.path}"
        return jsonify({"status": "unavailable", "reason": reason}), 503
    return jsonify({"status": "ready", "model": {"name": model.name, "version": model.version}})
