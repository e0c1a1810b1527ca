"""Prediction events through `make serve`'s gunicorn when workers die or their number changes (slow).

Real gunicorn workers, a real Fluentd-protocol receiver, one event per answered request
(counted by request_id): kill -9 of a worker under load, and 4 workers stopped while
Fluentd is down, then 2 started with it up. Lost must be 0; duplicates are printed. Also:
each worker runs pinned to a core of its own, and the one that replaces a killed worker takes its core.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
import http.client
from pathlib import Path

import pytest

from app import launch
from app.events import TAG

pytestmark = pytest.mark.slow


def start_gunicorn(bundle: Path, fluentd_port: int, workdir: Path, workers: int, cores: set[int] | None = None,
                   log_level: str = "warning") -> launch.ServedApp:
    """gunicorn as `make serve` runs it, ready; on ``cores`` only if given."""
    return launch.start({"SHELFCAST_WORKERS": str(workers), "SHELFCAST_MODEL_DIR": str(bundle),
                         "FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(fluentd_port),
                         "SHELFCAST_EVENT_SPOOL": str(workdir / "spool"),
                         "PROMETHEUS_MULTIPROC_DIR": str(workdir / f"metrics-{workers}"),
                         "SHELFCAST_LOG_LEVEL": log_level}, workdir / f"gunicorn-{workers}.log", cores=cores)


def body(port: int) -> bytes:
    model = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/model", timeout=5).read())
    items = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/items?limit=1", timeout=5).read())
    return json.dumps({"instances": [{"store_nbr": model["stores"][0]["store_nbr"],
                                      "item_nbr": items["items"][0]["item_nbr"],
                                      "date": model["horizon"]["first_date"], "onpromotion": False}]}).encode()


def load(port: int, seconds: float, prefix: str, clients: int = 4) -> list[str]:
    """Request ids answered 200 by `clients` keep-alive clients sending back to back."""
    answered: list[str] = []
    lock = threading.Lock()
    payload = body(port)
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        connection, n = None, 0
        while time.monotonic() < stop_at:
            request_id = f"{prefix}-{index}-{n}"
            n += 1
            try:
                connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("POST", "/api/v1/predict", body=payload,
                                   headers={"Content-Type": "application/json", "X-Request-ID": request_id})
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    with lock:
                        answered.append(request_id)
            except OSError:  # the killed worker's connections break: not answered, not counted
                connection = None

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answered


def worker_pids(master: subprocess.Popen) -> list[int]:
    children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def received_by_request(receiver) -> collections.Counter:
    return collections.Counter(e["record"]["request_id"] for e in receiver.events() if e["tag"] == TAG)


def report(case: str, answered: list[str], received: collections.Counter) -> tuple[int, int]:
    lost = len(set(answered) - set(received))
    duplicated = sum(received[r] - 1 for r in answered if received[r] > 1)
    print(f"{case}: {len(answered)} answered, {lost} lost, {duplicated} duplicated")
    return lost, duplicated


def test_kill_9_of_a_worker_under_load_loses_no_answered_event(fluentd_receiver, app_bundles, tmp_path):
    served = start_gunicorn(app_bundles[0], fluentd_receiver.port, tmp_path, workers=2)
    try:
        killer = threading.Timer(1.5, lambda: os.kill(worker_pids(served.process)[0], signal.SIGKILL))
        killer.start()
        answered = load(served.port, 3.0, "k9")
    finally:
        served.stop()  # the surviving worker has claimed the dead one's segments meanwhile
    fluentd_receiver.stop()
    lost, _ = report("gunicorn kill -9", answered, received_by_request(fluentd_receiver))
    assert len(answered) > 100 and lost == 0


def logged_cores(served: launch.ServedApp, pids: list[int], timeout_s: float = 10) -> dict[int, int]:
    """The core each of ``pids`` logged at start (`worker <pid> runs on core <n>`); waits for all of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        log = served.log_path.read_text(encoding="utf-8")
        found = {int(pid): int(core) for pid, core in re.findall(r"worker (\d+) runs on core (\d+)", log)}
        if set(pids) <= set(found) or time.monotonic() > deadline:
            return {pid: found[pid] for pid in pids if pid in found}
        time.sleep(0.1)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_each_worker_has_a_core_of_its_own_and_a_replacement_takes_the_freed_one(fluentd_receiver, app_bundles,
                                                                                   tmp_path):
    two_cores = set(sorted(os.sched_getaffinity(0))[:2])  # as many workers as cores: they are pinned
    served = start_gunicorn(app_bundles[0], fluentd_receiver.port, tmp_path, workers=2, cores=two_cores,
                            log_level="info")
    try:
        cores = {pid: os.sched_getaffinity(pid) for pid in worker_pids(served.process)}
        assert sorted(len(c) for c in cores.values()) == [1, 1] and set.union(*cores.values()) == two_cores, cores
        # the worker on the higher core: were its core not freed, the tie would go to the lower one
        survivor, killed = sorted(cores, key=lambda pid: min(cores[pid]))
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            replacements = [pid for pid in worker_pids(served.process) if pid not in cores]
            if replacements and len(os.sched_getaffinity(replacements[0])) == 1:
                break
            assert time.monotonic() < deadline, "no pinned replacement worker"
            time.sleep(0.1)
        assert os.sched_getaffinity(replacements[0]) == cores[killed]
        assert os.sched_getaffinity(survivor) == cores[survivor]
        # operators see the placement in the log, as it is
        placed = {pid: {core} for pid, core in logged_cores(served, [survivor, killed, replacements[0]]).items()}
        assert placed == {survivor: cores[survivor], killed: cores[killed], replacements[0]: cores[killed]}, \
            served.log_tail()
    finally:
        served.stop()


