"""The server under a low open-file limit (`ulimit -n`, systemd's LimitNOFILE, docker's --ulimit nofile).

Found by a probe: under `ulimit -n 64`, 50 clients at once made a worker's accept() fail with EMFILE; gunicorn let
that end the worker ("Exception in worker process"), every connection it held reset (40 of 200 requests; 136 of 200
under `ulimit -n 32`). A worker now takes at most the connections its limit leaves (app/open_files.py), those still
closing counted, and a limit that leaves none stops the server at start in one line saying what to raise it to.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import subprocess

from app import launch

from .test_served_by_gunicorn import predict_body, request


def test_fifty_clients_at_once_are_all_served_under_ulimit_n_64(app_bundles, tmp_path):
    log = tmp_path / "gunicorn.log"
    served = launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                           "SHELFCAST_PREDICTION_LOG": str(tmp_path / "predictions.jsonl"),
                           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}, log, open_files=64)
    try:
        body = predict_body(served.port)

        def client(_: int) -> list:
            outcomes = []
            for _ in range(4):
                try:
                    outcomes.append(request(served.port, "POST", "/api/v1/predict", body,
                                            {"Content-Type": "application/json"}, timeout=60).status)
                except OSError as exc:
                    outcomes.append(type(exc).__name__)
            return outcomes

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            outcomes = collections.Counter(o for each in pool.map(client, range(50)) for o in each)
    finally:
        served.stop()
    text = log.read_text(encoding="utf-8")
    assert dict(outcomes) == {200: 200}, (dict(outcomes), text[-3000:])
    assert "Exception in worker process" not in text and "Too many open files" not in text, text[-3000:]
    assert "takes at most" in text and "the open-file limit is 64" in text, text[-3000:]


def test_a_limit_that_leaves_no_connection_stops_the_server_in_one_line(app_bundles, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in launch.NOT_INHERITED}
    env.update({"SHELFCAST_WORKERS": "2", "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                "SHELFCAST_BIND": f"127.0.0.1:{launch.free_port()}",
                "SHELFCAST_PREDICTION_LOG": str(tmp_path / "predictions.jsonl"),
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")})
    served = subprocess.run(launch.gunicorn_command(), cwd=launch.REPO, env=env, capture_output=True, text=True,
                            timeout=120, preexec_fn=launch.process_limits(None, 24))
    output = served.stdout + served.stderr
    refusals = [line for line in output.splitlines() if "cannot start" in line]
    assert served.returncode == 3, output[-3000:]
    assert refusals and "the open-file limit is 24" in refusals[0] and "raise it to at least" in refusals[0], output
    assert "Traceback" not in output, output[-3000:]
