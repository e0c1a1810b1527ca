"""Event records: a deep copy in plain JSON types, with event_id, request_id and timestamp.

Shared by the app's prediction events and monitoring's one-shot events, so both carry the
same ids (event_id is the Elasticsearch document id downstream) and never hand a value the
delivery thread cannot serialise. NaN and infinities become null: Fluentd's Elasticsearch output
(Yajl) cannot encode them and Elasticsearch refuses them, so such an event was never stored.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import time
from typing import Any, Mapping

import numpy as np

MAX_NESTING = 32
# event ids: 128 random bits from a generator seeded from os.urandom in each process (again after a fork,
# so two workers never share a sequence): as unique as uuid4, without a system call per event
_ids = random.Random(os.urandom(32))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
# the forward protocol's EventTime: seconds since 1970 as an unsigned 32-bit integer
EVENT_TIME_MIN_S, EVENT_TIME_END_S = 0, 2**32
EVENT_TIME_RANGE = ("1970-01-01T00:00:00+00:00", "2106-02-07T06:28:16+00:00")


class EventContentError(ValueError):
    """An event value that cannot be logged; the message names the field path."""


def prepare_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `event` in plain JSON types, with ids and time filled in.

    Copying at emit time means the caller may reuse or mutate its objects afterwards;
    converting numpy scalars and arrays here means the delivery thread never meets a
    value it cannot serialise.
    """
    if not isinstance(event, Mapping):
        raise EventContentError(f"event: expected a mapping, got {type(event).__name__}")
    content = to_plain(event, "event")
    record: dict[str, Any] = {}
    for key in ("event_id", "request_id"):
        value = content.pop(key, None)
        if value is None:
            value = new_event_id()
        elif not isinstance(value, str) or not value:
            raise EventContentError(f"event.{key}: expected a non-empty string, got {value!r}")
        record[key] = value
    timestamp = content.pop("timestamp", None)
    record["timestamp"] = utc_now_iso() if timestamp is None else checked_timestamp(timestamp)
    record.update(content)
    return record


def new_event_id() -> str:
    """32 hex digits (128 random bits), unique per event across processes."""
    return f"{_ids.getrandbits(128):032x}"


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def checked_timestamp(value: Any) -> str:
    """`value` if it is an aware ISO-8601 time the forward protocol's EventTime can carry.

    EventTime packs the seconds since 1970 as an unsigned 32-bit integer, so a time outside
    [1970-01-01, 2106-02-07T06:28:16Z) could be spooled but never sent."""
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            if not EVENT_TIME_MIN_S <= parsed.timestamp() < EVENT_TIME_END_S:
                raise EventContentError(
                    f"event.timestamp: {value!r} is outside what Fluentd's EventTime can carry: "
                    f"from {EVENT_TIME_RANGE[0]} up to (not including) {EVENT_TIME_RANGE[1]}"
                )
            return value
    raise EventContentError(
        f"event.timestamp: expected an ISO-8601 time with a UTC offset "
        f"(e.g. 2017-08-16T10:00:00+00:00) or an aware datetime, got {value!r}"
    )


class _Unusual(Exception):
    """Raised by `_plain` where `to_plain_named` must decide (an error to name, or a rarer type)."""


def to_plain(value: Any, path: str, depth: int = 0) -> Any:
    """`value` as None/bool/int/float/str/list/dict (str keys), or EventContentError naming `path`.

    Events are dicts of plain values almost always: `_plain` copies those without building a field
    path per value (an event has ~80 of them); anything else, and every error, goes through
    `to_plain_named` from the top, which gives the same value or names the field that cannot be logged.
    """
    try:
        return _plain(value, depth)
    except _Unusual:
        return to_plain_named(value, path, depth)


