"""Every error as a clear answer, never a traceback: JSON for programs, a short page for people."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.validation import FieldError, InputError

log = logging.getLogger(__name__)

JSON_PREFIXES = ("/api/", "/healthz", "/readyz")
MAX_ERRORS_SHOWN = 50  # errors[] lists the first ones; `errors_omitted` counts the rest

# Every `code` a JSON error answer carries, with what it means: the OpenAPI document lists exactly these (its Error
# schema's enum, app/openapi.py). An HTTP error of Werkzeug's is named by http_error_code.
ERROR_CODES = {
    "invalid_request": "the body or a field is malformed (400)",
    "bad_request": "the body could not be read: a malformed chunked body, or one shorter than its Content-Length "
                   "(400)",
    "not_found": "no such path (404)",
    "method_not_allowed": "the path does not take this method; the Allow header lists the ones it takes (405)",
    "request_timeout": "the body did not arrive within the server's body time limit (408)",
    "body_too_large": "the body is larger than the server's body size limit (413)",
    "unsupported_media_type": "not application/json, compressed (Content-Encoding, or a transfer coding but "
                              "chunked), or a charset other than utf-8 (415)",
    "not_forecastable": "a store/item the model was not trained on, or a date outside its horizon (422)",
    "internal_error": "a fault of the server, logged with the answer's request_id (500)",
    "model_unavailable": "no model is loaded yet; see GET /readyz (503)",
}


def http_error_code(exc: HTTPException) -> str:
    """The code of an HTTP error of Werkzeug's (404 "Not Found" -> not_found)."""
    return (exc.name or "error").lower().replace(" ", "_")


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
        code = http_error_code(exc)
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
