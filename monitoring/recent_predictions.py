"""Statistics of the most recent prediction events in the local JSON-lines log (the monitoring page).

Overall and per release variant (production, canary, shadow).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.event_sources import EventSourceError, event_units, finite_number, read_jsonl_events
from pipeline.release import read_traffic
from pipeline.release_store import CANARY, VARIANTS


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def variant_statistics(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per release variant (production, canary, shadow) with traffic: requests, predictions, errors, latency, forecast.

    Counted by the release decision's own reader (pipeline.release.read_traffic), so the page shows
    the figures `python -m pipeline.release decide` judges. Errors are known for the canary only (its
    failed attempts, which production answered, are logged with ``canary_failed``); a failed production
    request or shadow forecast writes no prediction event, so theirs are None."""
    traffic = read_traffic(events)
    rows = []
    for variant in VARIANTS:
        seen = traffic.get(variant)
        if seen is None:
            continue
        latencies = np.asarray(seen.latencies_ms, float)
        units = np.asarray([u for forecasts in seen.by_series.values() for u in forecasts], float)
        request_ids = {request_id for request_id, _ in seen.by_request if request_id is not None}
        rows.append({"variant": variant, "requests": len(request_ids) if request_ids else None,
                     "predictions": seen.predictions, "errors": seen.errors if variant == CANARY else None,
                     "latency_ms": {"p50": _pct(latencies, 50), "p95": _pct(latencies, 95)},
                     "forecast_mean": float(units.mean()) if units.size else None})
    return rows


def recent_statistics(path: Path | str, max_events: int = 5000) -> dict[str, Any]:
    """The last `max_events` prediction events of the log, read as `pipeline.release decide` reads it (other
    senders' records skipped, a torn last line skipped); `error` says why a log that is there cannot be read."""
    events, error = [], None
    if Path(path).exists():
        try:
            events = read_jsonl_events(path, max_events).events
        except EventSourceError as exc:
            error = str(exc)
    latencies = np.asarray([v for v in (finite_number(e.get("latency_ms")) for e in events) if v is not None], float)
    units = np.asarray([u for u in map(event_units, events) if u is not None], float)
    promo = [bool(e["inputs"].get("onpromotion")) for e in events if isinstance(e.get("inputs"), dict)]
    versions: dict[str, int] = {}
    sources: dict[str, int] = {}
    for event in events:
        version = str(event.get("model_version", "unknown"))
        versions[version] = versions.get(version, 0) + 1
        source = str(event.get("source", "unknown"))
        sources[source] = sources.get(source, 0) + 1
    stamps = sorted(str(e["timestamp"]) for e in events if e.get("timestamp"))
    return {
        "log": os.fspath(path), "events": len(events), "error": error,
        "first": stamps[0] if stamps else None, "last": stamps[-1] if stamps else None,
        "latency_ms": {"p50": _pct(latencies, 50), "p95": _pct(latencies, 95), "p99": _pct(latencies, 99)},
        "forecast_units": {"mean": float(units.mean()) if units.size else None, "p50": _pct(units, 50),
                           "p95": _pct(units, 95)},
        "promotion_share": (sum(promo) / len(promo)) if promo else None,
        "model_versions": versions, "sources": sources, "variants": variant_statistics(events),
    }
