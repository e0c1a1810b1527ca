"""S1 of BENCHMARKS.md: POST /api/v1/predict (one row), 8 concurrent clients on loopback, 30 s,
the app logging every prediction to a real Fluentd forward-protocol receiver.

What runs, all on 127.0.0.1:
  * the receiver: tests/fluentd_receiver (@fluent-org/logger's FluentServer under Node.js),
    writing every event it acknowledges to a JSON-lines file;
  * the app exactly as `make serve` runs it: gunicorn with app/gunicorn_conf.py, the bundle
    from --bundle (default models/production), FLUENTD_HOST/FLUENTD_PORT pointing at the receiver;
  * N client processes, each one keep-alive connection sending one-row requests back to back
    (HTTP/1.1 on the socket: cheap, as the clients share the server's cores).

After the timed run the app is stopped (SIGTERM: workers flush their events), then the
receiver; the events carrying this run's request ids are counted. Figures: requests/s, p50
and p99 latency as the clients see it, errors (non-200 or connection failures), and events
received versus requests answered (target: p99 <= 20 ms, 0 errors, events = requests).
Also reported: how the clients' keep-alive connections were spread over the workers,
sampled mid-run (Linux /proc). A connection stays with the worker that accepted it, and
who accepts is a race, so a run can put 6 of 8 clients on one worker: its queue, not the
code, then sets the p99. Compare runs with the same split, or several runs.

    python benchmarks/app_load.py [--bundle DIR] [--clients 8] [--seconds 30] [--json]

`--server-floor` runs the same clients against the same server settings serving a trivial app
(benchmarks/floor_app.py), and `--cpu-per-request N` the app in one process without a server: together
they split S1's CPU into the server's, the app's, and what running in a busy worker adds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import common
import floor_app
from app import launch

REPO = Path(__file__).resolve().parents[1]
RECEIVER = REPO / "tests" / "fluentd_receiver" / "receiver.js"
TAG = "shelfcast.prediction"
TARGET_P99_MS = 20.0


class BenchmarkError(RuntimeError):
    """The benchmark cannot run; the message says what is missing."""


def start_receiver(output: Path) -> tuple[subprocess.Popen, int]:
    node = subprocess.run(["which", "node"], capture_output=True, text=True).stdout.strip()
    if not node:
        raise BenchmarkError("node not found: S1 logs to the Node.js Fluentd receiver (tests/fluentd_receiver)")
    if not (RECEIVER.parent / "node_modules" / "@fluent-org" / "logger").is_dir():
        raise BenchmarkError("the Fluentd receiver is not installed: run scripts/install_test_services.sh")
    process = subprocess.Popen([node, str(RECEIVER), "--port", "0", "--output", str(output)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    if not line.startswith("ready "):
        process.kill()
        raise BenchmarkError(f"the Fluentd receiver did not start: {line!r} {process.stderr.read()[:500]}")
    return process, int(line.split()[1])


def start_app(bundle: Path, fluentd_port: int, workdir: Path, workers: int, threads: int) -> launch.ServedApp:
    """The app as `make serve` runs it, logging to the receiver at `fluentd_port`."""
    try:
        return launch.start({"SHELFCAST_MODEL_DIR": str(bundle), "FLUENTD_HOST": "127.0.0.1",
                             "FLUENTD_PORT": str(fluentd_port), "SHELFCAST_EVENT_SPOOL": str(workdir / "spool"),
                             "SHELFCAST_PREDICTION_LOG": str(workdir / "predictions.jsonl"),
                             "SHELFCAST_WORKERS": str(workers), "SHELFCAST_THREADS": str(threads),
                             "SHELFCAST_LOG_LEVEL": "warning"}, workdir / "gunicorn.log")
    except launch.ServerNotReady as exc:
        raise BenchmarkError(str(exc)) from None


def request_bodies(url: str, count: int = 256, client=None) -> list[bytes]:
    """One-row bodies over the model's stores, items and horizon days (deterministic); from the app at
    `url`, or through a Flask test `client`."""
    def get(path: str) -> dict:
        if client is not None:
            return client.get(path).get_json()
        with urllib.request.urlopen(f"{url}{path}", timeout=10) as response:
            return json.loads(response.read())

    model = get("/api/v1/model")
    items = [i["item_nbr"] for i in get("/api/v1/items?limit=50")["items"]]
    stores = [store["store_nbr"] for store in model["stores"]]
    start = dt.date.fromisoformat(model["horizon"]["first_date"])
    days = [(start + dt.timedelta(days=k)).isoformat() for k in range(model["horizon"]["days"])]
    return [json.dumps({"instances": [{"store_nbr": stores[k % len(stores)], "item_nbr": items[(k * 7) % len(items)],
                                       "date": days[k % len(days)], "onpromotion": k % 5 == 0}]}).encode()
            for k in range(count)]


class ProtocolError(OSError):
    """A response this client cannot read (no Content-Length, a closed connection): counted as an error."""


def read_response(sock: socket.socket) -> tuple[int, bool]:
    """(status, keep-alive) of one HTTP/1.1 response on `sock`, its body read and discarded."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError("connection closed before a response")
        data += chunk
    status_line, *header_lines = data[:end].split(b"\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if b"content-length" not in headers:
        raise ProtocolError(f"no Content-Length in {status_line!r}")
    missing = end + 4 + int(headers[b"content-length"]) - len(data)
    while missing > 0:
        chunk = sock.recv(missing)
        if not chunk:
            raise ProtocolError("connection closed inside a response body")
        missing -= len(chunk)
    if missing < 0:
        raise ProtocolError("more bytes than the response holds (nothing was pipelined)")
    return int(status_line.split(b" ", 2)[1]), headers.get(b"connection") != b"close"


def connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def client(index: int, host: str, port: int, bodies: list[bytes], start_at: float, stop_at: float, prefix: str,
           results) -> None:
    """One client: a keep-alive connection, requests back to back until stop_at; latencies in seconds.

    HTTP/1.1 written and read on the socket directly: http.client (header objects, an email parser per
    response) cost the client ~0.4 ms of CPU a request, CPU the server under test shares on a 2-core machine."""
    latencies: list[float] = []
    errors = 0
    answered: list[str] = []
    head = f"POST /api/v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n".encode()
    sock: socket.socket | None = None  # connected by the first request, inside its time, as a browser would
    n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < stop_at:
        request_id = f"{prefix}{index}-{n}"
        body = bodies[(index * 31 + n) % len(bodies)]
        request = b"%sContent-Length: %d\r\nX-Request-ID: %s\r\n\r\n%s" % (head, len(body), request_id.encode(), body)
        n += 1
        began = time.perf_counter()
        try:
            sock = sock or connect(host, port)
            sock.sendall(request)
            status, keep_alive = read_response(sock)
            ok = status == 200
        except OSError:
            ok = keep_alive = False
        latencies.append(time.perf_counter() - began)
        if ok:
            answered.append(request_id)
        else:
            errors += 1
        if not keep_alive and sock is not None:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    results.put((latencies, errors, answered))


CLIENTS_START_AFTER_S = 1.0  # run_clients' processes are forked, then all start together this long after the call


def run_clients(url: str, bodies: list[bytes], clients: int, seconds: float,
                prefix: str) -> tuple[list[float], int, set[str], float]:
    """(latencies, errors, answered request ids, client CPU seconds): `clients` processes, each one connection."""
    host, port = url.removeprefix("http://").split(":")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.time() + CLIENTS_START_AFTER_S
    stop_at = start_at + seconds
    processes = [context.Process(target=client, args=(k, host, int(port), bodies, start_at, stop_at, prefix, results))
                 for k in range(clients)]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for process in processes:
        process.start()
    collected = [results.get(timeout=seconds + 120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the clients, now reaped
    client_cpu_s = (children.ru_utime + children.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
    latencies = [x for c in collected for x in c[0]]
    return latencies, sum(c[1] for c in collected), {r for c in collected for r in c[2]}, client_cpu_s


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (field 3 onwards: state, ppid, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def worker_pids(app_pid: int) -> list[int]:
    """The gunicorn workers: the processes whose parent is the master at `app_pid` (Linux /proc). Any other
    process may end while the list is read (a busy CI runner starts and ends thousands): it is skipped."""
    workers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = _stat_fields(int(entry.name))[1]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if parent == str(app_pid):
                workers.append(int(entry.name))
    return workers


def workers_cpu(app_pid: int) -> tuple[float, list[str]] | None:
    """(CPU seconds the workers have used so far, user and system, each worker's cores), or None without Linux /proc."""
    try:
        pids = worker_pids(app_pid)
        ticks = sum(int(fields[11]) + int(fields[12]) for fields in map(_stat_fields, pids))  # utime, stime
        cores = [",".join(map(str, sorted(os.sched_getaffinity(pid)))) for pid in pids]
    except (OSError, IndexError, ValueError):  # a process gone mid-read, or no Linux /proc
        return None
    return ticks / os.sysconf("SC_CLK_TCK"), cores


def process_rss_gb(pid: int) -> float | None:
    """A process's resident memory now, in GB (VmRSS, Linux /proc); None where it cannot be read."""
    try:
        return int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("VmRSS:")).split()[1]) / 1024 ** 2
    except (OSError, StopIteration, IndexError, ValueError):  # a process gone mid-read, or no Linux /proc
        return None


def workers_rss_gb(app_pid: int) -> list[float]:
    """Each worker's resident memory now, in GB; [] where one cannot be read."""
    sizes = [process_rss_gb(pid) for pid in worker_pids(app_pid)]
    return [] if None in sizes else sizes


def connections_per_worker(app_pid: int, port: int) -> list[int]:
    """Established connections to `port` held by each worker of the gunicorn at `app_pid`, largest
    first ([] where /proc is not Linux's)."""
    try:
        workers = worker_pids(app_pid)
        established = launch.socket_inodes(port, launch.ESTABLISHED)
        if established is None:
            return []
        counts = [len(socket_inodes_of(pid) & established) for pid in workers]
    except (OSError, IndexError, ValueError):  # a process gone mid-read, or no Linux /proc
        return []
    return sorted(counts, reverse=True)


def socket_inodes_of(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds. A descriptor closed between the listing and its read is
    skipped: under load a worker opens and closes files all the time (a whole sample was lost to one such fd)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def stop(process: subprocess.Popen, timeout_s: float) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def received_events(output: Path, prefix: str = "s1-") -> tuple[int, int, set[str]]:
    """(events of this run, duplicated event ids, request ids seen) from the receiver's file."""
    count, seen_ids, request_ids = 0, set(), set()
    duplicates = 0
    if output.exists():
        for line in output.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            record = event.get("record", {})
            if event.get("tag") != TAG or not str(record.get("request_id", "")).startswith(prefix):
                continue
            count += 1
            duplicates += record.get("event_id") in seen_ids
            seen_ids.add(record.get("event_id"))
            request_ids.add(record["request_id"])
    return count, duplicates, request_ids


def timed_load(app: launch.ServedApp, bodies: list[bytes], clients: int, seconds: float,
               warm_up_s: float) -> dict:
    """Untimed warm-up, then the timed run: latencies and errors as the clients see them, the connection split
    sampled mid-run, and the workers' CPU over the timed run per answered request."""
    # Not timed: fills caches, opens connections.
    warm_up = run_clients(app.url, bodies, clients, warm_up_s, "s1-warm-")
    split: list[list[int]] = []  # sampled mid-run, while every client holds its connection
    sampler = threading.Timer(1.0 + seconds / 2, lambda: split.append(connections_per_worker(app.pid, app.port)))
    sampler.start()
    cpu_before = workers_cpu(app.pid)
    latencies, errors, answered, client_cpu_s = run_clients(app.url, bodies, clients, seconds, "s1-run-")
    cpu_after = workers_cpu(app.pid)
    sampler.cancel()
    # client start-up is included (the workers idle then)
    worker_cpu_ms = (1e3 * (cpu_after[0] - cpu_before[0]) / len(latencies)
                     if cpu_before and cpu_after and latencies else None)
    return {
        "requests": len(latencies), "seconds": seconds, "requests_per_s": len(latencies) / seconds,
        "p50_ms": common.percentile(latencies, 50) * 1e3, "p99_ms": common.percentile(latencies, 99) * 1e3,
        "errors": errors, "answered": answered | warm_up[2],
        "clients": clients, "connections_per_worker": split[0] if split else [],
        "worker_cpu_ms_per_request": worker_cpu_ms, "worker_cores": cpu_after[1] if cpu_after else [],
        "client_cpu_ms_per_request": 1e3 * client_cpu_s / len(latencies) if latencies else None,
    }


def check_bundle(bundle: Path) -> None:
    """BenchmarkError, in one line saying what to run first, unless ``bundle`` is a model bundle (a fresh clone has
    none: both S1 and --cpu-per-request need one)."""
    from pipeline.bundle import BundleError, verify_bundle

    try:
        verify_bundle(bundle)
    except BundleError as exc:
        raise BenchmarkError(f"{exc}: `dvc repro` then `python -m pipeline.promote` make one, "
                             "or pass --bundle") from None


def measure(bundle: Path, clients: int, seconds: float, workers: int, threads: int, warm_up_s: float = 2.0) -> dict:
    check_bundle(bundle)
    with tempfile.TemporaryDirectory(prefix="shelfcast-s1-") as tmp:
        workdir = Path(tmp)
        receiver, fluentd_port = start_receiver(workdir / "received.jsonl")
        try:
            started = time.monotonic()
            app = start_app(bundle, fluentd_port, workdir, workers, threads)
            ready_s = time.monotonic() - started  # every worker has loaded the bundle and listens
            try:
                figures = timed_load(app, request_bodies(app.url), clients, seconds, warm_up_s)
                figures.update(ready_s=ready_s, worker_rss_gb=workers_rss_gb(app.pid))
            finally:
                app.stop(timeout_s=60)  # workers flush their events to the receiver on exit
            log_tail = app.log_tail(2000)
        finally:
            stop(receiver, timeout_s=10)
        events, duplicates, event_requests = received_events(workdir / "received.jsonl")
    all_answered = figures.pop("answered")
    events_equal = events == len(all_answered) and duplicates == 0 and event_requests == all_answered
    return {
        **figures, "answered_incl_warm_up": len(all_answered), "events_received": events,
        "duplicate_events": duplicates, "missing_events": len(all_answered - event_requests),
        "events_equal_requests": events_equal, "workers": workers, "threads": threads,
        "log_tail": log_tail if figures["errors"] or not events_equal else "",  # why, where the server logged it
    }


def server_floor(clients: int, seconds: float, workers: int, threads: int, warm_up_s: float = 2.0) -> dict:
    """S1's clients against the same server settings serving benchmarks/floor_app.py instead of the app:
    what gunicorn and the load generator cost on this machine, the part of S1 no app change can remove."""
    with tempfile.TemporaryDirectory(prefix="shelfcast-s1-floor-") as tmp:
        try:
            app = launch.start({"SHELFCAST_WORKERS": str(workers), "SHELFCAST_THREADS": str(threads),
                                "SHELFCAST_LOG_LEVEL": "warning"}, Path(tmp) / "gunicorn.log",
                               wsgi_app="benchmarks.floor_app:app")
        except launch.ServerNotReady as exc:
            raise BenchmarkError(str(exc)) from None
        try:
            figures = timed_load(app, [floor_app.REQUEST], clients, seconds, warm_up_s)
        finally:
            app.stop(timeout_s=30)
    figures.pop("answered")
    return {**figures, "workers": workers, "threads": threads}


def cpu_per_request(bundle: Path, requests: int) -> dict:
    """CPU per one-row prediction in one process (Flask's test client, no HTTP server), events sent to the
    real receiver: the request thread's, and every thread's (event delivery, GC) until the sink has closed.

    Unlike latency on a shared machine, CPU time barely moves with other work, so it compares two
    versions of the app fairly (`--cpu-per-request N`, run from each version's checkout)."""
    check_bundle(bundle)
    with tempfile.TemporaryDirectory(prefix="shelfcast-s1-cpu-") as tmp:
        workdir = Path(tmp)
        receiver, fluentd_port = start_receiver(workdir / "received.jsonl")
        try:
            os.environ.update(SHELFCAST_MODEL_DIR=str(bundle), FLUENTD_HOST="127.0.0.1",
                              FLUENTD_PORT=str(fluentd_port), SHELFCAST_EVENT_SPOOL=str(workdir / "spool"),
                              SHELFCAST_PREDICTION_LOG=str(workdir / "predictions.jsonl"))
            sys.path.insert(0, str(REPO))
            from app import create_app

            app = create_app()
            client = app.test_client()
            bodies = request_bodies("", client=client)
            for k in range(200):  # not counted: first calls fill caches
                client.post("/api/v1/predict", data=bodies[k % len(bodies)], content_type="application/json")
            time.sleep(1.0)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            process_before, thread_before = usage.ru_utime + usage.ru_stime, time.thread_time()
            for k in range(requests):
                response = client.post("/api/v1/predict", data=bodies[k % len(bodies)],
                                       content_type="application/json")
                if response.status_code != 200:
                    raise BenchmarkError(f"POST /api/v1/predict answered {response.status_code}: "
                                         f"{response.data[:200]!r}")
            thread_s = time.thread_time() - thread_before
            app.extensions["shelfcast"].close()  # sends what is left
            usage = resource.getrusage(resource.RUSAGE_SELF)
            process_s = usage.ru_utime + usage.ru_stime - process_before
        finally:
            stop(receiver, timeout_s=10)
        events = sum(1 for line in (workdir / "received.jsonl").read_text(encoding="utf-8").splitlines()
                     if json.loads(line).get("tag") == TAG)
    return {"requests": requests, "request_thread_us": 1e6 * thread_s / requests,
            "process_us": 1e6 * process_s / requests, "events_received": events, "events_expected": requests + 200}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "production", help="model bundle to serve")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="gunicorn workers (default: cores, as `make serve`)")
    parser.add_argument("--threads", type=int, default=8,
                        help="connection threads per worker (default 8, as `make serve`)")
    parser.add_argument("--warm-up", type=float, default=2.0, help="untimed seconds of load first (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON line (BENCHMARKS.md format)")
    parser.add_argument("--cpu-per-request", type=int, metavar="N",
                        help="instead: CPU per request over N requests in one process (no server, no latency)")
    parser.add_argument("--server-floor", action="store_true",
                        help="instead: the same clients and server settings with a trivial app "
                             "(benchmarks/floor_app.py): what no app change can remove")
    args = parser.parse_args(argv)
    # --clients 0 failed on a percentile of no latencies after the server started, --seconds 0 on a division by
    # zero, and --cpu-per-request 0 ran the 30 s S1 load instead
    common.refuse_counts_below_one(parser, (
        ("--clients", args.clients), ("--workers", args.workers), ("--threads", args.threads),
        ("--cpu-per-request", 1 if args.cpu_per_request is None else args.cpu_per_request)))
    if not args.seconds > 0 or args.warm_up < 0:
        parser.error(f"--seconds must be more than 0 and --warm-up 0 or more, got {args.seconds:g} and "
                     f"{args.warm_up:g}")
    if args.server_floor:
        return print_server_floor(args)
    if args.cpu_per_request:
        try:
            cpu = cpu_per_request(args.bundle.resolve(), args.cpu_per_request)
        except BenchmarkError as exc:
            print(f"app_load: error: {exc}", file=sys.stderr)
            return 1
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in cpu.items()}))
        return 0
    note = common.busy_machine_note(2, "cores' worth of server workers and clients")
    speed = common.python_speed()  # before the server starts: the machine's own pace this hour
    try:
        figures = measure(args.bundle, args.clients, args.seconds, args.workers, args.threads, args.warm_up)
    except BenchmarkError as exc:
        print(f"app_load: error: {exc}", file=sys.stderr)
        return 1
    met = figures["p99_ms"] <= TARGET_P99_MS and figures["errors"] == 0 and figures["events_equal_requests"]
    result = common.Result(
        id="S1", workload=f"POST /api/v1/predict, 1 row, {args.clients} clients, {args.seconds:g} s, Fluentd logging",
        unit="ms", engine=figures["p99_ms"], peer=None, target=common.Target("<=", TARGET_P99_MS, applies_to="engine"),
        extra={**{k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items() if k != "log_tail"},
               "python_mips": round(speed, 2)})
    if args.json:
        record = result.as_json()
        record["met"] = met
        print(json.dumps(record))
    else:
        rows = [*load_rows(figures, f" (target <= {TARGET_P99_MS:g} ms)"),
                ["events received / requests answered",
                 f"{figures['events_received']} / {figures['answered_incl_warm_up']} (incl. warm-up; duplicates "
                 f"{figures['duplicate_events']}, missing {figures['missing_events']})"],
                ["ready after start (every worker listening)", f"{figures['ready_s']:.1f} s"],
                ["worker resident memory after the run",
                 " / ".join(f"{gb:.2f} GB" for gb in figures["worker_rss_gb"]) or "n/a"],
                ["machine pace (pure-Python loop, before the run)", f"{speed:.1f} M iterations/s"],
                ["S1 met", "yes" if met else "NO"]]
        print(common.format_table(["S1", "figure"], rows))
    if note:
        print(note, file=sys.stderr)
    if figures["log_tail"]:
        print(figures["log_tail"], file=sys.stderr)
    return 0


