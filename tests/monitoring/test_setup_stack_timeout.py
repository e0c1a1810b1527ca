"""setup's wait for one answer (--request-timeout-s) against a cluster slower than it: before, every request to
Elasticsearch had a fixed 30 s, so a cluster that answered its health check or a mapping change later (a big one
starting, or busy) was never set up. The cluster here is a loopback one answering each request after a delay."""

from __future__ import annotations

import time

import pytest

from monitoring.setup_stack import index_templates, main as setup
from tests.monitoring.loopback_cluster import json_cluster

ANSWER_AFTER_S = 0.8


def _slow_cluster(request) -> tuple[int, dict]:
    """A cluster that answers each request after ANSWER_AFTER_S: healthy, templates acknowledged, no indices."""
    time.sleep(ANSWER_AFTER_S)
    if request.path == "/_cluster/health":
        return 200, {"status": "green"}
    if request.path.startswith("/_index_template/"):
        return 200, {"acknowledged": True}
    if "/_mapping" in request.path:
        return 200, {}
    return 404, {"error": f"no handler for {request.command} {request.path}"}


def test_a_cluster_slower_than_the_request_timeout_is_set_up_given_a_longer_one(capsys):
    with json_cluster(_slow_cluster) as url:
        command = ["--elasticsearch", url, "--kibana", "none", "--wait-s", "2"]
        assert setup([*command, "--request-timeout-s", "0.3"]) == 1
        assert f"setup: error: Elasticsearch at {url} did not become healthy within 2 s (" in capsys.readouterr().err
        assert setup([*command, "--request-timeout-s", "5"]) == 0
    out = capsys.readouterr().out
    assert f"setup: index templates {', '.join(index_templates())} installed in {url}" in out, out


def test_a_request_timeout_that_is_no_time_is_refused_naming_the_flag(capsys):
    for given in ("0", "-1", "inf", "nan"):
        with pytest.raises(SystemExit) as refused:
            setup(["--kibana", "none", "--request-timeout-s", given])
        assert refused.value.code == 2
        assert "--request-timeout-s: expected a number of seconds above 0" in capsys.readouterr().err, given


def test_a_kibana_import_slower_than_the_request_timeout_is_one_error_line(capsys):
    """Kibana answered its status, then took longer than --request-timeout-s over the saved-objects import (a busy
    Kibana, a large import) or answered it with something not Kibana's JSON object (a proxy's page): setup ended in a
    traceback (TimeoutError; AttributeError on a list), where every other request gives one `setup: error:` line."""
    answers = {"import": (200, {"success": True, "successCount": 15})}

    def rule(request) -> tuple[int, dict]:
        if request.path == "/api/status":
            return 200, {"status": {"overall": {"level": "available"}}}
        if request.path.startswith("/api/saved_objects/_import"):
            if "slow" in answers:
                time.sleep(ANSWER_AFTER_S)
            return answers["import"]
        if request.path == "/_cluster/health":
            return 200, {"status": "green"}
        return (200, {"acknowledged": True}) if request.path.startswith("/_index_template/") else (200, {})

    with json_cluster(rule) as url:
        command = ["--elasticsearch", url, "--kibana", url, "--wait-s", "2", "--request-timeout-s", "2"]
        assert setup(command) == 0
        assert "setup: 15 saved objects imported" in capsys.readouterr().out
        answers["slow"] = True
        assert setup([*command[:-1], "0.3"]) == 1
        err = capsys.readouterr().err
        assert f"setup: error: {url}: saved-objects import failed: timed out (--request-timeout-s 0.3): it may not " \
               "have been imported; run setup again" in err and "Traceback" not in err, err
        del answers["slow"]
        answers["import"] = (200, [])
        assert setup(command) == 1
        assert f"setup: error: {url}: saved-objects import: the answer is not Kibana's JSON object: '[]'" in \
            capsys.readouterr().err


