"""Where logged prediction events are read back from: local JSON lines, or Elasticsearch's REST API.

Local: the app's default log (logs/predictions.jsonl), any JSON-lines file, or a
directory's *.jsonl files (not its subdirectories: under logs/ those are the spool of
events still on their way to Fluentd, and the drift reports). Records another sender
wrote there (monitoring's own events in logs/monitoring.jsonl, tagged `shelfcast.drift`
or `shelfcast.metrics`; a Fluentd file output's other tags) are skipped and counted.
A file is read from its end, so the cost follows the events asked for, not the log's size; with a `since`,
every line is looked at (no order is assumed), those older than it by their timestamp alone.
Elasticsearch (or OpenSearch): the daily indices Fluentd writes, paged with `search_after`
over urllib, so no client library is needed. Two readers use it: the release
decision (pipeline/release.py, so `make deploy` can judge a compose stack) and
monitoring's drift report; it lives in pipeline because monitoring may import
pipeline, never the other way round.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

from pipeline.url_credentials import basic_authorization, refused_url_shown, split_credentials

DEFAULT_INDEX_PATTERN = "shelfcast-prediction-*"
ENV_PREDICTION_LOG = "SHELFCAST_PREDICTION_LOG"  # where the app writes its events without Fluentd, and readers look
DEFAULT_PREDICTION_LOG = Path("logs/predictions.jsonl")


def prediction_log(environ=None) -> Path:
    """The app's local event log: ``$SHELFCAST_PREDICTION_LOG`` (empty: unset), else logs/predictions.jsonl. The app
    writes it, and `make drift`, /monitoring and `release decide` read it by this one rule."""
    value = (os.environ if environ is None else environ).get(ENV_PREDICTION_LOG, "").strip()
    return Path(value) if value else DEFAULT_PREDICTION_LOG
PAGE_SIZE = 1000
PREDICTION_TAG = "shelfcast.prediction"  # app/events.py TAG: the Fluentd tag of prediction events
READ_BLOCK = 1 << 20  # bytes read at a time, from a file's end backwards
# No line order is assumed: a clock stepped back, a caller-given `timestamp`, or events re-sent after an outage
# (a Fluentd file output) put older times after newer ones, and a reading back to a `since` that stopped at the
# first older line hid the window's earlier-written events. So a read with `since` goes through every line, and
# one that opens with plain string fields up to its only `"timestamp"` (as the app writes) is placed by that
# field alone, without parsing it: a line older than the window costs about a microsecond.
# A block's lines are placed at once where each has one `"timestamp"`, in the app's UTC form (fixed width, so the
# texts compare as the times): a block older than the window costs no Python-level work per line.
_PLAIN_FIELDS = rb'(?:"[^"\\\n]*"[ \t]*:[ \t]*"[^"\\\n]*"[ \t]*,[ \t]*)*?'
APP_TIMESTAMPS = re.compile(rb'\n[ \t]*\{[ \t]*' + _PLAIN_FIELDS + rb'"timestamp"[ \t]*:[ \t]*'
                            rb'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00)"')
LEADING_TIMESTAMP = re.compile(rb'\s*\{\s*(?:"[^"\\]*"\s*:\s*"[^"\\]*"\s*,\s*)*?"timestamp"\s*:\s*"([^"\\]*)"')
UNDATED = dt.datetime.min.replace(tzinfo=dt.timezone.utc)  # where an event without a readable time sorts


class EventSourceError(RuntimeError):
    """Events could not be read; the message names the file, line or URL (``status``: the HTTP status, if one)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


REQUEST_TIMEOUT_S = 30.0  # how long drift and release wait for one answer of the cluster (setup: its own setting)
CREDENTIALS_REFUSED = (401, 403)  # no retry makes these pass: the credentials must change


def environment_credentials() -> tuple[str | None, str | None]:
    """($ELASTICSEARCH_USERNAME, $ELASTICSEARCH_PASSWORD), None where unset or empty (Kibana takes the same users)."""
    return os.environ.get("ELASTICSEARCH_USERNAME") or None, os.environ.get("ELASTICSEARCH_PASSWORD") or None


