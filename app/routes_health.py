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
    """Ready: a model is loaded; 503 until then, so no traffic is sent to a worker that cannot predict.

    While a model serves, the last refusal of the bundle at the model path (what and when: a corrupt or
    unreadable new bundle, the older model still serving) and the release served in production's place, if
    any, are reported too, so an operator sees why a promotion did not take; both go once a good bundle loads."""
    predictor = serving_state().predictor
    model = predictor.model
    if model is None:
        reason = predictor.last_error or f"no model bundle loaded yet from {predictor.path}"
        return jsonify({"status": "unavailable", "reason": reason}), 503
    ready = {"status": "ready", "model": {"name": model.name, "version": model.version}}
    fallback = predictor.fallback_path
    if fallback is not None:
        ready["fallback"] = {"serving": str(fallback), "instead_of": str(predictor.path)}
    if predictor.last_error:
        ready["refused"] = {"bundle": str(predictor.path), "reason": predictor.last_error,
                            "at": predictor.last_error_at}
    return jsonify(ready)
