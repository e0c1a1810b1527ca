"""monitoring.setup_stack against a secured cluster: credentials from the environment reach both services, and
credentials refused end the wait at once (before: a 401 was retried for the whole --wait-s, 300 s by default).

The cluster here is a loopback HTTP server that enforces basic auth only (the tests' OpenSearch-API server does not
enforce any); what is checked is the setup client's side: the header it sends and what it does with a 401."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time

import pytest

from monitoring.setup_stack import kibana_available
from tests.monitoring.loopback_cluster import json_cluster

USER, PASSWORD = "shelfcast", "s3cret"
GRANTED = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@pytest.fixture
def secured():
    """(url, the Authorization headers received): 401 without the user's; with it, a cluster still starting (503),
    except Kibana's /api/status, which answers available."""
    seen: list[str | None] = []

    def rule(request):
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != GRANTED:
            return 401, {"error": "missing authentication credentials"}
        if request.path == "/api/status":
            return 200, {"status": {"overall": {"level": "available"}}}
        return 503, {"error": "starting"}

    with json_cluster(rule) as url:
        yield url, seen


def _setup(url: str, env: dict, wait_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitoring.setup_stack", "--elasticsearch", url, "--kibana", "none",
                           "--wait-s", str(wait_s)], capture_output=True, text=True, timeout=120, env=env)


def test_credentials_refused_end_the_wait_at_once(secured):
    url, _ = secured
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELASTICSEARCH_")}
    started = time.monotonic()
    done = _setup(url, env, wait_s=60)
    assert time.monotonic() - started < 30, "a 401 was waited on"
    assert done.returncode == 1, done
    assert (f"setup: error: Elasticsearch at {url}: HTTP 401: credentials refused (none given): set "
            "ELASTICSEARCH_USERNAME and ELASTICSEARCH_PASSWORD") in done.stderr, done.stderr
    done = _setup(url, {**env, "ELASTICSEARCH_USERNAME": USER, "ELASTICSEARCH_PASSWORD": "wrong"}, wait_s=60)
    assert done.returncode == 1 and "credentials refused (as given)" in done.stderr, done.stderr


def test_the_environment_credentials_reach_elasticsearch_and_kibana(secured, monkeypatch):
    url, seen = secured
    env = {**os.environ, "ELASTICSEARCH_USERNAME": USER, "ELASTICSEARCH_PASSWORD": PASSWORD}
    done = _setup(url, env, wait_s=3)  # granted, then 503 until the wait is up: waited on, as a starting cluster
    assert done.returncode == 1 and "did not become healthy within 3 s" in done.stderr, done.stderr
    assert seen and set(seen) == {GRANTED}, seen
    monkeypatch.setenv("ELASTICSEARCH_USERNAME", USER)
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD", PASSWORD)
    assert kibana_available(url)


def test_a_login_in_the_url_is_sent_as_the_environments_is(secured, monkeypatch):
    """`--elasticsearch http://user:password@host` (drift, release, setup): the login is sent as basic auth, where
    urllib had taken `user:password@host` for the host name; the environment's, when set, is sent instead."""
    from pipeline.event_sources import ElasticsearchEvents, EventSourceError

    url, seen = secured
    monkeypatch.delenv("ELASTICSEARCH_USERNAME", raising=False)
    monkeypatch.delenv("ELASTICSEARCH_PASSWORD", raising=False)
    with_login = url.replace("http://", f"http://{USER}:{PASSWORD}@")
    search = ElasticsearchEvents.from_environment(with_login)
    with pytest.raises(EventSourceError) as answered:
        search.request("GET", "/")
    assert (answered.value.status, seen[-1]) == (503, GRANTED), answered.value  # let in: the cluster is starting
    assert search.url == url and PASSWORD not in str(answered.value)
    monkeypatch.setenv("ELASTICSEARCH_USERNAME", USER)
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD", "other")
    with pytest.raises(EventSourceError) as answered:
        ElasticsearchEvents.from_environment(with_login).request("GET", "/")
    assert answered.value.status == 401 and seen[-1] != GRANTED


