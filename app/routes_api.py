"""The JSON API: POST /api/v1/predict, GET /api/v1/model, /api/v1/items, /api/v1/openapi.json."""

from __future__ import annotations

import json

from flask import Blueprint, g, jsonify, request

from app.catalog import MAX_QUERY
from app.errors import error_response
from app.examples import example_for
from app.form_body import urlencoded_parts
from app.metrics import UNFORECASTABLE, labelled
from app.openapi import openapi_document
from app.variants import installed_candidates, predict_with_variants
from app.state import serving_state
from app.validation import FieldError, InputError, SentNumber, check_forecastable, parse_instances, shorten
from pipeline.release_store import PRODUCTION

api = Blueprint("api", __name__, url_prefix="/api/v1")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


class DuplicateKey(ValueError):
    """A key twice in one JSON object: json keeps the last silently, so which one the client meant is unknown."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


def _not_json_type(mimetype: str) -> str:
    """Why a body's Content-Type is not taken, with the usual client's fix: no header at all (Python requests'
    data=json.dumps(...)) was "got 'none'", as if 'none' had been sent."""
    if not mimetype:
        return ("expected application/json, but no Content-Type was sent: send the header with the JSON body "
                "(requests: json=..., not data=...)")
    hint = " (curl -d and wget --post-data send it unless told: add -H 'Content-Type: application/json')" \
        if mimetype == "application/x-www-form-urlencoded" else ""
    return f"expected application/json, got {shorten(mimetype)!r}{hint}"


def parse_json_body() -> object:
    """The body as JSON, strictly (no NaN/Infinity, no key twice in an object); 415/400 InputErrors say what is
    wrong."""
    if request.mimetype != "application/json":
        raise InputError(415, "unsupported_media_type", "send the body as application/json",
                         [FieldError("Content-Type", _not_json_type(request.mimetype))])
    raw = request.get_data(cache=False)  # beyond MAX_CONTENT_LENGTH this raises 413
    try:
        text = raw.decode("utf-8-sig")  # UTF-8 (RFC 8259), a BOM allowed; json.loads alone would take UTF-16 or 32
        return json.loads(text, parse_constant=_reject_constant, parse_float=SentNumber,
                          object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        raise InputError(400, "invalid_request", "the body repeats a key within one object",
                         [FieldError("body", f"duplicate key {shorten(exc.args[0])!r}: give each key once")]) from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        # (past 4,300 digits Python's int() advises raising sys.set_int_max_str_digits: not the client's business)
        detail = str(exc).split("; use sys.set_int_max_str_digits")[0] if isinstance(exc, ValueError) \
            else "nested too deeply"
        raise InputError(400, "invalid_request", "the body is not valid JSON",
                         [FieldError("body", f"not valid JSON: {detail[:200]}")]) from None


def model_or_503():
    model = serving_state().predictor.model
    if model is None:
        return None, error_response(503, "model_unavailable", "no model is loaded yet; see GET /readyz")
    return model, None


@api.post("/predict")
def predict():
    state = serving_state()
    payload = parse_json_body()
    instances = parse_instances(payload, state.settings.max_batch)
    model, unavailable = model_or_503()
    if unavailable is not None:
        return unavailable
    try:
        check_forecastable(instances, model)
    except InputError as refused:
        for error in refused.errors:  # instances[3].item_nbr -> item_nbr
            labelled(UNFORECASTABLE, error.field.rsplit(".", 1)[-1]).inc()
        raise
    g.candidates = installed_candidates(state.variants)
    predictions, answered_by, shadow = predict_with_variants(model, state.variants, g.candidates, instances,
                                                             state.sink, g.request_id, g.started, source="api")
    # the model that answered; production's when a canary answered some rows (each prediction names its own)
    variant, answering = next(iter(answered_by.items())) if len(answered_by) == 1 else (PRODUCTION, model)
    response = jsonify({"model": {"name": answering.name, "version": answering.version, "variant": variant},
                        "predictions": predictions, "request_id": g.request_id})
    response.headers["X-Model-Variant"] = ",".join(sorted(answered_by))  # which release variant(s) answered
    if shadow is not None:
        response.call_on_close(shadow)  # after the response is sent: the shadow costs the user nothing
    return response


@api.get("/model")
def model_info():
    model, unavailable = model_or_503()
    if unavailable is not None:
        return unavailable
    state = serving_state()
    variants = {} if state.variants is None else {"variants": state.variants.describe()}
    return jsonify({**model.describe(), **variants})


def query_values(names: tuple[str, ...]) -> tuple[dict[str, str], list[FieldError]]:
    """The value of each of ``names`` in the query string, read strictly: one whose %-escapes are not UTF-8
    text is an error naming it (Werkzeug's request.args keeps such an escape as its literal text, so a Latin-1
    ``q=caf%E9`` searched for "caf%E9" and answered 200 with no items), and so is one given more than once
    (``limit=1&limit=50`` used the first silently: the client's mistake, named rather than guessed at)."""
    values: dict[str, str] = {}
    errors = []
    repeated: set[str] = set()
    for part in urlencoded_parts(request.query_string):
        if part.name not in names:
            continue
        if part.name in values:
            if part.name not in repeated:
                repeated.add(part.name)
                errors.append(FieldError(part.name, "given more than once in the query string: give it once"))
            continue
        try:
            values[part.name] = part.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            values[part.name] = ""
            errors.append(FieldError(part.name, f"not UTF-8 text once %-decoded (byte 0x{part.data[exc.start]:02x} "
                                                f"at position {exc.start}): %-encode it from UTF-8 (é is %C3%A9)"))
    return values, errors


@api.get("/items")
def search_items():
    values, errors = query_values(("q", "limit"))
    query = values.get("q", "")
    if len(query) > MAX_QUERY:
        errors.append(FieldError("q", f"at most {MAX_QUERY} characters"))
    limit_text = values.get("limit", "20")
    limit = int(limit_text) if limit_text.isascii() and limit_text.isdigit() else 0
    if not 1 <= limit <= 50 and "limit" not in {error.field for error in errors}:
        errors.append(FieldError("limit", f"expected an integer 1..50, got {limit_text[:20]!r}"))
    if errors:
        raise InputError(400, "invalid_request", "invalid query parameter(s)", errors)
    model, unavailable = model_or_503()
    if unavailable is not None:
        return unavailable
    items, total = model.catalog.search(query, limit)
    return jsonify({"items": [item.to_json() for item in items], "total": total})


@api.get("/openapi.json")
def openapi():
    state = serving_state()
    example = example_for(state.predictor.model)  # examples that work on the model being served
    return jsonify(openapi_document(state.settings.max_batch, state.settings.max_body_bytes, example))
