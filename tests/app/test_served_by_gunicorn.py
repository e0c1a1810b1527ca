"""The app as `make serve` runs it (gunicorn, app/gunicorn_conf.py, 2 workers), from the outside.

Slow clients, body limits for sized and chunked bodies, security headers, and /metrics
summed over the workers. One server for the module; every socket on 127.0.0.1.
"""

from __future__ import annotations

import collections
import http.client
import json
import re
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import launch

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(app_bundles, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gunicorn")
    served = launch.start({"SHELFCAST_WORKERS": "2", "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                           "SHELFCAST_PREDICTION_LOG": str(workdir / "p.jsonl"),
                           "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"), "SHELFCAST_BODY_TIMEOUT_S": "10"},
                          workdir / "gunicorn.log")
    try:
        yield served.port
    finally:
        served.stop()


def predict_body(port: int) -> bytes:
    model = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/model", timeout=5).read())
    items = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/items?limit=1", timeout=5).read())
    instance = {"store_nbr": model["stores"][0]["store_nbr"], "item_nbr": items["items"][0]["item_nbr"],
                "date": model["horizon"]["first_date"], "onpromotion": False}
    return json.dumps({"instances": [instance]}).encode()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 5.0) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = headers or {}
    connection.request(method, path, body=body, headers=headers,
                       encode_chunked=headers.get("Transfer-Encoding") == "chunked")
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_stalled_bodies_do_not_delay_other_clients(server):
    """5 clients send headers and 1 byte of a 100-byte body, then stall; 20 others are served meanwhile."""
    stalled = []
    for _ in range(5):
        client = socket.create_connection(("127.0.0.1", server))
        client.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{")
        stalled.append(client)
    time.sleep(0.3)  # they now hold connection threads
    body = predict_body(server)

    def timed(_: int) -> tuple[int, float]:
        started = time.perf_counter()
        try:
            status = request(server, "POST", "/api/v1/predict", body, {"Content-Type": "application/json"},
                             timeout=3.0).status
        except OSError:
            status = 0
        return status, time.perf_counter() - started

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(timed, range(20)))
    for client in stalled:
        client.close()
    answered = [took for status, took in results if status == 200]
    print(f"slow clients: {len(answered)}/20 answered 200 during 5 stalled bodies, "
          f"slowest {max(answered) * 1000:.0f} ms")
    assert len(answered) == 20, results
    assert max(answered) < 1.0


def test_clients_that_never_close_after_the_server_does_do_not_delay_others(server):
    """Found by a probe: gunicorn's gthread worker closes a connection it ends (HTTP/1.0, Connection: close, an
    error) by waiting up to 2 s for the client to close too (RFC 9112's graceful close), on the thread that
    accepts and dispatches every connection: one such client every 0.5 s (urllib with its response left unread
    is one) made others' forecasts take ~1.8 s, and workers timed out. 12 of them, then 20 forecasts."""
    body = predict_body(server)
    lingering = []
    for _ in range(12):
        client = socket.create_connection(("127.0.0.1", server))
        client.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")  # answered, then the server closes; the client never does
        lingering.append(client)
        time.sleep(0.02)
    took = []
    try:
        for _ in range(20):
            started = time.perf_counter()
            assert request(server, "POST", "/api/v1/predict", body, {"Content-Type": "application/json"},
                           timeout=10.0).status == 200
            took.append(time.perf_counter() - started)
    finally:
        for client in lingering:
            client.close()
    print(f"lingering clients: 20 forecasts beside 12 clients that never close, slowest {max(took) * 1000:.0f} ms")
    assert max(took) < 0.5, [round(t, 3) for t in took]


