"""Every error as a clear answer, never a traceback: JSON for programs, a short page for people."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.validation import FieldError, InputError

log = logging.getLogger(__name__)

JSON_PREFIXES = ("/api/", "/healthz", "/readyz")
MAX_ERRORS_SHOWN = 50  # errors[] lists the first ones; `errors_omitted` counts the rest


class FormTooLarge(RequestEntityTooLarge):
    """413 from Werkzeug's form limits (parts, a field's size), within the body size limit: says which."""


def wants_json() -> bool:
    return request.path.startswith(JSON_PREFIXES)


def error_response(status: int, code: str, message: str, errors: list[FieldError] | None = None):
    """The one error body of the JSON routes; at most MAX_ERRORS_SHOWN errors, so its size is bounded."""
    errors = errors or []
    body = {"code": code, "message": message, "errors": [e.to_json() for e in errors[:MAX_ERRORS_SHOWN]],
            "request_id": getattr(g, "request_id", None) or ""}
    if len(errors) > MAX_ERRORS_SHOWN:
        body["errors_omitted"] = len(errors) - MAX_ERRORS_SHOWN
    response = jsonify(body)
    response.status_code = status
    return response


def register_error_handlers(app: Flask, max_body_bytes: int) -> None:
    @app.errorhandler(InputError)
    def input_error(exc: InputError):
        if wants_json():
            return error_response(exc.status, exc.code, exc.message, exc.errors)
        details = "; ".join(f"{e.field}: {e.message}" for e in exc.errors[:MAX_ERRORS_SHOWN])
        return render_template("error.html", status=exc.status, message=f"{exc.message} ({details})"), exc.status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        if isinstance(exc, FormTooLarge):
            message = exc.description
        else:
            message = f"the request body is larger than {max_body_bytes} bytes"
        if wants_json():
            return error_response(413, "body_too_large", message, [FieldError("body", message)])
        return render_template("error.html", status=413, message=message), 413

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        if wants_json():
            response = error_response(status, code, exc.description or exc.name)
        else:
            response = render_template("error.html", status=status, message=exc.description or exc.name), status
            response = app.make_response(response)
        if status == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("request %r %r failed (request id %s)",  # %r: a path may hold a newline
                      request.method, request.path, getattr(g, "request_id", "?"))
        message = "internal error; it has been logged with this request id"
        if wants_json():
            return error_response(500, "internal_error", message)
        return render_template("error.html", status=500, message=message), 500
