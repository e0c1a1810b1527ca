"""The OpenAPI 3 document of the JSON API, built from the same limits the code enforces.

Served at GET /api/v1/openapi.json; the fuzz test (tests/app/test_api_fuzz.py) generates
requests from it and checks every response against it, so it cannot drift from the code.
"""

from __future__ import annotations

from app.catalog import MAX_QUERY
from app.errors import ERROR_CODES, MAX_ERRORS_SHOWN
from app.examples import DEFAULT_DATA_EXAMPLE, Example
from app.validation import MAX_ID
from pipeline.closed_days import CLOSED_DAY_MEANING, CLOSED_FOR_GOOD_MEANING, WEEKLY_CLOSED_MEANING


def _json(schema_ref: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": schema_ref}}}}


def _error(description: str) -> dict:
    return _json("#/components/schemas/Error", description)


WHOLE_NUMBER = "written without a fraction or exponent: 1, not 1.0 or 1e0 (a 400 says how to write it)"
UNIT_SALES_MEANING = ("forecast units sold, median-like: expm1 of the predicted log1p(units), the value the "
                      "log-error metric (NWRMSLE) scores; about half of the days sell more, so sums of it fall "
                      "short of total sales")
EXPECTED_UNITS_MEANING = ("expected units sold (the bias-corrected mean: unit_sales + 1 times a factor fitted on "
                          "the model's inner validation, minus 1): sum these for orders and totals; absent when "
                          "the served model predates them")
STORE_CLOSED_MEANING = (f"present (true) on {CLOSED_DAY_MEANING}; on {WEEKLY_CLOSED_MEANING}; and on every day "
                        f"after the last sales date of {CLOSED_FOR_GOOD_MEANING}: unit_sales and expected_units are "
                        "then 0")
CLOSED_REASON_MEANING = ("present with store_closed: why the store is closed that day, either the closed-day meaning "
                         "above, 'the store closes on <weekday>s: ...' for a weekday it closes every week, or, for a "
                         "store closed for good, 'the store has closed for good: no sales since YYYY-MM-DD' (its last "
                         "sales date)")


def openapi_document(max_batch: int, max_body_bytes: int, example: Example = DEFAULT_DATA_EXAMPLE) -> dict:
    """The document; ``example`` (app/examples.py, from the served model) fills every example value."""
    instance = {
        "type": "object", "additionalProperties": False,
        "required": ["store_nbr", "item_nbr", "date", "onpromotion"],
        "properties": {
            "store_nbr": {"type": "integer", "minimum": 1, "maximum": MAX_ID, "example": example.store_nbr,
                          "description": WHOLE_NUMBER},
            "item_nbr": {"type": "integer", "minimum": 1, "maximum": MAX_ID, "example": example.item_nbr,
                         "description": WHOLE_NUMBER},
            "date": {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                     "description": "target day; must lie in the model's horizon (GET /api/v1/model)",
                     "example": example.date},
            "onpromotion": {"type": "boolean", "example": False},
        },
    }
    prediction = {
        "type": "object", "additionalProperties": False,
        "required": ["store_nbr", "item_nbr", "date", "onpromotion", "unit_sales", "model_version"],
        "properties": {**instance["properties"],
                       "unit_sales": {"type": "number", "minimum": 0, "description": UNIT_SALES_MEANING},
                       "expected_units": {"type": "number", "minimum": 0, "description": EXPECTED_UNITS_MEANING},
                       "store_closed": {"type": "boolean", "enum": [True], "description": STORE_CLOSED_MEANING},
                       "closed_reason": {"type": "string", "description": CLOSED_REASON_MEANING},
                       "model_version": {"type": "string", "description": "the model that made this forecast: "
                                         "production's, or the canary's for the store×items it answers"}},
    }
    model_ref = {"type": "object", "required": ["name", "version", "variant"],
                 "description": "the model that answered; production's when a canary answered some of the "
                                "instances (each prediction's model_version names its own)",
                 "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                "variant": {"type": "string", "enum": ["production", "canary"]}}}
    schemas = {
        "Instance": instance,
        "PredictRequest": {
            "type": "object", "additionalProperties": False, "required": ["instances"],
            "properties": {"instances": {"type": "array", "minItems": 1, "maxItems": max_batch,
                                         "items": {"$ref": "#/components/schemas/Instance"}}},
        },
        "Prediction": prediction,
        "PredictResponse": {
            "type": "object", "required": ["model", "predictions", "request_id"],
            "properties": {"model": model_ref, "request_id": {"type": "string"},
                           "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}},
        },
        "Model": {
            "type": "object", "required": ["name", "version", "metrics", "origin", "horizon"],
            "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "created": {"type": "string", "nullable": True},
                "digest": {"type": "string"}, "loaded_at": {"type": "string"},
                "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                "origin": {"type": "string", "format": "date", "description": "last day with known sales"},
                "horizon": {"type": "object", "required": ["days", "first_date", "last_date"], "properties": {
                    "days": {"type": "integer"}, "first_date": {"type": "string", "format": "date"},
                    "last_date": {"type": "string", "format": "date"}}},
                "stores": {"type": "array", "items": {"$ref": "#/components/schemas/Store"}},
                "items": {"type": "integer", "description": "how many items the model knows (search: /api/v1/items)"},
                "promotion_has_effect": {"type": "boolean", "description": "false when no training example was on "
                                         "promotion (data without promotions): onpromotion changes no forecast"},
            },
        },
        "Store": {"type": "object", "required": ["store_nbr", "city", "type", "cluster", "label"],
                  "properties": {"store_nbr": {"type": "integer"}, "city": {"type": "string"},
                                 "type": {"type": "string"}, "cluster": {"type": "integer"},
                                 "label": {"type": "string"},
                                 "closed_since": {"type": "string", "format": "date", "description": "present for "
                                                  f"{CLOSED_FOR_GOOD_MEANING}: its last sales date; every later day "
                                                  "is answered 0 with store_closed"}}},
        "Item": {"type": "object", "required": ["item_nbr", "family", "class", "perishable", "label"],
                 "properties": {"item_nbr": {"type": "integer"}, "family": {"type": "string"},
                                "class": {"type": "integer"}, "perishable": {"type": "boolean"},
                                "label": {"type": "string"}}},
        "ItemSearch": {"type": "object", "required": ["items", "total"],
                       "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                                      "total": {"type": "integer", "minimum": 0}}},
        "Status": {"type": "object", "required": ["status"],
                   "properties": {
                       "status": {"type": "string", "enum": ["ok", "ready", "unavailable"]},
                       "model": {"type": "object", "required": ["name", "version"],
                                 "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
                       "reason": {"type": "string", "description": "why no model is loaded (503)"},
                       "fallback": {"type": "object", "required": ["serving", "instead_of"],
                                    "description": "a good release served in place of a refused production bundle",
                                    "properties": {"serving": {"type": "string"}, "instead_of": {"type": "string"}}},
                       "missing": {"type": "object", "required": ["bundle", "since", "reason"],
                                   "description": "the bundle served was removed after it loaded: served from memory",
                                   "properties": {"bundle": {"type": "string"},
                                                  "since": {"type": "string", "format": "date-time"},
                                                  "reason": {"type": "string"}}},
                       "refused": {"type": "object", "required": ["bundle", "reason", "at"],
                                   "description": "the last refusal of the bundle at the model path (the model "
                                                  "loaded before keeps serving)",
                                   "properties": {"bundle": {"type": "string"}, "reason": {"type": "string"},
                                                  "at": {"type": "string", "format": "date-time"}}}}},
        "Error": {
            "type": "object", "required": ["code", "message", "errors"],
            "properties": {
                "code": {"type": "string", "enum": list(ERROR_CODES),
                         "description": "; ".join(f"{k}: {v}" for k, v in ERROR_CODES.items())},
                "message": {"type": "string"}, "request_id": {"type": "string"},
                "errors": {"type": "array", "items": {
                    "type": "object", "required": ["field", "message"],
                    "properties": {"field": {"type": "string", "description": "e.g. instances[0].date"},
                                   "message": {"type": "string"}}}},
                "errors_omitted": {"type": "integer", "minimum": 1,
                                   "description": f"errors after the first {MAX_ERRORS_SHOWN} (absent if none)"},
            },
        },
    }
    unavailable = _error("no model is loaded yet (see GET /readyz)")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Shelfcast forecasting API", "version": "1",
            "description": ("Daily unit-sales forecasts for the store×item pairs of the served model's data (GET "
                            f"/api/v1/model, /api/v1/items: its stores and items). At most {max_batch} instances "
                            f"per request and {max_body_bytes} bytes per body (413 beyond). Every prediction is "
                            "logged as an event (Fluentd when FLUENTD_HOST is set, else logs/predictions.jsonl)."),
        },
        "paths": {
            "/api/v1/predict": {"post": {
                "summary": "Forecast units sold for a batch of store, item, date, promotion",
                "operationId": "predict",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/PredictRequest"},
                    "example": {"instances": [example.instance()]}}}},
                "responses": {
                    "200": _json("#/components/schemas/PredictResponse", "one prediction per instance, in order"),
                    "400": _error("malformed JSON (a key twice in one object included), invalid fields (every "
                                  "one named in errors[].field: an unknown key beside 'instances' and the "
                                  "instances' own errors in one answer; instances that are missing, not a list, "
                                  "empty or over the batch limit are not read, and only that is named), or a body "
                                  "shorter than its Content-Length"),
                    "408": _error("the body did not arrive within the server's body time limit "
                                  "(SHELFCAST_BODY_TIMEOUT_S)"),
                    "413": _error(f"body larger than {max_body_bytes} bytes"),
                    "415": _error("the body is not application/json, is compressed (any Content-Encoding but "
                                  "identity, any Transfer-Encoding but chunked), or declares a charset other than "
                                  "utf-8"),
                    "422": _error("unknown store or item, or a date outside the model's horizon"),
                    "503": unavailable,
                },
            }},
            "/api/v1/model": {"get": {
                "summary": "The served model: name, version, metrics, origin, horizon", "operationId": "model",
                "responses": {"200": _json("#/components/schemas/Model", "the model now serving"),
                              "503": unavailable}}},
            "/api/v1/items": {"get": {
                "summary": "Search the model's items by number, family or class", "operationId": "searchItems",
                "parameters": [
                    {"name": "q", "in": "query", "required": False,
                     "schema": {"type": "string", "maxLength": MAX_QUERY},
                     "example": example.search,
                     "description": "words that must all appear (e.g. a family and a class); given at most "
                                    "once (a repeated parameter is 400)"},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 50, "default": 20},
                     "description": "at most this many items; given at most once (a repeated parameter is 400)"}],
                "responses": {"200": _json("#/components/schemas/ItemSearch", "matching items, by number"),
                              "400": _error("an invalid query parameter"), "503": unavailable}}},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document", "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3 document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/api/v1/monitoring": {"get": {
                "summary": "Recent prediction statistics and the latest drift report's summary",
                "operationId": "monitoring",
                "responses": {"200": {"description": "statistics of logs/predictions.jsonl and logs/drift/drift.json",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/healthz": {"get": {"summary": "The process is alive", "operationId": "healthz",
                                 "responses": {"200": _json("#/components/schemas/Status", "alive")}}},
            "/readyz": {"get": {"summary": "A model is loaded and requests can be served", "operationId": "readyz",
                                "responses": {"200": _json("#/components/schemas/Status", "ready"),
                                              "503": _json("#/components/schemas/Status", "no model loaded yet")}}},
        },
        "components": {"schemas": schemas},
    }