def test_sized_and_chunked_bodies_over_the_limit_get_413(server):
    headers = {"Content-Type": "application/json"}
    big = b"[" + b"0," * (MIB // 2) + b"0]"
    assert request(server, "POST", "/api/v1/predict", big, headers).status == 413

    def chunks(total: int):
        for _ in range(total // 65536):
            yield b" " * 65536

    chunked = request(server, "POST", "/api/v1/predict", chunks(MIB + 2 * 65536),
                      {**headers, "Transfer-Encoding": "chunked"})
    assert chunked.status == 413
    small = request(server, "POST", "/api/v1/predict", iter([predict_body(server)]),
                    {**headers, "Transfer-Encoding": "chunked"})
    assert small.status == 200  # a chunked body under the limit is read whole


def test_a_transfer_coding_other_than_chunked_is_415_naming_it(server):
    """Found by a probe: 'Transfer-Encoding: gzip, chunked' was served as if the body were plain (gunicorn
    removes the chunked framing only); a gzip body would be misread."""
    body = predict_body(server)
    client = socket.create_connection(("127.0.0.1", server), timeout=10)
    client.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
                   + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    client.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 415"), answer[:300]
    assert [e["field"] for e in json.loads(payload)["errors"]] == ["Transfer-Encoding"]


@pytest.mark.parametrize("coding", ["gzip", "identity"])
def test_a_transfer_coding_without_chunked_is_415_naming_it_and_the_connection_closes(server, coding):
    """Found by a probe: with no chunked coding (and no Content-Length) the body was not read at all: the app
    answered 400 'the body is not valid JSON' instead of the 415 naming the header, and with `identity` the
    connection stayed open, gunicorn then reading the body as data until the client closed (the client waited
    for the connection's end; RFC 9112 6.3: such a body's length cannot be known, answer and close)."""
    client = socket.create_connection(("127.0.0.1", server), timeout=10)
    client.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: " + coding.encode() + b"\r\n\r\n" + predict_body(server))
    client.settimeout(3)
    answer = b""
    try:
        while chunk := client.recv(65536):
            answer += chunk
    except TimeoutError:
        pytest.fail(f"the connection was left open: {answer[:200]!r}")
    finally:
        client.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 415"), answer[:300]
    assert [e["field"] for e in json.loads(payload)["errors"]] == ["Transfer-Encoding"]


def test_security_headers_on_pages_api_and_errors(server):
    for path in ("/", "/api/v1/model", "/no-such-page", "/metrics"):
        response = request(server, "GET", path)
        headers = {k.lower(): v for k, v in response.getheaders()}
        assert "default-src 'self'" in headers["content-security-policy"], path
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert "gunicorn" not in headers.get("server", "").lower(), headers.get("server")


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + labels + r"\}" if labels else r"(\{[^}]*\})?") + r" ([0-9.e+-]+)"
    values = [float(m.group(m.lastindex)) for m in re.finditer(pattern, text)]
    assert values, f"{name}{{{labels}}} not in /metrics"
    return sum(values)


def test_metrics_sum_every_worker(server):
    before = urllib.request.urlopen(f"http://127.0.0.1:{server}/metrics", timeout=5).read().decode()
    body = predict_body(server)
    for _ in range(12):  # new connections: gunicorn spreads them over both workers
        assert request(server, "POST", "/api/v1/predict", body, {"Content-Type": "application/json"}).status == 200
    response = urllib.request.urlopen(f"http://127.0.0.1:{server}/metrics", timeout=5)
    text = response.read().decode()
    assert response.headers["Content-Type"].startswith("text/plain")
    served = 'source="api"'
    predictions_before = _or0(before, "shelfcast_predictions_total", served)
    assert metric(text, "shelfcast_predictions_total", served) - predictions_before == 12
    assert metric(text, "shelfcast_prediction_events_total", 'outcome="emitted"') >= 12
    assert metric(text, "shelfcast_prediction_events_total", 'outcome="sent"') >= 12
    # every outcome is there from the start, 0 until it happens (an alert on drops saw no series at all)
    assert metric(text, "shelfcast_prediction_events_total", 'outcome="dropped"') == 0
    assert metric(text, "shelfcast_prediction_events_total", 'outcome="rejected"') == 0
    assert metric(text, "shelfcast_request_duration_seconds_count", 'endpoint="/api/v1/predict"') >= 12
    version = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server}/api/v1/model", timeout=5).read())["version"]
    served_models = [dict(re.findall(r'(\w+)="([^"]*)"', labels)) for labels, value in
                     re.findall(r"shelfcast_model_info\{([^}]*)\} ([0-9.e+-]+)", text) if float(value) >= 1]
    assert served_models == [{"kind": "mlp", "variant": "production", "version": version}], served_models


def _or0(text: str, name: str, labels: str) -> float:
    try:
        return metric(text, name, labels)
    except AssertionError:
        return 0.0


