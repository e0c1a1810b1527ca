"""Statistics of the most recent prediction events in the local JSON-lines log (the monitoring page)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

TAIL_BYTES = 4 * 1024 * 1024  # read at most the last 4 MiB: the page must stay fast on a big log


def tail_events(path: Path | str, max_events: int = 5000, tail_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The last whole, readable JSON lines of `path` (a partial first or torn last line is skipped)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return []
    with open(path, "rb") as handle:
        start = max(0, size - tail_bytes)
        handle.seek(start)
        data = handle.read()
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]
    events = []
    for line in lines[-max_events - 1:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events.append(record)
    return events[-max_events:]


def _units(event: dict) -> float | None:
    output = event.get("output")
    value = output.get("unit_sales") if isinstance(output, dict) else output
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def recent_statistics(path: Path | str, max_events: int = 5000) -> dict[str, Any]:
    events = tail_events(path, max_events)
    latencies = np.asarray([e["latency_ms"] for e in events if isinstance(e.get("latency_ms"), (int, float))], float)
    units = np.asarray([u for u in map(_units, events) if u is not None], float)
    promo = [bool(e["inputs"].get("onpromotion")) for e in events if isinstance(e.get("inputs"), dict)]
    versions: dict[str, int] = {}
    sources: dict[str, int] = {}
    for event in events:
        versions[str(event.get("model_version", "unknown"))] = versions.get(str(event.get("model_version", "unknown")), 0) + 1
        sources[str(event.get("source", "unknown"))] = sources.get(str(event.get("source", "unknown")), 0) + 1
    stamps = sorted(str(e["timestamp"]) for e in events if e.get("timestamp"))

    def pct(values: np.ndarray, q: float) -> float | None:
        return float(np.percentile(values, q)) if values.size else None

    return {
        "log": os.fspath(path), "events": len(events),
        "first": stamps[0] if stamps else None, "last": stamps[-1] if stamps else None,
        "latency_ms": {"p50": pct(latencies, 50), "p95": pct(latencies, 95), "p99": pct(latencies, 99)},
        "forecast_units": {"mean": float(units.mean()) if units.size else None, "p50": pct(units, 50),
                           "p95": pct(units, 95)},
        "promotion_share": (sum(promo) / len(promo)) if promo else None,
        "model_versions": versions, "sources": sources,
    }
