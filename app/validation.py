"""Request checking for the API and the form: every bad field named, nothing silently coerced.

Two steps, two status codes: ``parse_instances`` checks the request's shape and types
(400: the client sent something malformed), ``check_forecastable`` checks the values against
the served model — a store or item it was not trained on, or a date outside its forecast
horizon (422: well-formed, but not something this model can forecast). Before either, ``check_body_encoding``
refuses a body that would be misread (415: compressed, or not UTF-8). Echoed client values are written as the JSON
that was sent and shortened (``_describe``, ``shorten``), so an error stays small whatever was sent.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from app.catalog import shown_name
from app.predictor import LoadedModel

INSTANCE_FIELDS = ("store_nbr", "item_nbr", "date", "onpromotion")
MAX_ID = 2**31 - 1
DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# a year past 9999 (an HTML date input takes 12017-08-01): no date here can have it, so it is out of range
LONG_YEAR_DATE = re.compile(r"0*([1-9][0-9]{4,})-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def to_json(self) -> dict:
        return {"field": self.field, "message": self.message}


class InputError(ValueError):
    """Input that cannot be served; carries the HTTP status and one error per bad field."""

    def __init__(self, status: int, code: str, message: str, errors: list[FieldError]):
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors


@dataclass(frozen=True)
class Instance:
    store_nbr: int
    item_nbr: int
    date: dt.date
    onpromotion: bool

    def to_json(self) -> dict:
        return {"store_nbr": self.store_nbr, "item_nbr": self.item_nbr, "date": self.date.isoformat(),
                "onpromotion": self.onpromotion}


def shorten(text: str, limit: int = 40) -> str:
    """Client-sent text as an error message echoes it: at most ``limit`` characters, so errors stay small, and a
    direction control in it isolated as a name from the data is (``shown_name``), so it orders the echo alone: a link
    to ``/%E2%80%AE...`` (U+202E, right-to-left override) made the error page's "no such path /...; see the pages
    linked above" read backwards after the path, as a product typed with one did the form's error."""
    return shown_name(text if len(text) <= limit else text[:limit - 3] + "...")


class SentNumber(float):
    """A JSON number with a fraction or exponent as the client wrote it (the body's parse_float): an error echoes
    ``1e0`` or ``1e400``, not Python's ``1.0`` or ``inf``."""

    text: str

    def __new__(cls, text: str) -> "SentNumber":
        number = super().__new__(cls, text)
        number.text = text
        return number


def _json_tokens(value: Any) -> Iterator[str]:
    """``value`` written as JSON, piece by piece (a caller stops once it has enough: however long or deeply nested
    the value, only what is shown is written)."""
    if isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield (", " if i else "") + json.dumps(key, ensure_ascii=False) + ": "
            yield from _json_tokens(item)
        yield "}"
    elif isinstance(value, list):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ", "
            yield from _json_tokens(item)
        yield "]"
    else:
        yield value.text if isinstance(value, SentNumber) else json.dumps(value, ensure_ascii=False)


def _describe(value: Any, limit: int = 40) -> str:
    """A value the client sent, echoed in JSON as it was written (null, true, "text", 1e0; not Python's None,
    True, 'text', 1.0), at most ``limit`` characters."""
    shown, length = [], 0
    for token in _json_tokens(value):
        shown.append(token)
        length += len(token)
        if length > limit:
            break
    return shorten("".join(shown), limit)


def check_body_encoding(content_encoding: str, charset: str | None, transfer_encoding: str = "") -> None:
    """InputError(415) for a body this app would misread: compressed (no Content-Encoding, and no transfer coding
    but chunked, is decoded here), or declared in a charset other than UTF-8 (neither the JSON nor the form
    reader takes a charset from the header)."""
    errors = []
    if any(c.strip().lower() not in ("chunked", "") for c in transfer_encoding.split(",")):
        errors.append(FieldError("Transfer-Encoding", f"unsupported transfer coding {shorten(transfer_encoding)!r}: "
                                                      "send the body chunked or with a Content-Length, uncompressed"))
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    if any(coding != "identity" for coding in codings):
        errors.append(FieldError("Content-Encoding", f"unsupported content coding {shorten(content_encoding)!r}: "
                                                     "send the body uncompressed (identity)"))
    if charset is not None and charset.strip().lower() not in ("utf-8", "utf8"):
        errors.append(FieldError("Content-Type", f"unsupported charset {shorten(charset)!r}: send the body as utf-8"))
    if errors:
        raise InputError(415, "unsupported_media_type", "the body's encoding is not supported", errors)