def cluster_login(url: str, username: str | None = None,
                  password: str | None = None) -> tuple[str, str | None, str | None]:
    """(``url`` without its user and password, the user to send, the password to send): the one rule for a cluster
    URL and the login given beside it (drift, release and setup give the environment's, ``environment_credentials``;
    setup's Kibana URL too). The user given, else the URL's; the password given, else the URL's when the URL's user
    is the one sent (given by the URL, or the same name given beside it). So ``http://shelfcast@host:9200`` with
    ELASTICSEARCH_PASSWORD logs in as shelfcast with it (before, the password was dropped and the cluster refused a
    user without one), as does ``http://shelfcast:pw@host:9200`` with ELASTICSEARCH_USERNAME=shelfcast alone."""
    bare, url_username, url_password = split_credentials(url)
    sent = url_username if username is None else username
    if password is None and sent == url_username:  # the URL's own user, whichever way named: with its password
        password = url_password
    return bare, sent, password


def parse_time(text: str) -> dt.datetime:
    """An ISO-8601 time as an aware datetime; one without an offset is taken as UTC (as the app stamps)."""
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.timezone.utc)


def event_time(event: dict[str, Any]) -> dt.datetime | None:
    """The event's `timestamp` as an aware datetime; None when it has none that reads as ISO-8601."""
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return parse_time(stamp)
    except ValueError:
        return None


