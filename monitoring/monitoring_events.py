"""One-shot monitoring events (model quality, drift summaries) through the shared event delivery.

The prediction sink (app/events.py) is built for a stream of request events; the
pipeline sends one event now and then, so it uses the shared pieces (eventlog/) directly:
the same record preparation (ids, timestamp, plain JSON) and fluent-logger's sender, with
a tag of its own. With FLUENTD_HOST unset, or when the sender reports the connection
failed, the event is appended to a local JSON-lines log (logs/monitoring.jsonl) instead,
and the caller is told where it went.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from eventlog.forward import FluentdAddress, emit_record
from eventlog.local_log import JsonLinesLog
from eventlog.records import encode_line, prepare_event

log = logging.getLogger(__name__)
DEFAULT_LOG = Path("logs/monitoring.jsonl")
ENV_MONITORING_LOG = "SHELFCAST_MONITORING_LOG"


def emit_monitoring_event(tag: str, event: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str:
    """Send `event` with `tag`; returns where it went ("fluentd host:port" or the log path)."""
    env = os.environ if environ is None else environ
    record = prepare_event(event)
    address = FluentdAddress.from_environment(env)
    if address is not None:
        sender = address.sender(tag)
        try:
            if emit_record(sender, record):
                return f"fluentd {address.host}:{address.port}"
            log.warning("%s: %s; writing the %s event to the local log instead", address, sender.last_error, tag)
        finally:
            sender.close()
    path = Path(env.get(ENV_MONITORING_LOG, "").strip() or DEFAULT_LOG)
    lines = JsonLinesLog(path)
    try:
        lines.append(encode_line({"tag": tag, **record}))
    finally:
        lines.close()
    return str(path)
