"""S1 during a release: app_load.py's clients against gunicorn while the registry aliases move.

A real tiny model is trained twice (tests/app/tiny_bundle.py: version 1 production, version 2
the candidate) into a sqlite MLflow registry under a temporary directory; the serving host's
models/ directory is synced from it (pipeline/release.py) and served by gunicorn exactly as
`make serve` does (local event log, hot reload every 0.5 s). Then, phase by phase, N client
processes (app_load.run_clients: keep-alive one-row requests back to back) run while one
release step happens at the start of the phase:

    baseline -> shadow on -> canary 10 % -> promote -> rollback

Figures per phase: requests, failed requests (non-200 or connection errors), p50 and p99
latency as the clients see it, and how long the release step took. Target: 0 failed.

    python benchmarks/release_load.py [--clients 4] [--phase-s 10] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import app_load
import common

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app import launch  # noqa: E402 - the repository goes on sys.path first


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_registry(base: Path) -> tuple[Path, dict[str, str]]:
    """Two promoted versions of a real tiny model (production 1, canary alias 2) in a sqlite registry."""
    delivery = _module(REPO / "tests" / "delivery" / "conftest.py", "release_load_delivery")
    tiny = delivery.tiny_bundle_module()
    uri = f"sqlite:///{(base / 'registry.db').as_posix()}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    delivery.prepare_registry(uri, base / "artifacts")
    root = base / "ml-runner"
    tiny.build_tiny_project(root)
    first = delivery.evaluate_and_promote(root, "production")
    tiny.retrain(root, seed=4)
    second = delivery.evaluate_and_promote(root, "canary")
    return root, {"production": first["version"], "candidate": second["version"]}


def start_app(models: Path, workdir: Path, workers: int) -> launch.ServedApp:
    """The app as `make serve` runs it, hot reloading every 0.5 s, events to a local log."""
    try:
        return launch.start({"SHELFCAST_MODEL_DIR": str(models / "production"),
                             "SHELFCAST_PREDICTION_LOG": str(workdir / "events.jsonl"),
                             "SHELFCAST_WORKERS": str(workers), "SHELFCAST_RELOAD_INTERVAL_S": "0.5",
                             "SHELFCAST_LOG_LEVEL": "warning", "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics")},
                            workdir / "gunicorn.log")
    except launch.ServerNotReady as exc:
        raise app_load.BenchmarkError(str(exc)) from None


STEP_AFTER_S = 1.5  # each phase's release step starts this long after its clients are launched


def run(clients: int, phase_s: float, workers: int) -> list[dict]:
    from pipeline import release
    from pipeline.release_store import CANARY, SHADOW, ReleaseStore

    with tempfile.TemporaryDirectory(prefix="shelfcast-release-load-") as scratch:
        base = Path(scratch)
        print("release_load: training two tiny model versions into a registry ...", file=sys.stderr, flush=True)
        root, versions = build_registry(base)
        store = ReleaseStore(base / "models")
        release.end_candidate(root, store, CANARY)
        release.sync(root, store)
        app = start_app(store.root, base, workers)
        url = app.url
        try:
            bodies = app_load.request_bodies(url)
            candidate = versions["candidate"]
            steps = [("baseline", lambda: None),
                     ("shadow on", lambda: release.set_candidate(root, store, SHADOW, candidate)),
                     ("canary 10 %", lambda: release.set_candidate(root, store, CANARY, candidate, 0.1)),
                     ("promote", lambda: release.promote(root, store, candidate)),
                     ("rollback", lambda: release.rollback(root, store))]
            phases = []
            for number, (name, step) in enumerate(steps):
                took: dict = {}

                def timed(step=step, took=took) -> None:
                    time.sleep(STEP_AFTER_S)  # the clients are running by then
                    began = time.perf_counter()
                    step()
                    took["s"] = time.perf_counter() - began

                mover = threading.Thread(target=timed)
                mover.start()
                latencies, errors, _, _ = app_load.run_clients(url, bodies, clients, phase_s, f"r{number}-")
                mover.join()
                phases.append({"phase": name, "requests": len(latencies), "failed": errors,
                               "p50_ms": round(common.percentile(latencies, 50) * 1000, 2),
                               "p99_ms": round(common.percentile(latencies, 99) * 1000, 2),
                               "step_s": round(took.get("s", 0.0), 3)})
                print(f"release_load: {name}: {phases[-1]}", file=sys.stderr, flush=True)
        finally:
            app.stop(60)
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    # --clients 0 trained the registry, then failed on a percentile of no latencies
    common.refuse_counts_below_one(parser, (("--clients", args.clients), ("--workers", args.workers)))
    under_load = STEP_AFTER_S - app_load.CLIENTS_START_AFTER_S
    if not args.phase_s > under_load:  # the clients stopped before the step began: "0 failed" measured nothing
        parser.error(f"--phase-s must be more than {under_load:g} s (each release step starts {under_load:g} s into "
                     f"its phase's load), got {args.phase_s:g}")
    from pipeline.stage import artifact_bars_off

    with artifact_bars_off(quiet=True):  # MLflow's download bars, drawn at each sync, between the phases' lines
        phases = run(args.clients, args.phase_s, args.workers)
    if args.json:
        print(json.dumps(phases))
    else:
        keys = ("phase", "requests", "failed", "p50_ms", "p99_ms", "step_s")
        print(common.format_table(["phase", "requests", "failed", "p50 ms", "p99 ms", "step s"],
                                  [[str(p[k]) for k in keys] for p in phases]))
    failed = sum(p["failed"] for p in phases)
    print(f"release_load: {sum(p['requests'] for p in phases)} requests over {len(phases)} phases, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