def check_id(value: Any, field: str, errors: list[FieldError]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        whole = isinstance(value, float) and value.is_integer() and 1 <= value <= MAX_ID
        hint = f" (write it as {int(value)}: a number with a fraction or exponent is not an integer)" if whole else ""
        errors.append(FieldError(field, f"expected an integer, got {_describe(value)}{hint}"))
        return None
    if not 1 <= value <= MAX_ID:
        errors.append(FieldError(field, f"expected an integer 1..{MAX_ID}, got {_describe(value)}"))
        return None
    return value


def check_date(value: Any, field: str, errors: list[FieldError]) -> dt.date | None:
    long_year = LONG_YEAR_DATE.fullmatch(value) if isinstance(value, str) else None
    if long_year is not None:
        errors.append(FieldError(field, f"year {shorten(long_year.group(1))} is out of range: a date is YYYY-MM-DD, "
                                        "years 0001..9999, and the model forecasts only its horizon (GET "
                                        "/api/v1/model)"))
        return None
    if not isinstance(value, str) or not DATE_PATTERN.fullmatch(value):
        errors.append(FieldError(field, f"expected a date as YYYY-MM-DD, got {_describe(value)}"))
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        errors.append(FieldError(field, f"not a calendar date: {value!r}"))
        return None


def check_flag(value: Any, field: str, errors: list[FieldError]) -> bool | None:
    if not isinstance(value, bool):
        errors.append(FieldError(field, f"expected true or false, got {_describe(value)}"))
        return None
    return value


def parse_instances(payload: Any, max_batch: int) -> list[Instance]:
    """The instances of a predict request body, or InputError(400) naming every bad field."""
    if not isinstance(payload, dict):
        raise InputError(400, "invalid_request", "the body must be a JSON object",
                         [FieldError("body",
                                     f'expected an object {{"instances": [...]}}, got {_describe(payload)}')])
    # An unknown key beside "instances" leaves them readable: one answer names its errors and theirs. Missing,
    # not a list, empty or over the batch limit, they are not read (over the limit: reading them would be work,
    # and errors, without bound within the body size limit, for a request that is refused anyway).
    errors = [FieldError(shorten(k), "unknown field (expected only 'instances')") for k in payload if k != "instances"]
    instances = payload.get("instances")
    if "instances" not in payload:
        errors.append(FieldError("instances", "required"))
    elif not isinstance(instances, list):
        errors.append(FieldError("instances", f"expected a list of instances, got {_describe(instances)}"))
    elif not instances:
        errors.append(FieldError("instances", "expected at least one instance"))
    elif len(instances) > max_batch:
        errors.append(FieldError("instances", f"at most {max_batch} instances per request, got {len(instances)}"))
    else:
        parsed = [_parse_instance(item, f"instances[{i}]", errors) for i, item in enumerate(instances)]
        if errors:
            raise InputError(400, "invalid_request", f"{len(errors)} invalid field(s)", errors)
        return parsed  # type: ignore[return-value]
    raise InputError(400, "invalid_request", "the request is malformed", errors)


def _parse_instance(item: Any, where: str, errors: list[FieldError]) -> Instance | None:
    if not isinstance(item, dict):
        errors.append(FieldError(where, f"expected an object with {', '.join(INSTANCE_FIELDS)}, "
                                        f"got {_describe(item)}"))
        return None
    before = len(errors)
    errors.extend(FieldError(f"{where}.{shorten(k)}", "unknown field") for k in item if k not in INSTANCE_FIELDS)
    errors.extend(FieldError(f"{where}.{k}", "required") for k in INSTANCE_FIELDS if k not in item)
    store = check_id(item["store_nbr"], f"{where}.store_nbr", errors) if "store_nbr" in item else None
    product = check_id(item["item_nbr"], f"{where}.item_nbr", errors) if "item_nbr" in item else None
    date = check_date(item["date"], f"{where}.date", errors) if "date" in item else None
    promo = check_flag(item["onpromotion"], f"{where}.onpromotion", errors) if "onpromotion" in item else None
    if len(errors) > before:
        return None
    return Instance(store, product, date, promo)  # type: ignore[arg-type]


def forecastable_errors(instance: Instance, model: LoadedModel, where: str) -> list[FieldError]:
    """Why the model cannot forecast this instance (empty when it can)."""
    errors = []
    if instance.store_nbr not in model.catalog.stores:
        errors.append(FieldError(f"{where}store_nbr", f"store {instance.store_nbr} is not one the served model knows "
                                                      f"(known: {len(model.catalog.stores)} stores, listed by "
                                                      "GET /api/v1/model)"))
    if instance.item_nbr not in model.catalog.items:
        errors.append(FieldError(f"{where}item_nbr", f"item {instance.item_nbr} is not one the served model knows "
                                                     "(search items with GET /api/v1/items?q=...)"))
    if not model.first_date <= instance.date <= model.last_date:
        errors.append(FieldError(f"{where}date", f"{instance.date.isoformat()} is outside the model's forecast horizon "
                                                 f"{model.first_date.isoformat()} .. {model.last_date.isoformat()}"))
    return errors


def check_forecastable(instances: list[Instance], model: LoadedModel) -> None:
    """InputError(422) naming every instance field the served model cannot forecast."""
    errors = [e for i, inst in enumerate(instances) for e in forecastable_errors(inst, model, f"instances[{i}].")]
    if errors:
        raise InputError(422, "not_forecastable", f"{len(errors)} value(s) the model cannot forecast", errors)


# --- the form ---------------------------------------------------------------------------------

FORM_FIELDS = ("store", "item", "date", "onpromotion")
FORM_VALUE_CHARS = 200  # a field's value is kept this long (the form's inputs take no more: a GET address stays short)
# "1838989 — Dairy …": a number alone, or before a spaced dash or dot and a label (a picked option's text); a
# number run on into anything else ("1.0", "1e400", "2.5", "1<script>") is no number, not its leading digits. Any
# script's decimal digits (\d: full-width ones from a CJK keyboard's number mode, Arabic-Indic ones), as int() reads
LEADING_NUMBER = re.compile(r"\s*(\d+)\s*(?:[-\u2013\u2014\u00b7]\s.*)?", re.S)


URLENCODED, MULTIPART = "application/x-www-form-urlencoded", "multipart/form-data"
FORM_TYPES = (URLENCODED, MULTIPART)  # what a browser's form sends (app/form_body.py reads both)


def check_form_type(mimetype: str, has_body: bool) -> None:
    """InputError(415) for a POST / whose body is not a form (JSON, text, ...): Werkzeug would read no fields from
    it, and the redirect would show an empty form as if nothing had been sent. A POST with neither body nor
    Content-Type is an empty form."""
    if mimetype in FORM_TYPES or not (mimetype or has_body):
        return
    got = f"got {shorten(mimetype)!r}" if mimetype else "got a body without one"
    raise InputError(415, "unsupported_media_type", f"POST / takes the web form, sent as {' or '.join(FORM_TYPES)}",
                     [FieldError("Content-Type", f"{got}; to forecast from JSON, POST it to /api/v1/predict, "
                                                 "documented at /docs")])


@dataclass
class FormInput:
    """What the person typed (kept to show back) and, when valid, the instance to forecast."""

    values: dict[str, str]
    errors: dict[str, str]
    instance: Instance | None = None


def form_values(form: Mapping[str, str]) -> dict[str, str]:
    """The form's fields that were sent, as the page keeps them: stripped, at most FORM_VALUE_CHARS each."""
    return {name: str(form[name]).strip()[:FORM_VALUE_CHARS] for name in FORM_FIELDS if name in form}


def parse_form(form: Mapping[str, str], model: LoadedModel) -> FormInput:
    """Check the form fields one by one; errors are keyed by field so the page shows them beside it."""
    values = {**dict.fromkeys(FORM_FIELDS, ""), **form_values(form)}
    errors: dict[str, str] = {}
    store = _form_number(values["store"], "Choose a store.", "That is not a store number.", errors, "store")
    if store is not None:  # "01" or an option's label is store 1: the list shows it selected, so a resubmit keeps it
        values["store"] = str(store)
    item = _form_number(values["item"], "Type a product and pick it from the list.",
                        "Pick a product from the list (type part of its family or class), or type its item number.",
                        errors, "item")
    date = None
    if not values["date"]:
        errors["date"] = "Choose a date."
    else:
        field_errors: list[FieldError] = []
        date = check_date(values["date"], "date", field_errors)
        long_year = LONG_YEAR_DATE.fullmatch(values["date"])
        if long_year is not None:  # a valid HTML date (12017-08-01), but a year no forecast can be for
            errors["date"] = (f"The year {shorten(long_year.group(1))} is out of range: the model forecasts "
                              f"{model.first_date.isoformat()} to {model.last_date.isoformat()} only; choose a "
                              "date in that range.")
        elif date is None and DATE_PATTERN.fullmatch(values["date"]):  # written right, no such day (as the API says)
            errors["date"] = f"{values['date']} is not a calendar date; use the date picker."
        elif date is None:
            errors["date"] = "Use the date picker, or type the date as YYYY-MM-DD."
    onpromotion = values["onpromotion"] in ("on", "1", "true", "yes")
    if values["onpromotion"] not in ("", "on", "1", "true", "yes", "0", "false", "no", "off"):
        errors["onpromotion"] = "Tick the box if the item is on promotion that day."
    if store is not None and store not in model.catalog.stores:
        errors["store"] = f"Store {shorten(str(store))} is not one this model knows; choose one from the list."
    if item is not None and item not in model.catalog.items:
        errors["item"] = (f"Item {shorten(str(item))} is not one this model knows; type part of its name and pick it "
                          "from the list.")
    if date is not None and not model.first_date <= date <= model.last_date:
        errors["date"] = (f"The model forecasts {model.first_date.isoformat()} to {model.last_date.isoformat()} only; "
                          "choose a date in that range.")
    if errors:
        return FormInput(values, errors)
    return FormInput(values, errors, Instance(store, item, date, onpromotion))  # type: ignore[arg-type]


def _form_number(text: str, missing: str, malformed: str, errors: dict[str, str], field: str) -> int | None:
    """The number typed first; any number, however large, is then checked as one the model knows or not."""
    if not text:
        errors[field] = missing
        return None
    match = LEADING_NUMBER.fullmatch(text)
    if match is None:
        errors[field] = malformed
        return None
    return int(match.group(1))  # at most FORM_VALUE_CHARS digits: far within int()'s limit
