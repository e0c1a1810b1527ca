"""Prediction events through real gunicorn to the real Fluentd-protocol receiver when servers stop, die or restart
and Fluentd is down: README "Prediction logging", the rows "Measured against the real receiver" that cite this
script.

Each case, on 127.0.0.1 with a spool and a receiver of its own: the app as `make serve` runs it (app.launch), the
receiver of tests/fluentd_receiver (stopped and started again on its port for an outage), and app_load's
keep-alive clients, each request with an X-Request-ID of the case. Counted per case: requests answered 200;
delivered, the answered requests whose event the receiver holds; duplicated, the extra copies received (by
`event_id`); counted dropped, `shelfcast_prediction_events_total{outcome="dropped"}` summed over every server of
the case (their /metrics folders, read once they stopped); uncounted lost, the answered requests with no event, or
the events spooled (outcome="spooled") and never received, less those counted as dropped. The README promises
at-least-once delivery with every loss counted: the script exits 1 if a case lost an event uncounted, answered
nothing, or left events in its spool; 2 if it cannot run.

    python benchmarks/event_delivery.py --bundle DIR [--cases restart,sigterm,...] [--seconds 3] [--clients 4]
        [--port-base N]

Cases (--cases, default all): restart (4 workers stop with Fluentd down, 2 start with it up), restart-one (the
same, 1 starts), sigterm (SIGTERM of the master under load), kill-worker (kill -9 of a worker under load),
kill-master (kill -9 of the master under load: its workers exit and flush; a new server starts), sighup (SIGHUP
under load with Fluentd down), two-servers (two servers of 2 workers on one spool, one stopped mid-load),
spool-limit and spool-limit-3mb (2 workers, Fluentd down, a 300 KB or 3 MB spool limit; then a server with
Fluentd up sends what is left).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app_load  # noqa: E402 - benchmarks/ is on sys.path (the script's folder), the repository first (above)
from app import launch  # noqa: E402 - after sys.path
from app.events import TAG  # noqa: E402 - after sys.path
from app.metrics_files import exposition  # noqa: E402 - after sys.path
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402 - after sys.path
from tests.fluentd_receiver.process import RECEIVER_SCRIPT, FluentdReceiver, why_unavailable  # noqa: E402 - after sys.path

DRAIN_TIMEOUT_S = 60.0  # how long a server with Fluentd up may take to send what the spool holds
ORPHAN_EXIT_TIMEOUT_S = 45.0  # a killed master's workers notice and exit (gunicorn checks its parent each second)
COLUMNS = ("answered", "delivered", "duplicated", "counted dropped", "uncounted lost")


class CannotRun(RuntimeError):
    """The benchmark cannot run here; the message says what is missing."""


@dataclass
class Figures:
    """One case's counts; `problems`: what breaks the README's promise."""

    case: str
    answered: int
    delivered: int
    duplicated: int
    counted_dropped: int
    left_in_spool: int
    spooled: int = 0  # events the servers wrote into the spool (their /metrics), answered or not
    received: int = 0  # distinct events (by event_id) the receiver holds, answered or not
    problems: list[str] = field(default_factory=list)

    @property
    def uncounted_lost(self) -> int:
        """Answered requests without an event, or spooled events never received, beyond those counted dropped
        (either way: an event whose request failed may be the one dropped)."""
        return max(0, self.answered - self.delivered - self.counted_dropped,
                   self.spooled - self.received - self.counted_dropped)

    def judge(self) -> "Figures":
        if self.answered == 0:
            self.problems.append("no request answered: the case measured nothing")
        if self.uncounted_lost:
            self.problems.append(f"{self.uncounted_lost} answered events lost and not counted as dropped")
        if self.left_in_spool:
            self.problems.append(f"{self.left_in_spool} segment(s) still in the spool after the last server stopped")
        return self


class Case:
    """One case's workdir, receiver, servers (each with its own /metrics folder) and load."""

    def __init__(self, name: str, bundle: Path, workdir: Path, clients: int, ports: Callable[[], int | None]):
        self.name, self.bundle, self.workdir, self.clients = name, bundle, workdir, clients
        self._ports = ports
        self.spool = workdir / "spool"
        self.receiver = FluentdReceiver([shutil.which("node") or "node", str(RECEIVER_SCRIPT)],
                                        workdir / "received.jsonl", port=ports() or 0)
        self.receiver.start()
        self.metrics_dirs: list[Path] = []
        self.servers: list[launch.ServedApp] = []  # every server started, stopped again by `close`
        self.answered: set[str] = set()
        self._bodies: list[bytes] | None = None
        self._lock = threading.Lock()  # two servers' loads add their answers from two threads

    def serve(self, workers: int, spool_max_bytes: int | None = None) -> launch.ServedApp:
        metrics = self.workdir / f"metrics-{len(self.metrics_dirs)}"
        self.metrics_dirs.append(metrics)
        settings = {"SHELFCAST_WORKERS": str(workers), "SHELFCAST_MODEL_DIR": str(self.bundle),
                    "FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(self.receiver.port),
                    "SHELFCAST_EVENT_SPOOL": str(self.spool), "PROMETHEUS_MULTIPROC_DIR": str(metrics),
                    "SHELFCAST_PREDICTION_LOG": str(self.workdir / "predictions.jsonl"),
                    "SHELFCAST_LOG_LEVEL": "warning"}
        if spool_max_bytes is not None:
            settings["SHELFCAST_EVENT_SPOOL_MAX_BYTES"] = str(spool_max_bytes)
        try:
            served = launch.start(settings, self.workdir / f"gunicorn-{len(self.metrics_dirs)}.log", port=self._ports())
        except launch.ServerNotReady as exc:
            raise CannotRun(str(exc)) from None
        self.servers.append(served)
        return served

    def close(self) -> None:
        """Every server this case started stopped (those stopped already, at once), then the receiver killed, each
        however the one before ended: a Ctrl-C 9 s into two-servers landed in the first server's stop, and the second
        served on after the script exited, its spool in the work folder the script removed."""
        with contextlib.ExitStack() as stopping:
            stopping.callback(self.receiver.kill)
            for served in self.servers:
                stopping.callback(served.stop)

    def load(self, served: launch.ServedApp, seconds: float, during: Callable[[], None] | None = None,
             at_s: float = 0.0, clients: int | None = None) -> None:
        """`clients` keep-alive clients for `seconds`; `during` runs `at_s` into the load (app_load's clients start
        1 s after they are forked)."""
        bodies = self.bodies(served)
        timer = threading.Timer(1.0 + at_s, during) if during is not None else None
        if timer is not None:
            timer.start()
        try:
            _, _, answered, _ = app_load.run_clients(served.url, bodies, clients or self.clients, seconds,
                                                     f"{self.name}-{served.port}-")
        finally:
            if timer is not None:
                timer.join()
        with self._lock:
            self.answered |= answered

    def bodies(self, served: launch.ServedApp) -> list[bytes]:
        if self._bodies is None:
            self._bodies = app_load.request_bodies(served.url)
        return self._bodies

    def drain(self, workers: int, spool_max_bytes: int | None = None) -> None:
        """A server with Fluentd up, until the spool holds no segment (or DRAIN_TIMEOUT_S), then stopped."""
        served = self.serve(workers, spool_max_bytes)
        try:
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while segments(self.spool) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            served.stop()

    def figures(self) -> Figures:
        """Counted once every server and the receiver have stopped."""
        if self.receiver.process is not None:
            self.receiver.stop()
        copies: collections.Counter[str] = collections.Counter()
        requests = set()
        for event in self.receiver.events():
            record = event.get("record", {})
            if event.get("tag") == TAG and str(record.get("request_id", "")).startswith(f"{self.name}-"):
                copies[record["event_id"]] += 1
                requests.add(record["request_id"])
        folders = [folder for folder in self.metrics_dirs if folder.exists()]
        return Figures(self.name, len(self.answered), len(self.answered & requests),
                       sum(n - 1 for n in copies.values()), sum(event_count(f, "dropped") for f in folders),
                       len(segments(self.spool)), sum(event_count(f, "spooled") for f in folders), len(copies)).judge()


