"""Statistics of the most recent prediction events in the local JSON-lines log (the monitoring page).

Overall and per release variant (production, canary, shadow). Reading them costs ~0.15-0.4 s for a few thousand
events, in the worker that would otherwise be making forecasts, so the page reuses them (`StatisticsCache`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from stat import S_ISREG
from typing import Any

import numpy as np

from pipeline.event_sources import EventSourceError, event_units, is_closed_day, read_jsonl_events
from pipeline.release import RequestLatencies, VariantTraffic, read_traffic
from pipeline.release_store import CANARY, PRODUCTION, SHADOW, VARIANTS

STATISTICS_TTL_S = 5.0  # how long a process reuses the statistics of a log that keeps changing


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def request_latencies(traffic: dict[str, VariantTraffic], variants: tuple[str, ...] = (PRODUCTION, CANARY)
                      ) -> RequestLatencies:
    """The latencies of the requests `variants` answered (default: those users waited for; a shadow forecasts
    after the response), per request (pipeline.release.RequestLatencies: each event weighs 1 / its batch size).
    Percentiles over events weighted a request by its batch size: one slow batch of 200 outweighed 199 quick
    one-row requests. A request a canary shared counts in proportion to each part."""
    latencies = RequestLatencies()
    for variant in variants:
        if variant in traffic:
            latencies.extend(traffic[variant].latency)
    return latencies


def variant_statistics(events: list[dict[str, Any]],
                       traffic: dict[str, VariantTraffic] | None = None) -> list[dict[str, Any]]:
    """Per release variant (production, canary, shadow) with traffic: requests, predictions, errors, latency per
    request, forecast.

    Counted by the release decision's own reader (pipeline.release.read_traffic, or its `traffic` of these
    events), but with the release's smoke answers included: decide leaves those out by the nonce that signs them,
    a secret of the release commands (pipeline/release_smoke.py, a 0600 file) that the network-facing app is not
    given, and an id's prefix alone can be forged. Errors are known for the
    canary only (its failed attempts, which production answered, are logged with ``canary_failed``); a failed
    production request or shadow forecast writes no prediction event, so theirs are None."""
    traffic = read_traffic(events) if traffic is None else traffic
    rows = []
    for variant in VARIANTS:
        seen = traffic.get(variant)
        if seen is None:
            continue
        latencies = seen.latency
        units = np.asarray([u for forecasts in seen.by_series.values() for u in forecasts], float)
        rows.append({"variant": variant, "requests": latencies.requests if latencies.ms else None,
                     "predictions": seen.predictions, "errors": seen.errors if variant == CANARY else None,
                     "latency_ms": {"p50": latencies.percentile(50), "p95": latencies.percentile(95)},
                     "forecast_mean": float(units.mean()) if units.size else None})
    return rows


def recent_statistics(path: Path | str, max_events: int = 5000) -> dict[str, Any]:
    """The last `max_events` prediction events of the log, read by the reader `pipeline.release decide` and drift
    use (other senders' records skipped, a torn last line skipped). A line that cannot be an event (not UTF-8,
    not JSON, not a JSON object) is skipped and counted here (`unreadable_lines`, and by why in `unreadable`)
    where those stop with an error naming it: one bad line must not hide the statistics of every other event.
    `error` says why a log that is there cannot be read at all."""
    events: list[dict[str, Any]] = []
    error, unreadable = None, {}
    if Path(path).exists():
        try:
            logged = read_jsonl_events(path, max_events, skip_unreadable=True)
            events, unreadable = logged.events, logged.unreadable
        except EventSourceError as exc:
            error = str(exc)
    traffic = read_traffic(events)
    latencies = request_latencies(traffic)
    # what users asked and were served: a shadow forecasts a copy of every request after the response, never
    # returned (its own figures are in `variants`); counted in, a shadow at 100x moved the forecast mean 50x
    served = [e for e in events if e.get("model_variant") != SHADOW]
    units = np.asarray([u for u in map(event_units, served) if u is not None], float)
    promo = [bool(e["inputs"].get("onpromotion")) for e in served if isinstance(e.get("inputs"), dict)]
    versions: dict[str, int] = {}
    sources: dict[str, int] = {}
    for event in events:
        version = str(event.get("model_version", "unknown"))
        versions[version] = versions.get(version, 0) + 1
    for event in served:
        source = str(event.get("source", "unknown"))
        sources[source] = sources.get(source, 0) + 1
    stamps = sorted(str(e["timestamp"]) for e in events if e.get("timestamp"))
    return {
        "log": os.fspath(path), "events": len(events), "error": error,
        "unreadable_lines": sum(unreadable.values()), "unreadable": unreadable,
        "first": stamps[0] if stamps else None, "last": stamps[-1] if stamps else None,
        "latency_ms": {"p50": latencies.percentile(50), "p95": latencies.percentile(95),
                       "p99": latencies.percentile(99), "requests": latencies.requests},  # see request_latencies
        "forecast_units": {"mean": float(units.mean()) if units.size else None, "p50": _pct(units, 50),
                           "p95": _pct(units, 95)},
        "promotion_share": (sum(promo) / len(promo)) if promo else None,
        # served 0 by the closed-day rule (pipeline/closed_days.py): in the figures above, out of drift's and release
        # decide's forecast comparisons, so the page says how many there were (a Christmas dip in the mean)
        "closed_day_answers": sum(map(is_closed_day, served)),
        "model_versions": versions, "sources": sources, "variants": variant_statistics(events, traffic),
    }


class StatisticsCache:
    """`recent_statistics` of one log, computed at most once per ``ttl_s`` in this process while the log keeps
    changing, and not again while it does not: after ``ttl_s`` the log's identity (inode, size, mtime_ns) is
    compared with the one the statistics were read at. So a client that asks in a loop costs a stat() per
    call and one read of the log per ``ttl_s``, and the figures shown are at most ``ttl_s`` old."""

    def __init__(self, ttl_s: float = STATISTICS_TTL_S):
        self.ttl_s = ttl_s
        self._lock = threading.Lock()  # one reader at a time: concurrent callers wait for it, not read again
        self._entry: tuple[str, tuple[int, int, int] | None, float, dict[str, Any]] | None = None

    def get(self, path: Path | str) -> dict[str, Any]:
        name = os.fspath(path)
        with self._lock:
            now = time.monotonic()
            identity = _identity(name)
            if self._entry is not None:
                cached_name, cached_identity, read_at, statistics = self._entry
                unchanged = identity is not None and identity == cached_identity
                if cached_name == name and (now - read_at < self.ttl_s or unchanged):
                    return statistics
            statistics = recent_statistics(name)
            self._entry = (name, identity, now, statistics)
            return statistics


def _identity(path: str) -> tuple[int, int, int, int] | None:
    """Which version of the log this is: a rotated, rewritten or appended log has another (ctime too: a copy
    keeping the size and mtime, `cp -p`, or a file made again on a reused inode, still changes it). None when it
    cannot tell (no such file, or a folder of logs): then the statistics are read again once ``ttl_s`` has passed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns) if S_ISREG(stat.st_mode) else None