def finite_number(value: Any) -> float | None:
    """A finite number, or None (missing, text, a bool, NaN: not a figure a statistic or a rule can use)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def event_units(event: dict[str, Any]) -> float | None:
    """The forecast an event carries (`output.unit_sales`, or a bare-number `output`), when it is a finite number."""
    output = event.get("output")
    return finite_number(output.get("unit_sales") if isinstance(output, dict) else output)


def is_closed_day(event: dict[str, Any]) -> bool:
    """Whether the app answered this event 0 units as a day its store is closed (``output.store_closed``,
    pipeline/closed_days.py): the closed-day rule's answer, not the model's forecast, which drift and the release
    decision leave out of their forecast comparisons and live accuracy."""
    output = event.get("output")
    return isinstance(output, dict) and output.get("store_closed") is True


def other_sender(record: dict[str, Any]) -> str | None:
    """What a record that is not a prediction event is (its tag, or its monitoring `kind`); None for one that is.

    The app's local log carries no tag; Fluentd's outputs keep it when include_tag_key is set; monitoring's
    one-shot events (monitoring/monitoring_events.py) carry both a tag and a `kind`.
    """
    tag = record.get("tag")
    if tag is not None:
        return None if tag == PREDICTION_TAG else str(tag)
    return None if "kind" not in record else f"kind {record['kind']}"


def jsonl_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.glob("*.jsonl") if p.is_file())
    where = (f"{prediction_log()} (${ENV_PREDICTION_LOG})" if prediction_log() != DEFAULT_PREDICTION_LOG
             else f"{DEFAULT_PREDICTION_LOG} unless ${ENV_PREDICTION_LOG} moves it")
    raise EventSourceError(f"{path}: no such file or directory (the app logs prediction events to {where}; serve "
                           "some predictions first)")


# Why a line of a log cannot be an event (read_jsonl_events: an error naming the line, or skipped and counted)
UNREADABLE_NOT_UTF8, UNREADABLE_NOT_JSON, UNREADABLE_NOT_OBJECT = "not UTF-8 text", "not JSON", "not a JSON object"
UNREADABLE_READ_MIN = 10_000  # unreadable lines a skipping read goes through at least (max_events, if more)


@dataclass
class JsonlEvents:
    """Prediction events read from JSON-lines files (oldest first), and the other records met on the way."""

    events: list[dict[str, Any]] = field(default_factory=list)
    not_predictions: dict[str, int] = field(default_factory=dict)  # tag (or kind) -> records skipped
    unreadable: dict[str, int] = field(default_factory=dict)  # why (UNREADABLE_*) -> lines skipped (skip_unreadable)

    @property
    def unreadable_lines(self) -> int:
        return sum(self.unreadable.values())


def _lines_from_end(handle: BinaryIO, older: Callable[[bytes, int, int], list[bool] | None] | None = None,
                    floor: int = 0) -> Iterator[tuple[int, bytes, bool, bool | None]]:
    """(index from the last line, 0 = last; the line without its newline; whether it lacks one; whether it is older
    than the window, None: not known), last first.

    `older(data, start, count)`, if given, is asked about each block's whole lines but the file's last block's: the
    `count` lines of `data` from `start` on, each after a newline; it answers for each, in order, or None (not
    known). A block of lines all older is left out (its lines counted, for the line numbers of errors). The bytes
    before `floor` (a line's start) are not read."""
    position = handle.seek(0, os.SEEK_END)
    partial, from_end, at_end = b"", 0, True
    while position > floor:
        step = min(READ_BLOCK, position - floor)
        position -= step
        handle.seek(position)
        data = handle.read(step) + partial
        known: list[bool] | None = None
        if older is not None and not at_end:
            first = data.find(b"\n")  # the block's whole lines follow, each after a newline
            count = 0 if first < 0 else data.count(b"\n", first)
            known = older(data, first, count) if count else None
            if known is not None and all(known):
                partial, from_end = data[:first], from_end + count
                continue
        lines = data.split(b"\n")
        partial = lines[0]
        for index in range(len(lines) - 1, 0, -1):
            line = lines[index]
            unterminated, at_end = at_end, False
            if unterminated and not line:  # the file ends with a newline: nothing after it
                continue
            yield from_end, line, unterminated, None if known is None else known[index - 1]
            from_end += 1
    if partial or not at_end:
        yield from_end, partial, at_end, None


def _line_number(handle: BinaryIO, from_end: int) -> int:
    """The 1-based number of the line `from_end` lines before the last (an error's location; reads the file)."""
    handle.seek(0)
    newlines, last = 0, b"\n"
    for block in iter(lambda: handle.read(READ_BLOCK), b""):
        newlines, last = newlines + block.count(b"\n"), block[-1:]
    return newlines + (last != b"\n") - from_end


def _older_lines(data: bytes, start: int, count: int, since: bytes) -> list[bool] | None:
    """For each of the `count` lines of `data` from `start` on (each after a newline), whether it is older than `since`
    (the app's UTC form) by its timestamp alone; None unless each opens with plain string fields up to its only
    `"timestamp"`, in the app's UTC form (APP_TIMESTAMPS), so that the text of the times compares as the times."""
    stamps = APP_TIMESTAMPS.findall(data, start)
    if len(stamps) != count or data.count(b'"timestamp"', start) != count:
        return None
    return [stamp < since for stamp in stamps]


def _line_time(line: bytes) -> dt.datetime | None:
    """The line's top-level `timestamp` read without parsing the line (LEADING_TIMESTAMP); None where that cannot be
    told so (another layout, a second `"timestamp"` anywhere in it, a time that does not read): parse it then."""
    match = LEADING_TIMESTAMP.match(line)
    if match is None or line.count(b'"timestamp"') != 1:
        return None
    try:
        return parse_time(match.group(1).decode("ascii"))
    except ValueError:  # UnicodeDecodeError too
        return None


MARK_BYTES = 256  # a mark keeps the last bytes before it: a log truncated and grown past it since does not match


def log_marks(path: Path | str) -> dict[Path, tuple[int, bytes]]:
    """Where each file of the log at `path` ends now, and its last MARK_BYTES: where a reader that began now
    starts (`read_jsonl_events`'s `start_offsets`)."""
    marks: dict[Path, tuple[int, bytes]] = {}
    try:
        files = jsonl_files(Path(path))
    except EventSourceError:  # no log yet: the one made later is read whole
        return marks
    for file in files:
        try:
            with open(file, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - MARK_BYTES))
                marks[file] = (size, handle.read(MARK_BYTES))
        except OSError:  # gone since it was listed: a new one is read whole
            pass
    return marks