def test_four_workers_then_two_deliver_every_event(fluentd_receiver, app_bundles, tmp_path):
    fluentd_receiver.stop()  # Fluentd down while 4 workers serve and stop
    served = start_gunicorn(app_bundles[0], fluentd_receiver.port, tmp_path, workers=4)
    try:
        answered = load(served.port, 2.0, "four")
    finally:
        served.stop()
    assert list((tmp_path / "spool").glob("*.jsonl")), "the events should wait in the spool"
    fluentd_receiver.start()
    served = start_gunicorn(app_bundles[0], fluentd_receiver.port, tmp_path, workers=2)
    try:
        deadline = time.monotonic() + 60
        while list((tmp_path / "spool").glob("*.jsonl")):
            assert time.monotonic() < deadline, "the two workers did not send the four workers' spool"
            time.sleep(0.2)
    finally:
        served.stop()
    fluentd_receiver.stop()
    lost, _ = report("gunicorn 4 -> 2 workers", answered, received_by_request(fluentd_receiver))
    assert len(answered) > 100 and lost == 0


def test_servers_sharing_a_spool_folder_must_send_to_one_fluentd(fluentd_receiver, closed_port, app_bundles, tmp_path):
    """Two servers of one checkout share `logs/spool` unless told otherwise, and any process sends any segment of its
    spool: a second server given another Fluentd is refused while the first runs (before, a probe found 631 of one
    server's 1,562 events at the other's Fluentd); one given the same Fluentd shares it, nothing lost."""

    def serve(name: str, port: int) -> launch.ServedApp:
        return launch.start({"SHELFCAST_WORKERS": "1", "SHELFCAST_MODEL_DIR": str(app_bundles[0]),
                             "FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(port),
                             "SHELFCAST_EVENT_SPOOL": str(tmp_path / "spool"),
                             "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"metrics-{name}"),
                             "SHELFCAST_LOG_LEVEL": "warning"}, tmp_path / f"gunicorn-{name}.log", timeout_s=60)

    first = serve("first", fluentd_receiver.port)
    try:
        with pytest.raises(launch.ServerNotReady, match="give each its own SHELFCAST_EVENT_SPOOL"):
            serve("other-fluentd", closed_port).stop()
        same = serve("same-fluentd", fluentd_receiver.port)
        try:
            answered = load(first.port, 1.0, "first", clients=2) + load(same.port, 1.0, "same", clients=2)
        finally:
            same.stop()
    finally:
        first.stop()
    serve("other-fluentd-later", closed_port).stop()  # once those servers stopped, the spool is free for another
    fluentd_receiver.stop()
    lost, _ = report("two servers, one spool, one Fluentd", answered, received_by_request(fluentd_receiver))
    assert len(answered) > 50 and lost == 0


def test_workers_stopping_together_with_fluentd_down_say_once_what_is_left_unsent(fluentd_receiver, app_bundles,
                                                                                 tmp_path):
    """Each exiting worker walked the spool and logged its own `left unsent` line: 3 workers, 3 lines, counts rising
    line to line. Now only the last process to leave the spool says it, counting every segment left."""
    fluentd_receiver.stop()
    served = start_gunicorn(app_bundles[0], fluentd_receiver.port, tmp_path, workers=3)
    try:
        answered = load(served.port, 1.5, "left", clients=6)
    finally:
        served.stop()
    segments = list((tmp_path / "spool").glob("*.jsonl"))
    lines = [line for line in served.log_path.read_text(encoding="utf-8").splitlines() if "left unsent" in line]
    assert len(answered) > 50 and len(segments) >= 2, (len(answered), segments)
    assert len(lines) == 1, lines
    size = sum(path.stat().st_size for path in segments)
    spool = (tmp_path / "spool").resolve()
    assert f"{len(segments)} segment(s) ({size} bytes) left unsent in the event spool {spool}" in lines[0]
