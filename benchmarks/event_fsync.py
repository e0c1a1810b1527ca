"""What an fsync per prediction event would cost, against the spool's one write() per event.

    python benchmarks/event_fsync.py [--dir logs/spool] [--events 2000] [--json]
    python benchmarks/event_fsync.py --probe 40 [--dir DIR] [--json]   # beside a load: the crash-loss window

Appends typical event lines (~1.6 KB) to a file in --dir (the filesystem the spool uses)
three ways: write() only (what emit() does: the event is safe from a process crash), write()
+ fsync() per event (safe from a power cut too), and write() with an fsync every 0.2 s from
another thread (the spool's sync_interval_s: a power cut loses at most that window). Prints
the per-event cost of each, p50 and p99, so the README's crash-loss window is a measured choice.

`--probe SECONDS` instead does what the spool's fsync thread does for that long (append a line, fsync,
wait 0.2 s) and prints how long each fsync took: run beside a load (`benchmarks/app_load.py`), its
longest fsync plus 0.2 s is the crash-loss window that load gives on that disk.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from app.events import SinkSettings

SYNC_INTERVAL_S = SinkSettings.sync_interval_s  # the spool's fsync interval (a power cut's window, less fsync time)

LINE = (json.dumps({"event_id": "x" * 32, "request_id": "y" * 32, "timestamp": "2017-08-16T10:00:00.000000+00:00",
                    "features": {"dense": [0.123456] * 120, "categorical": [1] * 8}, "output": {"unit_sales": 1.5}})
        + "\n").encode()


def run(directory: Path, events: int, mode: str) -> np.ndarray:
    took = np.empty(events)  # before the file: a bad count left a temporary .jsonl behind in --dir
    fd, name = tempfile.mkstemp(dir=directory, suffix=".jsonl")
    os.close(fd)
    fd = os.open(name, os.O_WRONLY | os.O_APPEND)
    stop = threading.Event()
    syncer = None
    if mode == "interval":
        syncer = threading.Thread(target=lambda: [os.fsync(fd) for _ in iter(lambda: stop.wait(SYNC_INTERVAL_S), True)])
        syncer.start()
    try:
        for n in range(events):
            started = time.perf_counter()
            os.write(fd, LINE)
            if mode == "per_event":
                os.fsync(fd)
            took[n] = time.perf_counter() - started
            time.sleep(0.0005)  # requests arrive spread out, not back to back
    finally:
        stop.set()
        if syncer is not None:
            syncer.join()
        os.close(fd)
        os.unlink(name)
    return took * 1000.0


def probe(directory: Path, seconds: float, interval_s: float = SYNC_INTERVAL_S) -> np.ndarray:
    """The spool's fsync thread for `seconds`: append one line, fsync, wait `interval_s`; each fsync in ms."""
    fd, name = tempfile.mkstemp(dir=directory, suffix=".jsonl")
    took = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            os.write(fd, LINE)
            started = time.perf_counter()
            os.fsync(fd)
            took.append(time.perf_counter() - started)
            time.sleep(interval_s)
    finally:
        os.close(fd)
        os.unlink(name)
    return np.asarray(took) * 1000.0


def probe_figures(directory: Path, seconds: float) -> dict:
    ms = probe(directory, seconds)
    return {"id": "event_fsync_probe", "dir": str(directory), "seconds": seconds, "fsyncs": len(ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 3), "window_s": round(SYNC_INTERVAL_S + float(ms.max()) / 1000.0, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("logs/spool"))
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--probe", type=float, metavar="SECONDS",
                        help="instead: fsync as the spool does for SECONDS and print each fsync's duration")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    # --events 0 and --probe -1 ended in an IndexError (a percentile of no timings), --events -2 in a ValueError
    # that left a temporary file in --dir
    if args.events < 1:
        parser.error(f"--events must be at least 1, got {args.events}")
    if args.probe is not None and not args.probe > 0:
        parser.error(f"--probe must be more than 0 seconds, got {args.probe:g}")
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.probe:
        figures = probe_figures(args.dir, args.probe)
        print(json.dumps(figures) if args.json else
              f"event_fsync: {figures['fsyncs']} fsyncs on {args.dir} in {args.probe:g} s: p50 {figures['p50_ms']} ms, "
              f"p99 {figures['p99_ms']} ms, longest {figures['max_ms']} ms -> crash-loss window up to "
              f"{figures['window_s']} s")
        return
    figures = {"id": "event_fsync", "dir": str(args.dir), "line_bytes": len(LINE)}
    for mode in ("write_only", "per_event", "interval"):
        ms = run(args.dir, args.events, mode)
        figures[mode] = {"p50_ms": round(float(np.percentile(ms, 50)), 4),
                         "p99_ms": round(float(np.percentile(ms, 99)), 4)}
    if args.json:
        print(json.dumps(figures))
        return
    print(f"per-event cost on {args.dir} ({len(LINE)}-byte events, {args.events} each):")
    for mode in ("write_only", "per_event", "interval"):
        print(f"  {mode:10s}  p50 {figures[mode]['p50_ms']:.4f} ms   p99 {figures[mode]['p99_ms']:.4f} ms")
    ratio = figures["per_event"]["p99_ms"] / max(figures["write_only"]["p99_ms"], 1e-6)
    print(f"event_fsync: fsync per event costs {ratio:.0f}x a plain write at p99")


if __name__ == "__main__":
    main()
