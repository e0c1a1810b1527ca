"""Where logged prediction events are read back from: local JSON lines, or Elasticsearch's REST API.

Local: the app's default log (logs/predictions.jsonl), any JSON-lines file, or a
directory searched for *.jsonl (the spool's segment files). Elasticsearch (or
OpenSearch): the daily indices Fluentd writes, paged with `search_after`
over urllib, so no client library is needed. Two readers use it: the release
decision (pipeline/release.py, so `make deploy` can judge a compose stack) and
monitoring's drift report; it lives in pipeline because monitoring may import
pipeline, never the other way round.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any, Iterator

DEFAULT_INDEX_PATTERN = "shelfcast-prediction-*"
PAGE_SIZE = 1000


class EventSourceError(RuntimeError):
    """Events could not be read; the message names the file, line or URL."""


def jsonl_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.jsonl") if p.is_file())
    raise EventSourceError(f"{path}: no such file or directory (prediction events are logged to "
                           "logs/predictions.jsonl by default; serve some predictions first)")


def read_jsonl_events(path: Path | str, max_events: int) -> list[dict[str, Any]]:
    """The last `max_events` events of the JSON-lines file(s) at `path`, oldest first.

    A torn last line (a writer that crashed mid-line) is skipped; any other unreadable
    line is an error naming the file and line, because it means the log is not ours.
    """
    kept: deque[dict[str, Any]] = deque(maxlen=max_events)
    for file in jsonl_files(Path(path)):
        with open(file, "rb") as handle:
            lines = handle.readlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            torn = number == len(lines) and not line.endswith(b"\n")
            try:
                record = json.loads(line)
            except ValueError as exc:
                if torn:
                    continue
                raise EventSourceError(f"{file}: line {number}: not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise EventSourceError(f"{file}: line {number}: expected a JSON object, got {type(record).__name__}")
            kept.append(record)
    return sorted(kept, key=lambda r: str(r.get("timestamp", "")))


class ElasticsearchEvents:
    """Reads events from an Elasticsearch/OpenSearch cluster over plain HTTP(S)."""

    def __init__(self, url: str, index: str = DEFAULT_INDEX_PATTERN, timeout_s: float = 30.0,
                 username: str | None = None, password: str | None = None):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise EventSourceError(f"--elasticsearch: expected an http(s):// URL, got {url!r}")
        self.url = url.rstrip("/")
        self.index = index
        self.timeout_s = timeout_s
        self._auth = None
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self._auth = f"Basic {token}"

    @classmethod
    def from_environment(cls, url: str, index: str = DEFAULT_INDEX_PATTERN) -> "ElasticsearchEvents":
        """With the credentials in $ELASTICSEARCH_USERNAME / $ELASTICSEARCH_PASSWORD, when set."""
        return cls(url, index, username=os.environ.get("ELASTICSEARCH_USERNAME"),
                   password=os.environ.get("ELASTICSEARCH_PASSWORD"))

    def request(self, method: str, path: str, body: Any = None, ndjson: str | None = None) -> Any:
        data, content_type = None, "application/json"
        if ndjson is not None:
            data, content_type = ndjson.encode("utf-8"), "application/x-ndjson"
        elif body is not None:
            data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self._auth:
            headers["Authorization"] = self._auth
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise EventSourceError(f"{method} {self.url}{path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise EventSourceError(f"{method} {self.url}{path}: {getattr(exc, 'reason', exc)}") from None
        try:
            return json.loads(text) if text else {}
        except ValueError:
            raise EventSourceError(f"{method} {self.url}{path}: the answer is not JSON: {text[:200]!r}") from None

    def events(self, max_events: int, since: str | None = None) -> list[dict[str, Any]]:
        """The most recent `max_events` events (newest pages first, returned oldest first)."""
        found: list[dict[str, Any]] = []
        for source in self._pages(max_events, since):
            found.append(source)
        found.reverse()
        return found

    def _pages(self, max_events: int, since: str | None) -> Iterator[dict[str, Any]]:
        query: dict[str, Any] = {"match_all": {}}
        if since:
            query = {"range": {"timestamp": {"gte": since}}}
        search_after = None
        remaining = max_events
        path = f"/{urllib.parse.quote(self.index, safe='*,-_.')}/_search?ignore_unavailable=true&allow_no_indices=true"
        while remaining > 0:
            body: dict[str, Any] = {"size": min(PAGE_SIZE, remaining), "query": query,
                                    "sort": [{"timestamp": "desc"}, {"event_id": "desc"}]}
            if search_after is not None:
                body["search_after"] = search_after
            answer = self.request("POST", path, body)
            hits = answer.get("hits", {}).get("hits", [])
            if not hits:
                return
            for hit in hits:
                yield hit.get("_source", {})
            remaining -= len(hits)
            search_after = hits[-1].get("sort")
            if search_after is None:
                raise EventSourceError(f"{self.url}: search hits carry no sort values; cannot page")