def _floor(handle: BinaryIO, mark: tuple[int, bytes] | None) -> int:
    """The offset a mark leaves out of `handle`'s file, 0 unless the bytes before it are still the marked ones."""
    if mark is None:
        return 0
    size, tail = mark
    handle.seek(max(0, size - len(tail)))
    return size if handle.read(len(tail)) == tail else 0  # else truncated (logrotate's copytruncate), rewritten


def read_jsonl_events(path: Path | str, max_events: int, since: dt.datetime | None = None, *,
                      skip_unreadable: bool = False,
                      start_offsets: Mapping[Path, tuple[int, bytes]] | None = None) -> JsonlEvents:
    """The last `max_events` prediction events of the JSON-lines file(s) at `path` (at or after `since`), oldest first.

    The files, in name order (the app's log is one; Fluentd's file output and spool segments are named by
    time), are read as one log from its end backwards; reading stops once `max_events` are kept (the last
    written, whatever their times), so memory follows what is kept. With `since`, no order of the lines is
    assumed (see LEADING_TIMESTAMP): every line is looked at, and one older than `since` is skipped after
    reading its timestamp only (`_line_time`), never parsed, so time follows the log's size at about a
    microsecond a line older than the window. Records of other senders (`other_sender`) are skipped and
    counted. With `since`, an event without a readable timestamp is kept (it cannot be placed).
    A torn last line (a writer that crashed mid-line) is skipped; any other unreadable line (not UTF-8, not
    JSON, or a JSON value that is not an object) is an error naming the file and line, because it means the log
    is not ours -- or, with `skip_unreadable` (a reader that shows what it can: the /monitoring page), skipped
    and counted by why in `unreadable`, not counting towards `max_events`; the read stops at max(`max_events`,
    UNREADABLE_READ_MIN) such lines as well (300,000 lines of junk after the events took 1.4 s a read).
    `start_offsets` (`log_marks` when a reader began: the release's canary poll, every second) leaves out each
    file's bytes written before then, so a poll costs what was appended since, not the whole log; a file whose
    bytes before its mark changed (truncated by logrotate's copytruncate, and maybe grown again) is read whole.
    """
    kept: list[tuple[dt.datetime, int, dict[str, Any]]] = []  # (time, place in the log counted from its end)
    skipped: Counter[str] = Counter()
    unreadable: Counter[str] = Counter()
    names: dict[str, str] = {}

    def shared_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # every event repeats the same ~80 field names: one copy of each halves a kept event's memory
        return {names.setdefault(name, name): value for name, value in pairs}

    junk_budget = max(max_events, UNREADABLE_READ_MIN)
    older = None
    if since is not None:
        since_text = since.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").encode("ascii")
        older = functools.partial(_older_lines, since=since_text)

    def done() -> bool:  # unreadable lines are bounded too: junk must not make a read unbounded
        return len(kept) >= max_events or unreadable.total() >= junk_budget

    for file in reversed(jsonl_files(Path(path))):
        if done():
            break
        try:
            handle = open(file, "rb")
        except OSError as exc:
            raise EventSourceError(f"{file}: cannot be read ({exc.strerror or exc})") from None
        with handle:
            floor = _floor(handle, (start_offsets or {}).get(file))
            for from_end, line, unterminated, is_older in _lines_from_end(handle, older, floor):
                if done():
                    break
                if is_older or not line.strip():
                    continue
                if since is not None and is_older is None:  # older by its timestamp alone: not parsed, not counted
                    moment = _line_time(line)
                    if moment is not None and moment < since:
                        continue
                try:  # UTF-8, as the app writes: json.loads(bytes) would guess UTF-16/32 for binary junk
                    record = json.loads(line.decode("utf-8"), object_pairs_hook=shared_names)
                except ValueError as exc:
                    if unterminated:
                        continue
                    what = UNREADABLE_NOT_UTF8 if isinstance(exc, UnicodeDecodeError) else UNREADABLE_NOT_JSON
                    if skip_unreadable:
                        unreadable[what] += 1
                        continue
                    raise EventSourceError(f"{file}: line {_line_number(handle, from_end)}: {what} ({exc})") from None
                if not isinstance(record, dict):
                    if skip_unreadable:
                        unreadable[UNREADABLE_NOT_OBJECT] += 1
                        continue
                    raise EventSourceError(f"{file}: line {_line_number(handle, from_end)}: expected a JSON object, "
                                           f"got {type(record).__name__}")
                moment = event_time(record)  # before the sender: another sender's records outside the window
                if since is not None and moment is not None and moment < since:  # are neither counted nor kept
                    continue
                sender = other_sender(record)
                if sender is not None:
                    skipped[sender] += 1
                    continue
                kept.append((moment or UNDATED, -len(kept), record))
    kept.sort(key=lambda entry: entry[:2])
    return JsonlEvents(events=[entry[2] for entry in kept], not_predictions=dict(skipped),
                       unreadable=dict(unreadable))