def test_a_url_that_carries_only_a_user_takes_the_environments_password(secured, monkeypatch):
    """`http://shelfcast@host:9200` with ELASTICSEARCH_PASSWORD (and no ELASTICSEARCH_USERNAME): before, the password
    was dropped, the user sent without one, and the cluster answered 401."""
    from pipeline.event_sources import ElasticsearchEvents, EventSourceError

    url, seen = secured
    monkeypatch.delenv("ELASTICSEARCH_USERNAME", raising=False)
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD", PASSWORD)
    with pytest.raises(EventSourceError) as answered:
        ElasticsearchEvents.from_environment(url.replace("http://", f"http://{USER}@")).request("GET", "/")
    assert (answered.value.status, seen[-1]) == (503, GRANTED), answered.value


def test_setup_logs_in_to_both_services_by_one_rule_and_shows_neither_login():
    """Setup's Kibana requests follow the rule its Elasticsearch requests do (before, Kibana's URL was sent as
    given: urllib took `user:password@host` for its host), and no line shows a URL's password (before, "installed
    in" and "did not become healthy" printed the URL as given)."""
    seen: list[str | None] = []

    def rule(request):
        seen.append(request.headers.get("Authorization"))
        request.rfile.read(int(request.headers.get("Content-Length") or 0))
        if request.headers.get("Authorization") != GRANTED:
            return 401, {"error": "missing authentication credentials"}
        if request.path == "/_cluster/health":
            return 200, {"status": "green"}
        if request.path.startswith("/_index_template/"):
            return 200, {"acknowledged": True}
        if request.path == "/api/status":
            return 200, {"status": {"overall": {"level": "available"}}}
        if request.path.startswith("/api/saved_objects/_import"):
            return 200, {"success": True, "successCount": 3}
        return 200, {}  # the mappings of shelfcast-* indices: none

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ELASTICSEARCH_")},
           "ELASTICSEARCH_PASSWORD": PASSWORD}
    with json_cluster(rule) as url:
        done = subprocess.run([sys.executable, "-m", "monitoring.setup_stack",
                               "--elasticsearch", url.replace("http://", f"http://{USER}@"),
                               "--kibana", url.replace("http://", f"http://{USER}:{PASSWORD}@"), "--wait-s", "5"],
                              capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done
    assert set(seen) == {GRANTED}, seen
    assert f"installed in {url}\n" in done.stdout and f"imported into {url} " in done.stdout, done.stdout
    assert PASSWORD not in done.stdout + done.stderr


def test_the_environments_user_that_is_the_urls_own_goes_with_the_urls_password(secured, monkeypatch):
    """ELASTICSEARCH_USERNAME=shelfcast (no ELASTICSEARCH_PASSWORD) and `http://shelfcast:s3cret@host`: the user sent
    is the URL's, so its password goes with it (cluster_login: "the URL's when the URL's user is the one sent").
    Before, a user given beside the URL dropped the URL's password whoever it named: shelfcast was sent without one
    and the cluster answered 401. Another user named in the environment still gets none of the URL's."""
    from pipeline.event_sources import ElasticsearchEvents, EventSourceError

    url, seen = secured
    monkeypatch.setenv("ELASTICSEARCH_USERNAME", USER)
    monkeypatch.delenv("ELASTICSEARCH_PASSWORD", raising=False)
    with pytest.raises(EventSourceError) as answered:
        ElasticsearchEvents.from_environment(url.replace("http://", f"http://{USER}:{PASSWORD}@")).request("GET", "/")
    assert (answered.value.status, seen[-1]) == (503, GRANTED), answered.value  # let in: the cluster is starting
    monkeypatch.setenv("ELASTICSEARCH_USERNAME", "someone-else")
    with pytest.raises(EventSourceError) as answered:
        ElasticsearchEvents.from_environment(url.replace("http://", f"http://{USER}:{PASSWORD}@")).request("GET", "/")
    assert answered.value.status == 401
    assert seen[-1] == "Basic " + base64.b64encode(b"someone-else:").decode()