def segments(spool: Path) -> list[Path]:
    return list(spool.glob("*.jsonl")) if spool.exists() else []


def event_count(metrics_dir: Path, outcome: str) -> int:
    """shelfcast_prediction_events_total{outcome=...} as the server's /metrics reads it from its folder."""
    text = exposition(metrics_dir).decode()
    return int(sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == "shelfcast_prediction_events_total" and sample.labels.get("outcome") == outcome))


def workers_of(served: launch.ServedApp) -> list[int]:
    return app_load.worker_pids(served.pid)


def wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            raise CannotRun(f"processes {pids} still running {timeout_s:g} s after their master was killed")
        time.sleep(0.2)


# --- the cases: each takes a Case and the load's seconds ------------------------------------------------------


def restart(case: Case, seconds: float, then: int = 2) -> None:
    """4 workers serve and stop with Fluentd down; `then` workers start with it up and send the spool."""
    case.receiver.stop()
    served = case.serve(4)
    try:
        case.load(served, seconds)
    finally:
        served.stop()
    case.receiver.start()
    case.drain(then)


def sigterm(case: Case, seconds: float) -> None:
    served = case.serve(2)
    try:
        case.load(served, seconds, during=lambda: served.process.terminate(), at_s=seconds / 2)
    finally:
        served.stop()


def kill_worker(case: Case, seconds: float) -> None:
    served = case.serve(2)
    try:
        case.load(served, seconds, during=lambda: os.kill(workers_of(served)[0], signal.SIGKILL), at_s=seconds / 2)
    finally:
        served.stop()


def kill_master(case: Case, seconds: float) -> None:
    """kill -9 of the master: its workers find it gone, exit and flush; a new server sends what they left."""
    served = case.serve(2)
    orphans: list[int] = []

    def kill() -> None:
        orphans.extend(workers_of(served))
        served.process.kill()

    try:
        case.load(served, seconds, during=kill, at_s=seconds / 2)
    finally:
        served.stop()
    wait_gone(orphans, ORPHAN_EXIT_TIMEOUT_S)
    case.drain(2)


