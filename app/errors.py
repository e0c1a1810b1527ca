"""Every error as a clear answer, never a traceback: JSON for programs, a short page for people."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.validation import FieldError, InputError

log = logging.getLogger(__name__)

JSON_PREFIXES = ("/api/", "/healthz", "/readyz")


def wants_json() -> bool:
    return request.path.startswith(JSON_PREFIXES)


def error_response(status: int, code: str, message: str, errors: list[FieldError] | None = None):
    body = {"code": code, "message": message, "errors": [e.to_json() for e in errors or []],
            "request_id": getattr(g, "request_id", None) or ""}
    response = jsonify(body)
    response.status_code = status
    return response


def register_error_handlers(app: Flask, max_body_bytes: int) -> None:
    @app.errorhandler(InputError)
    def input_error(exc: InputError):
        return error_response(exc.status, exc.code, exc.message, exc.errors)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
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
        log.exception("request %s %s failed (request id %s)",
                      request.method, request.path, getattr(g, "request_id", "?"))
        message = "internal error; it has been logged with this request id"
        if wants_json():
            return error_response(500, "internal_error", message)
        return render_template("error.html", status=500, message=message), 500