def _since_filter(since: str | None) -> list[dict[str, Any]]:
    return [{"range": {"timestamp": {"gte": since}}}] if since else []


def _host_query(host: str | None) -> dict[str, Any]:
    """With ``host``, the events naming that serving host or none (an app from before the field): filtered by the
    search, so other hosts' events sharing the indices do not crowd this host's out of the most recent ones read."""
    if host is None:
        return {}
    return {"should": [{"term": {"serving_host": host}},
                       {"bool": {"must_not": [{"exists": {"field": "serving_host"}}]}}],
            "minimum_should_match": 1}


class ElasticsearchEvents:
    """Reads events from an Elasticsearch/OpenSearch cluster over plain HTTP(S). A user and password in the URL
    (``https://user:password@host:9200``) are its login where none is given, part by part (``cluster_login``), and
    ``url`` is kept without them, so no message names them: before, urllib took ``user:password@host`` for the host
    name, and the error line showed the password."""

    def __init__(self, url: str, index: str = DEFAULT_INDEX_PATTERN, timeout_s: float = REQUEST_TIMEOUT_S,
                 username: str | None = None, password: str | None = None):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise EventSourceError(f"--elasticsearch: expected an http(s):// URL, got {refused_url_shown(url)!r}")
        try:
            parsed.port  # checked here: a first request raised http.client.InvalidURL, a traceback
        except ValueError:
            raise EventSourceError(f"--elasticsearch: the URL's port is not a number from 0 to 65535: "
                                   f"{refused_url_shown(url)!r}") from None
        if parsed.query or parsed.fragment:  # not echoed: a token may be what it holds
            raise EventSourceError("--elasticsearch: the URL has a query or fragment (?… #…), which no request "
                                   "here sends: give the login as ELASTICSEARCH_USERNAME/ELASTICSEARCH_PASSWORD or "
                                   "as https://user:password@host")
        url, username, password = cluster_login(url, username, password)
        self.url = url.rstrip("/")
        self.index = index
        self.timeout_s = timeout_s
        self._authorization = basic_authorization(username, password)
        self.login_sent = username is not None

    @classmethod
    def from_environment(cls, url: str, index: str = DEFAULT_INDEX_PATTERN,
                         timeout_s: float = REQUEST_TIMEOUT_S) -> "ElasticsearchEvents":
        """With the credentials in $ELASTICSEARCH_USERNAME / $ELASTICSEARCH_PASSWORD, when set."""
        username, password = environment_credentials()
        return cls(url, index, timeout_s, username=username, password=password)

    def request(self, method: str, path: str, body: Any = None, ndjson: str | None = None) -> Any:
        data, content_type = None, "application/json"
        if ndjson is not None:
            data, content_type = ndjson.encode("utf-8"), "application/x-ndjson"
        elif body is not None:
            data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": content_type, "Accept": "application/json", **self._authorization}
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise EventSourceError(f"{method} {self.url}{path}: HTTP {exc.code}: {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise EventSourceError(f"{method} {self.url}{path}: {getattr(exc, 'reason', exc)}") from None
        try:
            return json.loads(text) if text else {}
        except ValueError:
            raise EventSourceError(f"{method} {self.url}{path}: the answer is not JSON: {text[:200]!r}") from None

    def events(self, max_events: int, since: str | None = None, host: str | None = None) -> list[dict[str, Any]]:
        """The most recent `max_events` events (newest pages first, returned oldest first); with `host`, only those
        naming that serving host or none (_host_query)."""
        found: list[dict[str, Any]] = []
        for source in self._pages(max_events, since, host):
            found.append(source)
        found.reverse()
        return found

    def prediction_events(self, max_events: int, since: str | None = None, host: str | None = None) -> JsonlEvents:
        """`events`, with other senders' records (`other_sender`) skipped and counted as read_jsonl_events does: an
        index pattern that also matches monitoring's indices (shelfcast-*) returns drift's and metrics' own records,
        Fluentd's tag kept (they name the model, so drift judged them and stopped at `features: expected ...`)."""
        read = self.events(max_events, since, host)
        senders = [other_sender(record) for record in read]
        return JsonlEvents(events=[record for record, sender in zip(read, senders) if sender is None],
                           not_predictions=dict(Counter(sender for sender in senders if sender is not None)))

    def other_hosts_events(self, since: str | None, host: str) -> dict[str, int]:
        """Per model_variant, how many events since `since` name a serving host other than `host`: counted by the
        search, never read, so another host's traffic takes none of a decision's `max_events`."""
        query = {"bool": {"filter": [{"exists": {"field": "serving_host"}}, *_since_filter(since)],
                          "must_not": [{"term": {"serving_host": host}}]}}
        answer = self.request("POST", self._search_path(), {
            "size": 0, "query": query, "aggs": {"variant": {"terms": {"field": "model_variant", "size": 100}}}})
        buckets = answer.get("aggregations", {}).get("variant", {}).get("buckets", [])
        return {str(bucket.get("key")): int(bucket.get("doc_count", 0)) for bucket in buckets}

    def _search_path(self) -> str:
        return f"/{urllib.parse.quote(self.index, safe='*,-_.')}/_search?ignore_unavailable=true&allow_no_indices=true"

    def _pages(self, max_events: int, since: str | None, host: str | None = None) -> Iterator[dict[str, Any]]:
        query: dict[str, Any] = {"bool": {"filter": _since_filter(since), **_host_query(host)}}
        search_after = None
        remaining = max_events
        path = self._search_path()
        while remaining > 0:
            body: dict[str, Any] = {"size": min(PAGE_SIZE, remaining), "query": query,
                                    "sort": [{"timestamp": "desc"}, {"event_id": "desc"}]}
            if search_after is not None:
                body["search_after"] = search_after
            try:
                answer = self.request("POST", path, body)
            except EventSourceError as exc:  # an index made before the template: timestamp or event_id mapped as text
                if exc.status == 400 and "Text fields" in str(exc):
                    raise EventSourceError(f"{self.url}: an index of {self.index} maps timestamp or event_id as text, "
                                           "not as its index template does (it was made before the template): run "
                                           "`python -m monitoring.setup_stack --reindex` (README: Monitoring)",
                                           400) from None
                raise
            hits = answer.get("hits", {}).get("hits", [])
            if not hits:
                return
            for hit in hits:
                yield hit.get("_source", {})
            remaining -= len(hits)
            search_after = hits[-1].get("sort")
            if search_after is None:
                raise EventSourceError(f"{self.url}: search hits carry no sort values; cannot page")