@pytest.mark.slow  # ~15 s; the in-process schemathesis run (test_api_fuzz.py) is in the default suite
def test_schemathesis_over_http_finds_no_server_error(server):
    """Every documented operation fuzzed through gunicorn (sockets, chunking, limits): never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test extra")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{server}/api/v1/openapi.json")
    statuses: collections.Counter = collections.Counter()
    for operation in (result.ok() for result in schema.get_all_operations()):
        broken_input = operation.label in ("POST /api/v1/predict", "GET /api/v1/items")  # the rest take none
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if broken_input else (GenerationMode.POSITIVE,):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def answers_as_documented(case) -> None:
                response = case.call_and_validate(excluded_checks=[positive_data_acceptance], timeout=10)
                statuses[response.status_code] += 1

            answers_as_documented()
    print(f"schemathesis over HTTP: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert statuses and not any(status >= 500 for status in statuses)


def test_options_asterisk_asks_about_the_server_200_with_allow_and_security_headers(server):
    """Found by a probe: `OPTIONS * HTTP/1.1` (RFC 9110 §9.3.7: about the server, not a resource) answered the
    HTML 404 "no such path /*". Now 200, empty, with the methods the server takes; a path /* is still 404."""
    response = request(server, "OPTIONS", "*")
    headers = {k.lower(): v for k, v in response.getheaders()}
    assert response.status == 200 and headers["content-length"] == "0"
    assert set(headers["allow"].split(", ")) == {"GET", "HEAD", "POST", "OPTIONS"}
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    assert headers["x-request-id"]
    assert request(server, "OPTIONS", "/*").status == 404
    assert request(server, "OPTIONS", "/api/v1/predict").status == 200  # a path's own OPTIONS, as before


def test_pipelined_requests_are_each_answered_in_order(server):
    """HTTP/1.1 lets a client send its next requests before the answers (RFC 9112 section 9.3.2). gunicorn's gthread
    reads them ahead with the first, then waits on the socket for bytes already taken: only the first was answered,
    and the connection closed after the 5 s keep-alive (a probe: 1 of 3, GETs and POSTs alike)."""
    body = predict_body(server)
    predict = (b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    model = b"GET /api/v1/model HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /api/v1/items?limit=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server), timeout=10) as client:
        client.sendall(predict + model + predict + last)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    answers = re.findall(rb"HTTP/1\.1 (\d{3})", received)
    assert answers == [b"200"] * 4 and time.monotonic() - started < 3, (answers, time.monotonic() - started)
    responses = received.split(b"HTTP/1.1 200")[1:]
    for response, kind in zip(responses, [b'"predictions"', b'"horizon"', b'"predictions"', b'"items"']):
        assert kind in response, (kind, response[-300:])


def test_expect_100_continue_over_the_body_limit_gets_413_without_an_invitation_to_send(server):
    """RFC 9110 10.1.1: a client sending `Expect: 100-continue` waits for 100 before it sends the body. gunicorn sent
    100 Continue for every such request before the app ran, so a client announcing a body over the limit was invited
    to upload it all, then answered 413 (a probe: 99,999,999 bytes announced). Within the limit it still gets 100."""
    with socket.create_connection(("127.0.0.1", server), timeout=5) as client:
        client.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (2 * MIB))
        reply = client.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    body = predict_body(server)
    with socket.create_connection(("127.0.0.1", server), timeout=5) as client:
        client.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n" % len(body))
        assert client.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.sendall(body)
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


@pytest.mark.parametrize("expect", [True, False])
def test_a_body_over_the_limit_gets_a_413_that_closes_the_connection(server, expect):
    """Found by a review probe: the 413 for a Content-Length over the limit said keep-alive, but gunicorn drains at
    most 64 KiB of an unread body: with `Expect: 100-continue` (no 100 sent, so the client sends no body, RFC 9110
    10.1.1) it waited 5 s for the announced bytes, took the client's next request for them and left it unanswered;
    with the body sent it closed after the 413 all the same. A server answering before reading the body says
    whether it will read it (RFC 9110 10.1.1): this one closes, and says so."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server), timeout=10) as client:
        client.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n%s\r\n" % (2 * MIB, b"Expect: 100-continue\r\n" if expect else b""))
        if not expect:
            client.sendall(b"x" * (256 * 1024))  # some of the body: a client that sends it unasked
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    head = reply.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 413") and b"connection: close" in head, reply[:300]
    assert time.monotonic() - started < 2.5, time.monotonic() - started


def test_a_chunked_body_over_the_limit_gets_a_413_that_says_it_closes(server):
    """Left open by the review that made the sized 413 close: a chunked body's size is unknown at its headers, so
    the app reads up to the limit and answers 413 with the rest unread. That 413 said keep-alive, then gunicorn
    drained at most 64 KiB of the rest and closed anyway: a client trusting the keep-alive sent its next request
    into a closing connection (here it is pipelined behind the body: never answered). The 413 says close now;
    the next request on a new connection is served."""
    chunk = b"x" * (256 * 1024)
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8)) + b"0\r\n\r\n"  # 2 MiB
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server), timeout=10) as client:
        client.sendall(b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            client.sendall(body + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed while the rest was still on its way: what it said is read below
        reply = b""
        try:
            while chunk := client.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    head = reply.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 413"), reply[:300]
    assert b"connection: close" in head, reply[:300]
    assert reply.count(b"HTTP/1.1 ") == 1, reply[:600]  # the pipelined request is not taken for part of the body
    assert time.monotonic() - started < 3, time.monotonic() - started
    assert request(server, "GET", "/healthz").status == 200