def test_a_cluster_busy_for_a_moment_after_its_health_check_is_set_up(capsys):
    """Healthy, then 503 (a cluster block while it recovers) or 429 (queues full) to the template installs and the
    mappings read: setup ended at the first one with exit 1, and docker compose's Fluentd, which waits for setup to
    succeed (`restart: "no"`), never started. A busy answer is asked again for up to --wait-s; one that outlasts it
    is one error line; any other error is not retried."""
    busy = {"/_index_template/shelfcast-monitoring": [503], "/shelfcast-monitoring-*/_mapping": [429]}

    def rule(request) -> tuple[int, dict]:
        if request.path == "/_cluster/health":
            return 200, {"status": "green"}
        left = busy.get(request.path.split("?")[0], [])
        if left:
            return left.pop(0) if left[0] != "forever" else 503, {"error": "busy"}
        if request.path.startswith("/_index_template/"):
            return 200, {"acknowledged": True}
        return (200, {}) if "/_mapping" in request.path else (404, {})

    with json_cluster(rule) as url:
        command = ["--elasticsearch", url, "--kibana", "none", "--wait-s", "10"]
        assert setup(command) == 0
        out = capsys.readouterr().out
        assert "setup: index template shelfcast-monitoring: not answered this time (PUT " in out
        assert "setup: the mappings of shelfcast-monitoring-*: not answered this time (GET " in out
        assert "installed in" in out
        busy["/_index_template/shelfcast-monitoring"] = ["forever"]
        started = time.monotonic()
        assert setup([*command[:-1], "1"]) == 1
        assert time.monotonic() - started < 10
        err = capsys.readouterr().err
        assert err.count("setup: error:") == 1 and "HTTP 503" in err and "asked 2 times over --wait-s 1 s" in err, err


@pytest.mark.parametrize("status", [
    {"version": {"number": "7.17.25"}, "status": {"overall": {"state": "green"}}},  # Kibana 7
    {"version": {"number": "2.18.0", "build_flavor": "OpenSearch Dashboards"},
     "status": {"overall": {"state": "green"}}},
])
def test_a_kibana_that_cannot_import_the_dashboard_is_refused_at_once_naming_its_version(capsys, status):
    """Kibana 7 and OpenSearch Dashboards answer /api/status with `overall.state`, not Kibana 8's `overall.level`, and
    cannot import saved objects Kibana 8.8 made: setup waited out --wait-s and said "did not become healthy (not
    ready yet)", though the server was up."""

    def rule(request) -> tuple[int, dict]:
        if request.path == "/api/status":
            return 200, status
        if request.path == "/_cluster/health":
            return 200, {"status": "green"}
        return (200, {"acknowledged": True}) if request.path.startswith("/_index_template/") else (200, {})

    with json_cluster(rule) as url:
        started = time.monotonic()
        assert setup(["--elasticsearch", url, "--kibana", url, "--wait-s", "30"]) == 1
        assert time.monotonic() - started < 20
    err = capsys.readouterr().err
    version = status["version"]["number"]
    assert "answers its status as Kibana 7 and OpenSearch Dashboards do (" in err and version in err, err
    assert "the dashboard's saved objects need Kibana 8.8.0 or later; give --kibana none" in err, err


def test_a_stack_that_is_not_up_yet_is_waited_for_aloud(capsys, monkeypatch):
    """Found by a probe: `make monitoring-setup` with Elasticsearch not up (yet) printed nothing for its whole
    --wait-s, 300 s by default, then the error: no telling a wait from a hang. It says at once what it waits for and
    why, then again every WAITING_LINE_EVERY_S, and ends in the same error line."""
    import socket

    from monitoring import setup_stack

    monkeypatch.setattr(setup_stack, "WAITING_LINE_EVERY_S", 2.0, raising=False)  # a line a poll
    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    assert setup(["--elasticsearch", url, "--kibana", "none", "--wait-s", "5"]) == 1
    assert time.monotonic() - started < 30
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"setup: waiting for Elasticsearch at {url} (GET {url}/_cluster/health: ") and \
        lines[0].endswith("): up to --wait-s 5 s"), out
    assert lines[1].startswith(f"setup: still waiting for Elasticsearch at {url} after "), out
    assert err.startswith(f"setup: error: Elasticsearch at {url} did not become healthy within 5 s"), err
