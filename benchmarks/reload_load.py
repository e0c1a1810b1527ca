"""Hot reload of a large bundle under load: gunicorn as `make serve` runs it, clients sending one-row predicts.

Two bundles A and B (e.g. two trains at Favorita's width, 54 stores x ~4,100 items, with different seeds) are
put in a release store under WORKDIR/models (pipeline/release_store.py); A is installed as production and
served by 2 workers hot reloading every --reload-s. N client threads send one-row predicts back to back on
keep-alive connections. After --before-s, release 2 (B) is installed as production the way `release`/promote
do it (ReleaseStore.install: a verified copy swapped in atomically); after --after-s, gunicorn gets SIGHUP (every
worker replaced) and the clients run --after-s more.

Reported: failed requests (non-200 or a connection error), latency p50/p99/max per phase, when the last
answer from A came after the swap (both workers serve B), each worker's peak RSS, worker timeouts in gunicorn's
log, and answers that are neither A's nor B's forecast (a half-loaded model).

    python benchmarks/reload_load.py --a BUNDLE_A --b BUNDLE_B --workdir DIR [--clients 4]  (prints one JSON object)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import app_load
import common

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app import launch  # noqa: E402 - the repository goes on sys.path first
from pipeline.release_store import PRODUCTION, ReleaseStore  # noqa: E402 - the repository goes on sys.path first


def client(port: int, body: bytes, stop: threading.Event, out: list) -> None:
    """One-row predicts back to back on one keep-alive connection: (sent at, seconds, status, (version, units))."""
    conn = None
    while not stop.is_set():
        started = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("POST", "/api/v1/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            answer = None
            if response.status == 200:
                doc = json.loads(data)
                answer = (doc["model"]["version"], doc["predictions"][0]["unit_sales"])
            out.append((started, time.monotonic() - started, response.status, answer))
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            out.append((started, time.monotonic() - started, type(exc).__name__, None))
            if conn is not None:
                conn.close()
            conn = None


def sample_rss(pid: int, stop: threading.Event, peaks: dict) -> None:
    """Each worker's peak VmRSS (GB), by worker pid, every 50 ms."""
    while not stop.is_set():
        for worker in app_load.worker_pids(pid):
            rss = app_load.process_rss_gb(worker)
            if rss is not None:
                peaks[worker] = max(peaks.get(worker, 0.0), rss)
        time.sleep(0.05)


def phase_figures(records: list, start: float, end: float) -> dict:
    rows = [r for r in records if start <= r[0] < end]
    latencies = sorted(r[1] * 1000 for r in rows)
    return {"requests": len(rows), "failed": sum(r[2] != 200 for r in rows),
            "p50_ms": round(common.percentile(latencies, 50), 2) if latencies else None,
            "p99_ms": round(common.percentile(latencies, 99), 2) if latencies else None,
            "max_ms": round(latencies[-1], 1) if latencies else None}


def run(a: Path, b: Path, workdir: Path, clients: int, before_s: float, after_s: float, reload_s: float) -> dict:
    store = ReleaseStore(workdir / "models")
    for version, bundle in (("1", a), ("2", b)):
        if not store.release_dir(version).is_dir():
            store.add_release(version, bundle)
    store.install(PRODUCTION, "1")
    started = time.monotonic()
    app = launch.start({"SHELFCAST_MODEL_DIR": str(store.variant_dir(PRODUCTION)), "SHELFCAST_WORKERS": "2",
                        "SHELFCAST_RELOAD_INTERVAL_S": str(reload_s), "SHELFCAST_LOG_LEVEL": "info",
                        "SHELFCAST_PREDICTION_LOG": str(workdir / "events.jsonl"),
                        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics")},
                       workdir / "gunicorn.log", timeout_s=300)
    figures = {"ready_s": round(time.monotonic() - started, 1)}
    try:
        with urllib.request.urlopen(f"{app.url}/api/v1/model", timeout=30) as response:
            model = json.load(response)
        with urllib.request.urlopen(f"{app.url}/api/v1/items?limit=1", timeout=30) as response:
            items = [item["item_nbr"] for item in json.load(response)["items"]]
        body = json.dumps({"instances": [{"store_nbr": model["stores"][0]["store_nbr"], "item_nbr": items[0],
                                          "date": model["horizon"]["first_date"], "onpromotion": False}]}).encode()
        stop, records, peaks = threading.Event(), [], {}
        threads = [threading.Thread(target=client, args=(app.port, body, stop, records)) for _ in range(clients)]
        threads.append(threading.Thread(target=sample_rss, args=(app.pid, stop, peaks)))
        for thread in threads:
            thread.start()
        t0 = time.monotonic()
        time.sleep(before_s)
        swap_at = time.monotonic()
        store.install(PRODUCTION, "2")
        swapped_at = time.monotonic()
        time.sleep(after_s)
        rss_settled = {pid: round(gb, 2) for pid in app_load.worker_pids(app.pid)
                       if (gb := app_load.process_rss_gb(pid)) is not None}
        hup_at = time.monotonic()
        os.kill(app.pid, signal.SIGHUP)
        time.sleep(after_s)
        stop.set()
        for thread in threads:
            thread.join()
        end = time.monotonic()
        answers = {r[3] for r in records if r[3] is not None}
        before = {r[3] for r in records if r[0] < swap_at and r[3] is not None}
        old = before.pop() if len(before) == 1 else None
        new = {r[3] for r in records if r[0] > swapped_at + after_s / 2 and r[3] is not None}
        last_old = max((r[0] + r[1] for r in records if r[3] == old and r[0] >= swap_at), default=swapped_at)
        log = (workdir / "gunicorn.log").read_text(errors="replace")
        figures.update({
            "before": phase_figures(records, t0, swap_at), "during_reload": phase_figures(records, swap_at, hup_at),
            "install_to_last_old_answer_plus_1s": phase_figures(records, swap_at, last_old + 1),
            "after_sighup": phase_figures(records, hup_at, end), "install_s": round(swapped_at - swap_at, 2),
            "last_old_answer_after_install_s": round(last_old - swapped_at, 2),
            "answers": sorted(map(list, answers)), "unexpected_answers": len(answers - {old} - new),
            "peak_rss_gb_per_worker": {pid: round(gb, 2) for pid, gb in peaks.items()},
            "rss_gb_per_worker_before_sighup": rss_settled,
            "worker_timeouts": log.count("WORKER TIMEOUT"),
            "errors": [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line][:10],
            "failures": [(round(r[0] - swap_at, 2), r[2]) for r in records if r[2] != 200][:10],
            "sighup_after_install_s": round(hup_at - swapped_at, 2),
            "old_new_per_second_after_install": [
                (sum(r[3] == old for r in records if second <= r[0] - swapped_at < second + 1),
                 sum(r[3] in new for r in records if second <= r[0] - swapped_at < second + 1))
                for second in range(int(end - swapped_at) + 1)]})
    finally:
        app.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, required=True)
    parser.add_argument("--b", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--before-s", type=float, default=10)
    parser.add_argument("--after-s", type=float, default=40)
    parser.add_argument("--reload-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args.a, args.b, args.workdir, args.clients, args.before_s, args.after_s, args.reload_s),
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