def sighup(case: Case, seconds: float) -> None:
    """SIGHUP (new workers, the old ones stop) under load with Fluentd down; then a server with it up."""
    case.receiver.stop()
    served = case.serve(2)
    try:
        case.load(served, seconds, during=lambda: served.process.send_signal(signal.SIGHUP), at_s=seconds / 2)
    finally:
        served.stop()
    case.receiver.start()
    case.drain(2)


def two_servers(case: Case, seconds: float) -> None:
    """Two servers of 2 workers on one spool and one Fluentd; the first stopped mid-load."""
    first, second = case.serve(2), case.serve(2)
    try:
        case.bodies(first)  # before the two loads' threads
        beside = threading.Thread(target=case.load, args=(second, seconds),
                                  kwargs={"clients": max(1, case.clients // 2)})
        beside.start()
        case.load(first, seconds, during=lambda: first.process.terminate(), at_s=seconds / 2,
                  clients=max(1, case.clients // 2))
        beside.join()
    finally:
        first.stop()
        second.stop()


def spool_limit(case: Case, seconds: float, limit: int = 300_000) -> None:
    """2 workers with Fluentd down and a small spool limit; then a server under the same limit with Fluentd up."""
    case.receiver.stop()
    served = case.serve(2, spool_max_bytes=limit)
    try:
        case.load(served, seconds)
    finally:
        served.stop()
    case.receiver.start()
    case.drain(2, spool_max_bytes=limit)


CASES: dict[str, Callable[[Case, float], None]] = {
    "restart": restart,
    "restart-one": lambda case, seconds: restart(case, seconds, then=1),
    "sigterm": sigterm,
    "kill-worker": kill_worker,
    "kill-master": kill_master,
    "sighup": sighup,
    "two-servers": two_servers,
    "spool-limit": spool_limit,
    "spool-limit-3mb": lambda case, seconds: spool_limit(case, seconds, limit=3_000_000),
}


def run_case(name: str, bundle: Path, seconds: float, clients: int, ports: Callable[[], int | None]) -> Figures:
    workdir = Path(tempfile.mkdtemp(prefix=f"shelfcast-events-{name}-"))
    case = None
    try:
        case = Case(name, bundle, workdir, clients, ports)
        CASES[name](case, seconds)
        return case.figures()
    finally:
        try:
            if case is not None:
                case.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def table(figures: Figures) -> str:
    values = (figures.answered, figures.delivered, figures.duplicated, figures.counted_dropped, figures.uncounted_lost)
    lines = [f"{figures.case}:", "  " + " | ".join(f"{c:>15}" for c in COLUMNS),
             "  " + " | ".join(f"{v:>15,}" for v in values)]
    lines += [f"  BROKEN: {problem}" for problem in figures.problems]
    return "\n".join(lines)


def summary(results: list[Figures]) -> str:
    broken = [f.case for f in results if f.problems]
    return (f"event delivery: {len(results)} case(s), {sum(f.answered for f in results):,} answered, "
            f"{sum(f.duplicated for f in results):,} duplicated, {sum(f.counted_dropped for f in results):,} counted "
            f"dropped, {sum(f.uncounted_lost for f in results):,} uncounted lost: "
            + (f"BROKEN in {', '.join(broken)}" if broken else "as the README promises"))


def port_source(base: int) -> Callable[[], int | None]:
    """Ports from `base` upwards (a range agreed on a shared machine); with 0, None: the kernel picks."""
    if base == 0:
        return lambda: None
    counter = iter(range(base, 65536))
    return lambda: next(counter)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "production", help="model bundle to serve")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--seconds", type=float, default=3.0, help="load per server phase (default 3)")
    parser.add_argument("--clients", type=int, default=4, help="keep-alive clients (default 4)")
    parser.add_argument("--port-base", type=int, default=0,
                        help="take TCP ports from here upwards (default 0: free ports the kernel picks)")
    args = parser.parse_args(argv)
    # no clients or no seconds: every case started its servers only to be judged "no request answered" at the end;
    # a --port-base past the last port ended in StopIteration from the port counter
    if args.clients < 1 or not args.seconds > 0:
        parser.error(f"--clients must be at least 1 and --seconds more than 0, got {args.clients} and "
                     f"{args.seconds:g}")
    if not 0 <= args.port_base <= 65535:
        parser.error(f"--port-base must be 0 (free ports) or a port, 1 to 65535, got {args.port_base}")
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown or not names:
        parser.error(f"--cases: unknown case {unknown[0]!r}" if unknown else "--cases: none given")
    try:
        reason = why_unavailable()
        if reason:
            raise CannotRun(reason)
        app_load.check_bundle(args.bundle)
        ports = port_source(args.port_base)
        results = []
        for name in names:
            results.append(run_case(name, args.bundle.resolve(), args.seconds, args.clients, ports))
            print(table(results[-1]), flush=True)
    except (CannotRun, app_load.BenchmarkError) as exc:
        print(f"event_delivery: error: {exc}", file=sys.stderr)
        return 2
    print(summary(results))
    return 1 if any(f.problems for f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
