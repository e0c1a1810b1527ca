"""One-shot setup of the monitoring stack: index templates into Elasticsearch, saved objects into Kibana.

    python -m monitoring.setup_stack [--elasticsearch URL] [--kibana URL] [--wait-s 300] [--request-timeout-s 60]
                                     [--reindex [--progress-s 5] [--stall-s 300]]

Waits until each service answers healthy, then installs; re-running replaces the
templates and overwrites the saved objects (idempotent). A template applies only to indices created after it:
an index that already exists (events indexed before setup, or a template changed by an upgrade) gets the fields
it lacks added and its documents indexed again for them (a task followed with progress lines: monitoring/index_again.py;
exit 1 unless all were; the fields recorded in its _meta until an update has run, so a run stopped first is
completed by the next), and each of its fields mapped otherwise (e.g. `family` as text, `store` as a number) is named;
--reindex copies such an index into <index>-remapped with the template's mappings (a task on the cluster, followed
with progress lines: monitoring/index_copy.py) and deletes it once the copy counts as many documents, its name
made an alias of the copy (events sent again overwrite their copied documents) (run it with
Fluentd stopped: writes to the index are blocked while it is copied; exit 1 if an index is still unmatched); an
index that refuses a change (read-only) is named and setup goes on; so is one whose own name no template pattern
matches, reached through an alias (someone else's index: left as it is). Every request waits --request-timeout-s for its
answer (a big or starting cluster's may take longer than the 30 s it once had); a busy answer to a template's install
or the mappings' read is asked again for up to --wait-s. docker-compose runs it as
the `setup` service; without Docker, point it at any Elasticsearch/OpenSearch + Kibana.
A secured cluster's user: $ELASTICSEARCH_USERNAME / $ELASTICSEARCH_PASSWORD (both services), else each URL's own,
part by part, as drift and release read them (event_sources.cluster_login); credentials refused end the wait at once.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, TypeVar

from pipeline.event_sources import (CREDENTIALS_REFUSED, ElasticsearchEvents, EventSourceError, basic_authorization,
                                    cluster_login, environment_credentials)
from monitoring.cluster_task import BUSY_ANSWERS, REFUSED_TASK_READS, TaskPace
from monitoring.index_again import index_again
from monitoring.index_copy import copy_index
from pipeline.stage import (OUTCOME, CommandParser, output_any_terminal_can_take, run_interruptible,
                            second_signal_leaves, settled)

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE / "elasticsearch"
SAVED_OBJECTS = HERE / "kibana" / "shelfcast.ndjson"
TEMPLATE_SUFFIX = ".index-template.json"
SETUP_REQUEST_TIMEOUT_S = 60.0  # how long setup waits for one answer of Elasticsearch or Kibana: --request-timeout-s
BUSY_RETRY_S = 2.0  # between two askings of a request the cluster answered busy (as between health checks)
Answer = TypeVar("Answer")
# in an index mapping's _meta: the fields setup added whose documents are not yet indexed again for them
FIELDS_TO_INDEX_AGAIN = "shelfcast_fields_to_index_again"


class SetupError(RuntimeError):
    """A service that did not become healthy or refused what we installed; names it."""


def index_templates() -> dict[str, dict]:
    """Template name -> body, from monitoring/elasticsearch/<name>.index-template.json."""
    return {p.name[: -len(TEMPLATE_SUFFIX)]: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(TEMPLATE_DIR.glob(f"*{TEMPLATE_SUFFIX}"))}


WAITING_LINE_EVERY_S = 30.0  # while a service is not up yet, a line this often: setup is waiting, not hung


def wait_until(check, what: str, wait_s: float, login_sent: bool, say: Callable[[str], None] | None = None) -> None:
    """Until ``check()`` holds, for up to ``wait_s``: a service still starting (docker compose starts setup beside
    it). While it waits, ``say`` is told so at once and every WAITING_LINE_EVERY_S, with why (before, a stack that was
    not up was 300 s without a word, then the error)."""
    started = time.monotonic()
    deadline = started + wait_s
    last, said_at = "", None
    while True:
        try:
            if check():
                return
            last = "not ready yet"
        except (EventSourceError, urllib.error.HTTPError) as exc:
            status = getattr(exc, "status", None) or getattr(exc, "code", None)
            if status in CREDENTIALS_REFUSED:  # waiting 300 s would not change the answer
                given = "as given" if login_sent else "none given"
                raise SetupError(f"{what}: HTTP {status}: credentials refused ({given}): set ELASTICSEARCH_USERNAME "
                                 "and ELASTICSEARCH_PASSWORD to a user of the cluster") from None
            last = str(exc)
        except (OSError, ValueError) as exc:
            last = str(exc)
        now = time.monotonic()
        if now >= deadline:
            raise SetupError(f"{what} did not become healthy within {wait_s:.0f} s ({last})")
        if say is not None and (said_at is None or now - said_at >= WAITING_LINE_EVERY_S):
            say(f"waiting for {what} ({last}): up to --wait-s {wait_s:g} s" if said_at is None
                else f"still waiting for {what} after {now - started:.0f} s ({last})")
            said_at = now
        time.sleep(2)


def asked_while_busy(request: Callable[[], Answer], what: str, wait_s: float,
                     say: Callable[[str], None] = print) -> Answer:
    """`request()`'s answer, asked again while the cluster answers busy (429, a gateway's 502-504) or not in time,
    for up to `wait_s` (--wait-s): a healthy cluster still starting or loaded answers so for a moment, and setup, a
    one-shot service Fluentd waits on (docker-compose), ended at the first one. Any other error is raised at once."""
    deadline, asked = time.monotonic() + wait_s, 0
    while True:
        try:
            return request()
        except EventSourceError as exc:
            if exc.status not in (None, *BUSY_ANSWERS):
                raise
            asked += 1
            if time.monotonic() >= deadline:
                raise (EventSourceError(f"{exc} (asked {asked} times over --wait-s {wait_s:g} s)", exc.status)
                       if asked > 1 else exc) from None
            say(f"{what}: not answered this time ({exc}); asking again for up to --wait-s {wait_s:g} s")
        time.sleep(BUSY_RETRY_S)


def install_index_templates(elasticsearch: ElasticsearchEvents, wait_s: float = 0.0,
                            say: Callable[[str], None] = print) -> list[str]:
    """PUT each template (a busy answer asked again for up to `wait_s`): the names installed."""
    installed = []
    for name, body in index_templates().items():
        answer = asked_while_busy(lambda: elasticsearch.request("PUT", f"/_index_template/{name}", body),
                                  f"index template {name}", wait_s, say)
        if not answer.get("acknowledged"):
            raise SetupError(f"{elasticsearch.url}: index template {name} not acknowledged: {answer}")
        installed.append(name)
    return installed


def templates_outranking_ours(elasticsearch: ElasticsearchEvents, wait_s: float = 0.0,
                              say: Callable[[str], None] = print) -> list[str]:
    """One line per installed template of higher priority that matches our templates' index names: Elasticsearch
    makes a new index from the one highest-priority composable template that matches it, so ours would never apply
    (a team's `*` or `shelfcast-*` template at priority 500: each daily index mapped by it, `family` and `event_id`
    as text, panels empty, drift's search refused). Before, setup said "installed", exit 0."""
    ours = index_templates()
    try:
        answer = asked_while_busy(lambda: elasticsearch.request("GET", "/_index_template"), "the index templates",
                                  wait_s, say)
    except EventSourceError as exc:  # a user that may install templates but not list them: the check is skipped
        if exc.status not in REFUSED_TASK_READS:
            raise
        say(f"the installed index templates cannot be read ({exc}): not checked for one that outranks Shelfcast's")
        return []
    lines = []
    for installed in answer.get("index_templates", []):
        other, body = installed.get("name"), installed.get("index_template", {})
        priority, patterns = body.get("priority") or 0, body.get("index_patterns", [])
        beaten = [name for name, template in ours.items() if other not in ours and priority > template["priority"]
                  and any(fnmatch.fnmatchcase(template["index_patterns"][0].replace("*", "2099.01.01"), pattern)
                          for pattern in patterns)]
        if beaten:
            lines.append(f"index template {other} (priority {priority}, patterns {', '.join(patterns)}) outranks "
                         f"{', '.join(beaten)} (priority {max(ours[n]['priority'] for n in beaten)}): new indices "
                         f"of theirs get its mappings, not Shelfcast's; lower its priority or narrow its patterns")
    return lines


NUMBER_KINDS = {**dict.fromkeys(("long", "integer", "short", "byte", "unsigned_long"), "whole number"),
                **dict.fromkeys(("float", "double", "half_float", "scaled_float"), "decimal number")}


def leaf_types(properties: dict, prefix: str = "") -> dict[str, str]:
    """A mapping's fields as dotted path -> type (an object's own fields, not the object)."""
    out = {}
    for name, field in properties.items():
        if "properties" in field:
            out.update(leaf_types(field["properties"], f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field.get("type", "object")
    return out


def _subset(properties: dict, paths: set[str], prefix: str = "") -> dict:
    """The part of `properties` that maps `paths` (and the objects holding them)."""
    out = {}
    for name, field in properties.items():
        path = f"{prefix}{name}"
        if "properties" in field:
            inner = _subset(field["properties"], paths, f"{path}.")
            if inner:
                out[name] = {**{k: v for k, v in field.items() if k != "properties"}, "properties": inner}
        elif path in paths:
            out[name] = field
    return out


def reconcile_existing_indices(elasticsearch: ElasticsearchEvents, reindex: bool = False,
                               say: Callable[[str], None] = print, pace: TaskPace = TaskPace(),
                               wait_s: float = 0.0) -> list[str]:
    """Bring indices created before their template in line with it, as far as a mapping can change: fields they lack
    are added; a field mapped as another kind cannot change in place, so each such index is named (one line each)
    or, with `reindex`, copied into <index>-remapped (created by the template; `say` gets the copy's progress lines
    as it runs) and deleted once the copy counts as many documents. Their mappings are read as the templates are
    installed (a busy answer asked again for up to `wait_s`); an index's own errors are its line. Returns the lines."""
    lines = []
    for name, body in index_templates().items():
        wanted_properties = body["template"]["mappings"]["properties"]
        patterns = ",".join(body["index_patterns"])
        found = asked_while_busy(lambda: elasticsearch.request(
            "GET", f"/{patterns}/_mapping?ignore_unavailable=true&allow_no_indices=true"),
            f"the mappings of {patterns}", wait_s, say)
        for index, mapping in sorted(found.items()):
            if not any(fnmatch.fnmatchcase(index, pattern) for pattern in body["index_patterns"]):
                lines.append(_foreign_index_line(elasticsearch, name, index, body["index_patterns"]))
                continue
            try:
                lines.extend(_reconcile_index(elasticsearch, name, index, mapping, wanted_properties, reindex, say,
                                              pace))
            except EventSourceError as exc:  # e.g. a read-only index (disk flood stage): the others, Kibana go on
                lines.append(f"warning: index {index} does not match template {name} and could not be changed: {exc}")
    return lines


def _foreign_index_line(elasticsearch: ElasticsearchEvents, name: str, index: str, patterns: list[str]) -> str:
    """The warning for an index the template's patterns reach only through an alias (a wildcard matches aliases as
    well as indices): someone else's index, left alone. Before, setup added the template's fields to it, indexed all
    its documents again and, with --reindex, copied it into <index>-remapped and deleted it."""
    try:
        held = elasticsearch.request("GET", f"/{index}/_alias").get(index, {}).get("aliases", {})
        aliases = sorted(alias for alias in held if any(fnmatch.fnmatchcase(alias, p) for p in patterns))
    except EventSourceError:
        aliases = []
    named = f"alias {', '.join(aliases)}" if aliases else "an alias"
    return (f"warning: index {index} is not one of template {name}'s ({', '.join(patterns)}): {named} on it "
            f"matches them, so it was left as it is (not remapped, copied or deleted); Fluentd's events for "
            f"that day may be written into it: remove the alias (POST /_aliases) if it is not Shelfcast's")


def _reconcile_index(elasticsearch: ElasticsearchEvents, name: str, index: str, mapping: dict,
                     wanted_properties: dict, reindex: bool, say: Callable[[str], None],
                     pace: TaskPace) -> list[str]:
    lines = []
    wanted = leaf_types(wanted_properties)
    have = leaf_types(mapping.get("mappings", {}).get("properties", {}))
    missing = {path for path in wanted if path not in have}
    differ = {path: have[path] for path in wanted if path in have
              and NUMBER_KINDS.get(have[path], have[path]) != NUMBER_KINDS.get(wanted[path], wanted[path])}
    meta = mapping.get("mappings", {}).get("_meta") or {}
    earlier = set(meta.get(FIELDS_TO_INDEX_AGAIN) or ()) - missing  # added by a run that did not index them again
    own_meta = {key: value for key, value in meta.items() if key != FIELDS_TO_INDEX_AGAIN}
    if missing:  # recorded with the fields, in one request: a run stopped before indexing again leaves the record
        elasticsearch.request("PUT", f"/{index}/_mapping", {
            "_meta": {**own_meta, FIELDS_TO_INDEX_AGAIN: sorted(missing | earlier)},
            "properties": _subset(wanted_properties, missing)})
    if missing or earlier:
        # a field added to a mapping covers the documents indexed after it: the earlier ones are read again
        lines.append(_indexed_again(elasticsearch, name, index, missing, earlier, own_meta, say, pace))
    if not differ:
        return lines
    fields = ", ".join(f"{path} is {kind}, the template maps {wanted[path]}" for path, kind in sorted(differ.items()))
    if not reindex:
        return [*lines, f"warning: index {index} was created before template {name}: {fields}; panels on those fields "
                        "show nothing for its events, and drift and release cannot read it if they are timestamp or "
                        "event_id; run setup again with --reindex (Fluentd stopped) to copy it into a mapped index"]
    target = f"{index}-remapped"
    elasticsearch.request("PUT", f"/{index}/_settings", {"index.blocks.write": True})
    try:
        copy = copy_index(elasticsearch, index, target, say, pace)
    except EventSourceError as exc:  # the copy may still be running: neither index is deleted
        elasticsearch.request("PUT", f"/{index}/_settings", {"index.blocks.write": False})
        raise EventSourceError(f"copying it into {target} failed, so it is left as it was (writable, beside "
                               f"whatever {target} holds): {exc}") from None
    except KeyboardInterrupt as interruption:  # Ctrl-C, SIGTERM: the block must not outlive setup (Fluentd refused)
        _writable_again(elasticsearch, index, target, interruption)
        raise
    if not copy.complete:  # never the source on a shortfall; nor the copy, which a task no one can read may still fill
        elasticsearch.request("PUT", f"/{index}/_settings", {"index.blocks.write": False})
        refused = f" (it refused {len(copy.failures)}, the first: {copy.failures[0]})" if copy.failures else ""
        return [*lines, f"warning: index {index}: its copy {target} holds {copy.copied} of its {copy.total} documents"
                        f"{refused}, so neither is deleted (the source writable again; their events count twice "
                        "until one goes): run setup --reindex again to complete the copy"]
    # in one step, the name goes on as an alias of the copy: an event sent again (the app's delivery is at least
    # once, Fluentd's buffer may hold a second copy) overwrites its document there, as the event_id _id promises;
    # before, the index was deleted alone, the next event recreated it, and a second copy was a second document
    # (with the aliases it had: a day copied before by an older template's --reindex is an alias of this index)
    try:
        held = elasticsearch.request("GET", f"/{index}/_alias").get(index, {}).get("aliases", {})
        elasticsearch.request("POST", "/_aliases", {"actions": [
            {"remove_index": {"index": index}},
            *({"add": {"index": target, "alias": alias}} for alias in sorted({index, *held}))]})
    except EventSourceError as exc:  # e.g. a user that may not delete indices: the source stays, writable
        elasticsearch.request("PUT", f"/{index}/_settings", {"index.blocks.write": False})
        raise EventSourceError(f"it was copied into {target} whole, but could not be replaced by it, so both are "
                               f"left (the source writable again; their events count twice until one goes): {exc}"
                               ) from None
    return [*lines, f"index {index} ({fields}) copied into {target} with template {name}'s mappings "
                    f"({copy.copied} of {copy.total} documents, counted) and deleted; its name is now an alias of "
                    f"{target}, so events for it, new or sent again, go there"]


def _writable_again(elasticsearch: ElasticsearchEvents, index: str, target: str,
                    interruption: KeyboardInterrupt) -> None:
    """Lift the write block of `index`, whose copy into `target` Ctrl-C or SIGTERM interrupted, and word the
    interruption's line with what is left. Before, setup ended in a traceback and the index stayed blocked: Fluentd's
    events to it were refused until someone lifted the block by hand."""
    blocked = (f"index {index} is still blocked for writes (Fluentd's events to it refused): run setup --reindex "
               f"again, or lift it: PUT /{index}/_settings {{\"index.blocks.write\": false}}")
    with second_signal_leaves(blocked):
        try:
            elasticsearch.request("PUT", f"/{index}/_settings", {"index.blocks.write": False})
        except EventSourceError as exc:
            settled(interruption, f"{blocked} ({exc})")
            return
    settled(interruption, f"index {index} writable again; its copy into {target} may still be running on the "
                          "cluster: run setup --reindex again (Fluentd stopped), which copies only what the copy lacks")


def _indexed_again(elasticsearch: ElasticsearchEvents, name: str, index: str, added: set[str], earlier: set[str],
                   own_meta: dict, say: Callable[[str], None], pace: TaskPace) -> str:
    """The line for fields added to `index` (now, or by an `earlier` run that was interrupted or whose update could
    not start: the index's _meta records them until an update has run): its documents indexed again for them, or an
    error line. Before, a run stopped between adding the fields and indexing the documents again left them
    unsearchable by those fields for good: the next run found the fields mapped and did nothing, exit 0."""
    stopped = "by an earlier run, which stopped before indexing its documents again"
    added_line = (f"index {index}: {len(added)} field(s) of template {name} added to its mapping"
                  f"{f' (and {len(earlier)} {stopped})' if earlier else ''}" if added else
                  f"index {index}: {len(earlier)} field(s) of template {name} added to its mapping {stopped}")
    rerun = (f"panels on those fields miss the rest of its events; index them again with POST /{index}/"
             "_update_by_query?conflicts=proceed&wait_for_completion=false")
    try:
        again = index_again(elasticsearch, index, say, pace)
    except EventSourceError as exc:  # the record stays: the next run indexes them again
        return (f"error: {added_line}, but indexing its documents again for them failed: {exc}; run setup again, "
                "which does it (the index's mapping records the fields until then)")
    try:  # the update ran to its end: what it did not take a rerun would not take either (the line says what is left)
        elasticsearch.request("PUT", f"/{index}/_mapping", {"_meta": own_meta})
    except EventSourceError:
        pass  # the record stays, and the next run indexes the documents again: more work, nothing lost or doubled
    if again.complete:
        return (f"{added_line}, its {again.done} of {again.total} document(s) indexed again for them "
                f"({again.measured_by})")
    refused = f"; it refused {len(again.failures)}, the first: {again.failures[0]}" if again.failures else ""
    return (f"error: {added_line}, but only {again.done} of its {again.total} documents were indexed again for them "
            f"({again.measured_by}{refused}); {rerun}")


def saved_objects_version(path: Path = SAVED_OBJECTS) -> str:
    """The Kibana version the saved objects were made by (their newest coreMigrationVersion): Kibana imports saved
    objects of its own version or older only."""
    versions = [json.loads(line).get("coreMigrationVersion", "0") for line in path.read_text().splitlines() if line]
    return max(versions, key=lambda version: tuple(int(part) for part in version.split(".")))


def kibana_request(kibana_url: str, path: str, **kwargs) -> urllib.request.Request:
    """A request to Kibana at `path`, logged in by the rule drift, release and setup's Elasticsearch requests follow
    (event_sources.cluster_login: the environment's user and password, else the URL's); before, Kibana's URL was
    sent as given, and urllib took a login in it (`http://user:password@kibana:5601`) for the host name."""
    bare, username, password = cluster_login(kibana_url, *environment_credentials())
    headers = {**kwargs.pop("headers", {}), **basic_authorization(username, password)}
    return urllib.request.Request(f"{bare.rstrip('/')}{path}", headers=headers, **kwargs)


def import_saved_objects(kibana_url: str, path: Path = SAVED_OBJECTS,
                         timeout_s: float = SETUP_REQUEST_TIMEOUT_S) -> dict:
    """POST the .ndjson to Kibana's saved-objects import API (multipart, overwrite)."""
    shown = cluster_login(kibana_url)[0]
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            "Content-Type: application/ndjson\r\n\r\n").encode()
    body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = kibana_request(kibana_url, "/api/saved_objects/_import?overwrite=true", data=body, method="POST",
                             headers={"kbn-xsrf": "shelfcast-setup",
                                      "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise SetupError(f"{shown}: saved-objects import: HTTP {exc.code}: {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError) as exc:  # Kibana gone since its status, or slower than the timeout
        raise SetupError(f"{shown}: saved-objects import failed: {getattr(exc, 'reason', exc)} (--request-timeout-s "
                         f"{timeout_s:g}): it may not have been imported; run setup again (the import overwrites)"
                         ) from None
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise SetupError(f"{shown}: saved-objects import: the answer is not Kibana's JSON object: {text[:200]!r}")
    if not answer.get("success"):
        raise SetupError(f"{shown}: saved-objects import failed: {answer.get('errors')}")
    return answer


def kibana_available(kibana_url: str, timeout_s: float = SETUP_REQUEST_TIMEOUT_S) -> bool:
    """Kibana 8's status says `overall.level`; Kibana 7 and OpenSearch Dashboards say `overall.state` instead, and
    cannot import the dashboard's saved objects (made by Kibana 8.8): refused at once, naming the version (before,
    setup waited out --wait-s, 300 s, and said "did not become healthy (not ready yet)")."""
    with urllib.request.urlopen(kibana_request(kibana_url, "/api/status"), timeout=timeout_s) as response:
        status = json.loads(response.read().decode("utf-8"))
    overall = status.get("status", {}).get("overall", {}) if isinstance(status, dict) else {}
    if isinstance(overall, dict) and "level" not in overall and "state" in overall:
        version = status.get("version", {})
        name = f"{version.get('build_flavor') or 'Kibana'} {version.get('number', '(version not given)')}" \
            if isinstance(version, dict) else "Kibana (version not given)"
        raise SetupError(f"{cluster_login(kibana_url)[0]} answers its status as Kibana 7 and OpenSearch Dashboards do "
                         f"({name}, overall state {overall.get('state')!r}): the dashboard's saved objects need Kibana "
                         f"{saved_objects_version()} or later; give --kibana none to install the index templates "
                         "alone")
    return isinstance(overall, dict) and overall.get("level") == "available"


def _progress(line: str) -> None:
    print(f"setup: {line}", flush=True)


def main(argv=None) -> int:
    """Ctrl-C and SIGTERM (`docker compose stop`) end it in one line, 130 or 143, saying what is left (before: a
    traceback, and an index being copied by --reindex left blocked for writes)."""
    return run_interruptible("setup", lambda: _setup(argv))


def _setup(argv) -> int:
    output_any_terminal_can_take()
    parser = CommandParser(prog="python -m monitoring.setup_stack", description=__doc__.splitlines()[0])
    parser.add_argument("--elasticsearch", default=os.environ.get("ELASTICSEARCH_URL", "http://localhost:9200"))
    parser.add_argument("--kibana", default=os.environ.get("KIBANA_URL", "http://localhost:5601"),
                        help="Kibana URL; 'none' skips the saved objects")
    parser.add_argument("--reindex", action="store_true",
                        help="copy each existing index whose mapping differs from its template into <index>-remapped "
                             "and delete it (stop Fluentd first: its writes to that index are refused meanwhile)")
    parser.add_argument("--progress-s", type=float, default=TaskPace.poll_s,
                        help="seconds between the progress lines of a copy (--reindex) or of indexing documents "
                             "again for added fields")
    parser.add_argument("--stall-s", type=float, default=TaskPace.stall_s,
                        help="where a copy's or an update's task cannot be read (no tasks API, no monitor "
                             "privilege): one whose document count has not grown for this long is judged as it stands")
    parser.add_argument("--wait-s", type=float, default=300.0,
                        help="how long to wait for each service, and to ask again a request it answers busy (429, "
                             "502-504) or not in time while setup installs the templates and reads the indices")
    parser.add_argument("--request-timeout-s", type=float, default=SETUP_REQUEST_TIMEOUT_S,
                        help="how long to wait for one answer of Elasticsearch or Kibana (a health check while a "
                             "cluster starts, a mapping change, a refresh or count of a big index, the saved-objects "
                             "import); one not answered in time is retried while waiting for the service, else an "
                             "error")
    args = parser.parse_args(argv)
    if not 0 < args.request_timeout_s < math.inf:
        parser.error(f"--request-timeout-s: expected a number of seconds above 0, got {args.request_timeout_s:g}")
    try:
        elasticsearch = ElasticsearchEvents.from_environment(args.elasticsearch, timeout_s=args.request_timeout_s)
        wait_until(lambda: elasticsearch.request("GET", "/_cluster/health").get("status") in ("green", "yellow"),
                   f"Elasticsearch at {elasticsearch.url}", args.wait_s, elasticsearch.login_sent, _progress)
        names = install_index_templates(elasticsearch, args.wait_s, _progress)
        outranking = templates_outranking_ours(elasticsearch, args.wait_s, _progress)
        if outranking:  # nothing else setup does makes the next indices Shelfcast's (a copy would get theirs too)
            raise SetupError(f"index templates {', '.join(names)} installed in {elasticsearch.url}, but they will not "
                             f"apply: {'; '.join(outranking)}")
        print(f"setup: index templates {', '.join(names)} installed in {elasticsearch.url}")
        unmatched = 0
        pace = TaskPace(poll_s=args.progress_s, stall_s=args.stall_s)
        failed = 0
        for line in reconcile_existing_indices(elasticsearch, args.reindex, say=_progress, pace=pace,
                                               wait_s=args.wait_s):
            unmatched += line.startswith("warning")
            failed += line.startswith("error")
            print(f"setup: {line}", file=sys.stderr if line.startswith(("warning", "error")) else sys.stdout)
        if args.kibana.lower() != "none":
            kibana, kibana_user, _ = cluster_login(args.kibana, *environment_credentials())  # shown without login
            wait_until(lambda: kibana_available(args.kibana, args.request_timeout_s), f"Kibana at {kibana}",
                       args.wait_s, kibana_user is not None, _progress)
            answer = import_saved_objects(args.kibana, timeout_s=args.request_timeout_s)
            print(f"setup: {answer.get('successCount')} saved objects imported into {kibana} "
                  "(dashboard: Shelfcast monitoring)")
    except (SetupError, EventSourceError) as exc:
        print(f"setup: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interruption:  # Ctrl-C or SIGTERM: one line (run_interruptible), worded for setup
        if getattr(interruption, OUTCOME, None) is None:
            settled(interruption, "run setup again: it installs, adds and copies only what is still missing")
        raise
    # without --reindex an index left as it was is a warning; documents not indexed again are an error either way
    return 1 if failed or (args.reindex and unmatched) else 0


if __name__ == "__main__":
    sys.exit(main())
