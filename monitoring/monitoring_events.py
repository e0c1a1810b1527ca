"""One-shot monitoring events (model quality, drift summaries) through the app's Fluentd transport.

The prediction sink (app/events.py) is built for a stream of request events; the
pipeline sends one event now and then, so it uses the same pieces directly: the
same record preparation (ids, timestamp, plain JSON) and the same acknowledged
forward-protocol sender, with a tag of its own. With FLUENTD_HOST unset, or when
Fluentd does not acknowledge, the event is appended to a local JSON-lines log
(logs/monitoring.jsonl) instead: never lost, and the caller is told where it went.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from app.events import AcknowledgedFluentSender, FluentDeliveryError, SinkSettings, encode_line, prepare_event
from app.spool import AppendOnlyLines

log = logging.getLogger(__name__)
DEFAULT_LOG = Path("logs/monitoring.jsonl")
ENV_MONITORING_LOG = "SHELFCAST_MONITORING_LOG"


def emit_monitoring_event(tag: str, event: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str:
    """Send `event` with `tag`; returns where it went ("fluentd host:port" or the log path)."""
    env = os.environ if environ is None else environ
    record = prepare_event(event)
    settings = SinkSettings.from_environment(env)
    if settings.fluentd_host:
        sender = AcknowledgedFluentSender(tag, host=settings.fluentd_host, port=settings.fluentd_port,
                                          timeout=settings.fluentd_timeout_s)
        try:
            sender.send_batch([record])
            return f"fluentd {settings.fluentd_host}:{settings.fluentd_port}"
        except FluentDeliveryError as exc:
            log.warning("%s; writing the %s event to the local log instead", exc, tag)
        finally:
            sender.close()
    path = Path(env.get(ENV_MONITORING_LOG, "").strip() or DEFAULT_LOG)
    lines = AppendOnlyLines(path)
    try:
        lines.append(encode_line({"tag": tag, **record}))
    finally:
        lines.close()
    return str(path)
