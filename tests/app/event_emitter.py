"""A process that emits prediction events like a serving worker, for the delivery fault tests.

    python tests/app/event_emitter.py --port P --spool DIR --count N [--then close|exit|wait] [--rate R]
                                      [--stats FILE]

Prints each event_id on stdout once emit() has returned (what a worker would answer 200
after). --then close: close the sink and exit; exit: os._exit without closing (a crash
after the last answer); wait: keep emitting (--count is then the pause between bursts
ignored) until SIGTERM, which closes the sink as gunicorn's worker_exit does. --stats FILE: each count
the sink makes ("sent 12") appended to FILE as it is made, one write() each, so a kill -9 leaves every count
made before it there, as prometheus_client's multiprocess files keep a killed worker's for /metrics.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.events import PredictionEventSink  # noqa: E402 - run as a script: the repo goes on sys.path first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--then", choices=("close", "exit", "wait"), default="close")
    parser.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    parser.add_argument("--max-bytes", type=int, default=0)
    parser.add_argument("--close-timeout", type=float, default=5.0)
    parser.add_argument("--stats", help="append each count the sink makes to this file")
    args = parser.parse_args()
    count = None
    if args.stats:
        stats_fd = os.open(args.stats, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

        def count(name: str, n: int) -> None:
            os.write(stats_fd, f"{name} {n}\n".encode())
    overrides = {"close_timeout_s": args.close_timeout, "retry_max_s": 0.3}
    if args.max_bytes:
        overrides["spool_max_bytes"] = args.max_bytes
    sink = PredictionEventSink.from_environment(
        {"FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(args.port), "SHELFCAST_EVENT_SPOOL": args.spool}, count,
        **overrides)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    n = 0
    while not stopping and (args.then == "wait" or n < args.count):
        event_id = sink.emit({"request_id": f"{os.getpid()}-{n}", "output": float(n), "pad": "x" * 200})
        if event_id is not None:
            sys.stdout.write(event_id + "\n")
            sys.stdout.flush()
        n += 1
        if args.rate:
            time.sleep(1.0 / args.rate)
    if args.then == "exit":
        os._exit(0)
    sink.close()
    sys.stderr.write(f"stats {sink.stats.snapshot()}\n")


if __name__ == "__main__":
    main()