def load_rows(figures: dict, p99_note: str = "") -> list[list[str]]:
    """The table rows S1 and its server floor share."""
    return [["requests/s", f"{figures['requests_per_s']:.0f}"], ["p50", f"{figures['p50_ms']:.2f} ms"],
            ["p99", f"{figures['p99_ms']:.2f} ms{p99_note}"], ["errors", str(figures["errors"])],
            ["client connections per worker", "/".join(map(str, figures["connections_per_worker"])) or "n/a"],
            ["worker CPU per request (user + system)", "n/a" if figures["worker_cpu_ms_per_request"] is None
             else f"{figures['worker_cpu_ms_per_request']:.2f} ms"],
            ["client CPU per request (the load generator, same cores)", "n/a"
             if figures["client_cpu_ms_per_request"] is None else f"{figures['client_cpu_ms_per_request']:.3f} ms"],
            ["cores each worker may run on", " / ".join(figures["worker_cores"]) or "n/a"]]


def print_server_floor(args: argparse.Namespace) -> int:
    note = common.busy_machine_note(2, "cores' worth of server workers and clients")
    speed = common.python_speed()
    try:
        figures = server_floor(args.clients, args.seconds, args.workers, args.threads, args.warm_up)
    except BenchmarkError as exc:
        print(f"app_load: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"id": "S1-floor", **{k: (round(v, 3) if isinstance(v, float) else v)
                                                for k, v in figures.items()}, "python_mips": round(speed, 2)}))
    else:
        print(common.format_table(["S1 server floor (trivial app)", "figure"], [
            *load_rows(figures), ["machine pace (pure-Python loop, before the run)", f"{speed:.1f} M iterations/s"]]))
    if note:
        print(note, file=sys.stderr)
    return 0 if figures["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
