"""Every error as a clear answer, never a traceback: JSON for programs, a short page for people."""

from __future__ import annotations

import logging

from flask import Flask, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from app.validation import FieldError, InputError, shorten

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
    "upstream_unavailable": "from the proxy in front of the app (docker compose's nginx, deploy/nginx.conf): the app "
                            "did not answer, restarting or down (502), or not in time (504); retry later",
}


def http_error_code(exc: HTTPException) -> str:
    """The code of an HTTP error of Werkzeug's (404 "Not Found" -> not_found)."""
    return (exc.name or "error").lower().replace(" ", "_")


class FormTooLarge(RequestEntityTooLarge):
    """413 from Werkzeug's form limits (parts, a field's size), within the body size limit: says which."""


def wants_json() -> bool:
    return request.path.startswith(JSON_PREFIXES)


def routing_errors(exc: HTTPException) -> list[FieldError]:
    """What a 404 or 405 names: the path (and the one it matches without a trailing slash), or the method and the
    ones the path takes. Werkzeug's own text says neither ("check your spelling", for a path spelled right). A 404
    that a route raised with its own description (``abort(404, description=...)``) is left to say that."""
    path = shorten(request.path, 80)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        return [FieldError("method", f"{shorten(request.method)} is not allowed on {path}; it takes "
                                     f"{', '.join(exc.valid_methods)}")]
    if not isinstance(exc, NotFound):
        return []
    if exc.description != NotFound.description:  # a route's own 404 that says why (no drift report yet): it stands
        return []
    bare = request.path.rstrip("/")
    if bare and bare != request.path:
        try:
            current_app.create_url_adapter(request).match(bare, method=request.method)
            matched = True
        except MethodNotAllowed:  # the path exists, for other methods
            matched = True
        except HTTPException:  # NotFound, or a redirect: no route without the slash either
            matched = False
        if matched:
            return [FieldError("path", f"no such path {path}; without the trailing slash it is {shorten(bare, 80)}")]
    where = "the API's paths are listed by /api/v1/openapi.json" if wants_json() else "see the pages linked above"
    return [FieldError("path", f"no such path {path}; {where}")]


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
        named = routing_errors(exc)
        if wants_json():
            response = error_response(status, code, named[0].message if named else exc.description or exc.name,
                                      named)
        else:
            message = named[0].message if named else exc.description or exc.name
            response = render_template("error.html", status=status, message=message), status
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