def _plain(value: Any, depth: int) -> Any:
    """`to_plain_named`'s answer for dicts (str keys), lists, tuples, None, bool, float, in-range int and
    encodable str; _Unusual for anything else."""
    if depth > MAX_NESTING:
        raise _Unusual
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if value is None or kind is bool:
        return value
    if kind is str:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise _Unusual from None
        return value
    if kind is int:
        if INT64_MIN <= value <= UINT64_MAX:
            return value
        raise _Unusual
    if kind is dict:
        if value and depth >= MAX_NESTING:  # its values would be one level too deep
            raise _Unusual
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str or _utf8_error(key) is not None:
                raise _Unusual
            item_kind = type(item)
            if item_kind is float:
                plain[key] = item if math.isfinite(item) else None
            else:
                plain[key] = item if item is None or item_kind is bool else _plain(item, depth + 1)
        return plain
    if kind is list or kind is tuple:
        return [_plain(item, depth + 1) for item in value]
    raise _Unusual


def to_plain_named(value: Any, path: str, depth: int = 0) -> Any:
    """`to_plain`, keeping each value's field path for the error message."""
    if depth > MAX_NESTING:
        raise EventContentError(f"{path}: nested more than {MAX_NESTING} levels deep (a cycle?)")
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None  # what Fluentd's Elasticsearch output can encode
    if value is None or kind is bool:
        return value
    if kind is int:
        return checked_int(value, path)
    if kind is str:
        return checked_str(value, path)
    if isinstance(value, Mapping):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise EventContentError(f"{path}: key {key!r} is a {type(key).__name__}; keys must be strings")
            error = _utf8_error(key)
            if error is not None:  # else encode_line's UTF-8 would raise out of emit()
                raise EventContentError(f"{path}: key {key!r} is not valid UTF-8 text ({error})")
            plain[str(key)] = to_plain_named(item, f"{path}.{key}", depth + 1)
        return plain
    if isinstance(value, (list, tuple)):
        return [to_plain_named(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, np.ndarray):
        return array_to_plain(value, path, depth)
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value))
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        if value.dtype.kind == "f" and value.dtype.itemsize > 8:  # a long double: .item() gives it back unchanged,
            return to_plain_named(float(value), path, depth)  # and the recursion raised RecursionError out of emit()
        return to_plain_named(value.item(), path, depth)
    if isinstance(value, np.str_):
        return checked_str(str(value), path)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    for base in (int, float, str):
        if isinstance(value, base):  # a subclass such as IntEnum keeps its value
            return to_plain_named(base(value), path, depth)
    raise EventContentError(
        f"{path}: a {type(value).__name__} cannot be logged; "
        "pass numbers, strings, booleans, None, lists, dicts, dates or numpy values"
    )


def array_to_plain(array: np.ndarray, path: str, depth: int) -> Any:
    kind = array.dtype.kind
    if kind == "f":
        if array.dtype.itemsize > 8:  # long doubles: tolist() keeps them, and json.dumps raised TypeError
            array = array.astype(np.float64)
        if not np.isfinite(array).all():  # NaN and infinities as null, as for a float (to_plain_named)
            return np.where(np.isfinite(array), array, None).tolist()
        return array.tolist()
    if kind in "biu":
        return array.tolist()
    if kind == "M":
        return np.datetime_as_string(array).tolist()
    if kind in "UO":
        return to_plain_named(array.tolist(), path, depth)
    raise EventContentError(f"{path}: a numpy array of dtype {array.dtype} cannot be logged")


def checked_int(value: int, path: str) -> int:
    if not INT64_MIN <= value <= UINT64_MAX:
        raise EventContentError(f"{path}: integer {value} does not fit in 64 bits")
    return value


def _utf8_error(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8 (a lone surrogate), or None; the one check of values and keys."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{exc.reason} at {exc.start}"
    return None


def checked_str(value: str, path: str) -> str:
    error = _utf8_error(value)
    if error is not None:
        raise EventContentError(f"{path}: not valid UTF-8 text ({error})")
    return value


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One JSON line (prepare_event's records hold no NaN or infinity: strict JSON)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def event_seconds(record: Mapping[str, Any]) -> float:
    try:
        return dt.datetime.fromisoformat(record["timestamp"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()  # only a hand-edited spool line can get here
