"""Benchmarks P2, P3 and P4: the pipeline's stages at full Favorita scale, in one process or on Dask.

P2: download (synthetic) + prepare + split. P3 (``--through evaluate``): the
same plus train and evaluate, i.e. ``dvc repro`` end to end. Runs each stage as
its own process, exactly as `dvc repro` does, in a scratch working directory
whose params.yaml sets the scale, and measures wall time and peak resident
memory of each stage (``os.wait4`` gives the rusage of that one child).
Targets (BENCHMARKS.md): P2 <= 15 min, P3 <= 45 min, both <= 8 GB.

P4 (``--through features``): download + prepare + split + the training
examples (``python -m pipeline.feature_shards``: one task per store, Parquet
shards) on a Dask LocalCluster this script starts (``--workers`` processes of
one thread, ``--worker-memory`` each), every stage pointed at it through
$SHELFCAST_DASK_SCHEDULER; reports each stage's wall time, the submitting
process's peak RSS and each worker's peak RSS (getrusage on the worker). With
``--compare`` the same features are then built in one process (no scheduler),
beside it. Target: every worker within its memory limit, every process <= 8 GB.

    python benchmarks/pipeline_scale.py              # P2, full scale: 54 stores, 2013-01-01 .. 2017-08-15
    python benchmarks/pipeline_scale.py --through evaluate   # P3 (train and evaluate too)
    python benchmarks/pipeline_scale.py --scale 0.1  # 10 % of the stores (5), same dates
    python benchmarks/pipeline_scale.py --json       # one JSON object per line as well
    python benchmarks/pipeline_scale.py --default-scale  # params.yaml as it is (the data half of P1)
    python benchmarks/pipeline_scale.py --through features --stores 162 --compare   # P4 (and one process beside)
    python benchmarks/pipeline_scale.py --through split --stores 60 --start-date 2017-07-01   # a short sanity run

``--stores`` may exceed Favorita's 54: the generator adds further stores in its cities
(pipeline/synthetic.py ``make_stores``; at most params' ``MAX_SYNTHETIC_STORES``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pipeline.params import MAX_SYNTHETIC_STORES  # noqa: E402 - the repository on the path first

STAGES = ("download", "prepare", "split", "train", "evaluate")
DATA_STAGES = 3  # P2 and P1-data stop after split
FEATURE_STAGE = "feature_shards"  # P4's last step: the training examples as shards (pipeline/feature_shards.py)
# (wall s, peak RSS GB); P1-data: the data stages' share of P1; P4's wall time is reported, not targeted
TARGETS = {"P2": (15 * 60, 8.0), "P3": (45 * 60, 8.0), "P1-data": (40, 1.5), "P4": (None, 8.0)}
THRESHOLD_FAILED = 2  # evaluate's exit status when it ran to the end and the gate said no: timed all the same
FULL_STORES = 54  # Favorita's: what --scale is a fraction of (--stores may ask for more)
FULL_DATES = ("2013-01-01", "2017-08-15")
SCHEDULER_ENV = "SHELFCAST_DASK_SCHEDULER"  # pipeline.cluster.SCHEDULER_ENV (benchmarks run the stages as processes)
GB = 1024 ** 3


def _worker_rss_gb() -> float:
    """Resident memory of the worker process it runs on (client.run)."""
    import psutil

    return psutil.Process().memory_info().rss / GB


def _worker_cpu_s() -> float:
    """CPU seconds the worker process has used so far (user + system)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _worker_peak_rss_gb() -> float:
    """Peak resident memory of the worker process since it started (ru_maxrss is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


class WorkerMemory:
    """Peak RSS of each worker of a LocalCluster: sampled every second, and the kernel's own peak at the end."""

    def __init__(self, client, interval_s: float = 1.0):
        self.client, self.interval_s = client, interval_s
        self.sampled: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                for worker, rss in self.client.run(_worker_rss_gb).items():
                    self.sampled[worker] = max(self.sampled.get(worker, 0.0), rss)
            except Exception:  # noqa: BLE001 - a worker restarting between samples: sample again next second
                continue

    def __enter__(self) -> "WorkerMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self) -> dict[str, float]:
        """Worker -> peak RSS GB: the larger of the kernel's peak (ru_maxrss) and the sampled maximum."""
        final = self.client.run(_worker_peak_rss_gb)
        return {w: max(final.get(w, 0.0), self.sampled.get(w, 0.0)) for w in sorted(set(final) | set(self.sampled))}


def start_cluster(workers: int, memory_limit: str):
    """A LocalCluster of ``workers`` processes of one thread each on 127.0.0.1, and a client of it."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                           host="127.0.0.1", dashboard_address=None)
    return cluster, Client(cluster)


def shard_summary(directory: Path) -> tuple[int, int]:
    """(rows, bytes) of the feature shards under ``directory``."""
    files = sorted(directory.glob("store=*/part-*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files), sum(f.stat().st_size for f in files)


def scaled_params(scale: float | None, compression: str, stores: int | None = None,
                  dates: tuple[str, str] = FULL_DATES) -> dict:
    """params.yaml at the given fraction of the 54 stores (or ``stores`` stores, any number the generator makes)
    and full dates (or ``dates``); as it is for ``None``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if scale is None:
        return params
    synthetic = params["data"]["synthetic"]
    synthetic.update(stores=stores or max(1, round(FULL_STORES * scale)), items=4100, start_date=dates[0],
                     end_date=dates[1], compression=compression)
    params["data"]["source"] = "synthetic"
    return params


def run_stage(stage: str, workdir: Path, scheduler: str | None = None) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS in GB, exit code, CPU seconds) of one stage process (on the Dask ``scheduler``
    if given)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(SCHEDULER_ENV, None)
    if scheduler:
        env[SCHEDULER_ENV] = scheduler
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", f"pipeline.{stage}", "--quiet"], cwd=workdir, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    # ru_maxrss is in KiB on Linux
    return wall, usage.ru_maxrss / (1024 ** 2), process.returncode, usage.ru_utime + usage.ru_stime


def training_rates(workdir: Path, steps: int) -> dict:
    """P4's one-process side: how fast the shards stream as training batches, and a training step on them.

    Reads ``steps`` batches of train.batch_size from the shards (rows/s), then trains the
    configured model for ``steps`` steps on the streamed batches (ms a step, reading on the
    prefetch thread as in the train stage). Vocabulary sizes come from the shards' id statistics.
    """
    sys.path.insert(0, str(REPO))
    import numpy as np

    from pipeline import models
    from pipeline.feature_shards import CATEGORICAL_PREFIX, SHARD_DIR, ShardStream
    from pipeline.features import CATEGORICAL_FIELDS, dense_feature_names
    from pipeline.model_params import feature_params, train_params

    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    fparams, tparams = feature_params(raw), train_params(raw)
    paths = sorted((workdir / SHARD_DIR).glob("store=*/part-*.parquet"))
    stream = ShardStream(paths, fparams.spec)
    started, rows = time.perf_counter(), 0
    for i, batch in enumerate(stream.batches(tparams.batch_size, seed=0)):
        rows += batch["weight"].size
        if i + 1 >= steps:
            break
    read_s = time.perf_counter() - started
    highest = dict.fromkeys(CATEGORICAL_FIELDS, 0)
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(j).name for j in range(meta.num_columns)]
        for g in range(meta.num_row_groups):
            for name in CATEGORICAL_FIELDS:
                stats = meta.row_group(g).column(names.index(CATEGORICAL_PREFIX + name)).statistics
                highest[name] = max(highest[name], int(stats.max))
    inner = next(stream.chunks(np.arange(1)))
    mean, std, constant = models.normalization(inner.matrix.dense)
    config = models.ModelConfig(kind=tparams.model, dense_size=len(dense_feature_names(fparams.spec)),
                                vocab_sizes={f: highest[f] + 1 for f in CATEGORICAL_FIELDS},
                                embedding_dims=dict(tparams.embedding_dims), hidden_units=tuple(tparams.hidden_units),
                                dense_mean=mean, dense_std=std, dense_constant=constant,
                                output_bias=0.0)
    def run(max_steps: int) -> float:
        started = time.perf_counter()
        models.train(config, stream.batch_source(tparams.batch_size, tparams.seed), inner.matrix, inner.units,
                     inner.weights, seed=tparams.seed, max_steps=max_steps, eval_every=max_steps, patience=1,
                     learning_rate=tparams.learning_rate)
        return time.perf_counter() - started

    run(min(steps, 20))  # warm-up: the engine's kernels compile (or load from the Numba cache) once a process
    train_s = run(steps)
    return {"batch_size": tparams.batch_size, "read_rows_per_s": rows / read_s,
            "train_step_ms": 1000 * train_s / steps, "steps": steps, "max_steps": tparams.max_steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 54 stores (default 1.0 = full P2)")
    parser.add_argument("--stores", type=int,
                        help=f"number of stores (instead of --scale), up to {MAX_SYNTHETIC_STORES}: past Favorita's "
                             f"{FULL_STORES} the generator adds stores in its cities")
    parser.add_argument("--start-date", default=FULL_DATES[0], help="first day of the data (default: %(default)s)")
    parser.add_argument("--end-date", default=FULL_DATES[1], help="last day of the data (default: %(default)s)")
    parser.add_argument("--default-scale", action="store_true", help="use params.yaml's scale unchanged")
    parser.add_argument("--compression", choices=("gzip", "none"), default="gzip", help="raw CSV compression")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--json", action="store_true", help="also print one JSON object per stage and in total")
    parser.add_argument("--through", choices=("split", "evaluate", "features"), default="split",
                        help="last stage: split (P2, the data stages), evaluate (P3, dvc repro end to end) or "
                             "features (P4: data stages and training examples on a Dask LocalCluster)")
    parser.add_argument("--workers", type=int, default=2, help="P4: worker processes of the LocalCluster")
    parser.add_argument("--worker-memory", default="2GB", help="P4: memory limit of each worker (Dask syntax)")
    parser.add_argument("--compare", action="store_true",
                        help="P4: then build the same features in one process (no scheduler), beside it")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="P4: then stream this many batches from the shards and train as many steps on them "
                             "in this process (the one-process side: rows/s read, ms a step)")
    args = parser.parse_args(argv)
    if args.through != "split" and args.default_scale:
        parser.error("--default-scale measures the data stages only (P1-data)")
    if not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")
    if args.stores is not None and not 1 <= args.stores <= MAX_SYNTHETIC_STORES:
        parser.error(f"--stores must be in 1 .. {MAX_SYNTHETIC_STORES}")
    if args.workers < 1:  # 0 started a cluster with no workers: its download stage failed 60 s later
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.train_steps < 0:  # -1 was taken as a request to train, as any count but 0
        parser.error(f"--train-steps must be 0 (none) or more, got {args.train_steps}")
    if args.default_scale and (args.start_date, args.end_date) != FULL_DATES:
        parser.error("--default-scale uses params.yaml's dates: drop --start-date/--end-date")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shelfcast-p2-"))
    workdir.mkdir(parents=True, exist_ok=True)
    params = scaled_params(None if args.default_scale else args.scale, args.compression, args.stores,
                           (args.start_date, args.end_date))
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    synthetic = params["data"]["synthetic"]
    stores = synthetic["stores"]
    label = "P1-data" if args.default_scale else {"evaluate": "P3", "features": "P4"}.get(args.through, "P2")
    stages = {"P3": STAGES, "P4": STAGES[:DATA_STAGES] + (FEATURE_STAGE,)}.get(label, STAGES[:DATA_STAGES])
    target_wall_s, target_rss_gb = TARGETS[label]
    print(f"{label}: {stores} stores x {synthetic['items']:,} items, "
          f"{synthetic['start_date']} .. {synthetic['end_date']}, "
          f"in {workdir}", flush=True)
    results = []  # (stage, wall s, peak RSS GB of the stage process, {worker: peak RSS GB} on a cluster)
    cluster = client = None
    worker_peaks: dict[str, float] = {}
    single = None  # --compare: (wall s, peak RSS GB) of the features built in one process
    rates = None  # --train-steps: training_rates()
    cpu: dict[str, tuple[float, dict[str, float]]] = {}  # stage -> (its process's CPU s, {worker: CPU s})
    try:
        if label == "P4":
            cluster, client = start_cluster(args.workers, args.worker_memory)
            print(f"P4: LocalCluster {cluster.scheduler_address}: {args.workers} workers x 1 thread, "
                  f"{args.worker_memory} each", flush=True)
        for stage in stages:
            if client is not None:
                cpu_before = client.run(_worker_cpu_s)
                with WorkerMemory(client) as memory:
                    wall, rss_gb, code, cpu_s = run_stage(stage, workdir, cluster.scheduler_address)
                workers = dict(memory.sampled)
                workers_cpu = {w: t - cpu_before.get(w, 0.0) for w, t in client.run(_worker_cpu_s).items()}
            else:
                wall, rss_gb, code, cpu_s = run_stage(stage, workdir)
                workers, workers_cpu = {}, {}
            if code == THRESHOLD_FAILED and stage == "evaluate":
                print(f"{label}: evaluate ran to the end; its threshold test failed (timed all the same)",
                      file=sys.stderr)
            elif code != 0:
                print(f"{label}: stage {stage} failed with exit code {code}", file=sys.stderr)
                return 1
            results.append((stage, wall, rss_gb, workers))
            cpu[stage] = (cpu_s, workers_cpu)
            print(f"{label}: {stage} {wall:.1f} s, peak RSS {rss_gb:.2f} GB, {cpu_s:.1f} CPU-s"
                  + "".join(f", worker {i} {w:.2f} GB" for i, w in enumerate(workers.values()))
                  + "".join(f", worker {i} {t:.1f} CPU-s" for i, t in enumerate(workers_cpu.values())), flush=True)
        if client is not None:
            worker_peaks = WorkerMemory(client).peaks()
        grid_rows = pq.ParquetFile(workdir / "data/prepared/sales.parquet").metadata.num_rows
        raw_bytes = sum(p.stat().st_size for p in (workdir / "data/raw").iterdir())
        shards = workdir / "models/checkpoints/train-features"
        example_rows, shard_bytes = shard_summary(shards) if label == "P4" else (0, 0)
        rates = training_rates(workdir, args.train_steps) if label == "P4" and args.train_steps else None
        if rates:
            print(f"{label}: the shards stream at {rates['read_rows_per_s']:,.0f} rows/s; a training step of "
                  f"{rates['batch_size']} rows takes {rates['train_step_ms']:.1f} ms streaming from them "
                  f"({rates['steps']} steps)", flush=True)
        if label == "P4" and args.compare:
            shutil.rmtree(shards, ignore_errors=True)  # the one-process build writes (and is timed writing) them anew
            wall, rss_gb, code, cpu_s = run_stage(FEATURE_STAGE, workdir)
            if code != 0:
                print(f"{label}: one-process {FEATURE_STAGE} failed with exit code {code}", file=sys.stderr)
                return 1
            single = (wall, rss_gb, cpu_s)
            print(f"{label}-single: {FEATURE_STAGE} in one process {wall:.1f} s, peak RSS {rss_gb:.2f} GB, "
                  f"{cpu_s:.1f} CPU-s", flush=True)
    finally:
        if client is not None:
            client.close()
            cluster.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    total_wall = sum(r[1] for r in results)
    peak = max(r[2] for r in results)
    print("\n| stage | wall s | peak RSS GB |" + (" workers' peak RSS GB |" if label == "P4" else "")
          + "\n|---|---|---|" + ("---|" if label == "P4" else ""))
    for stage, wall, rss, workers in results:
        print(f"| {stage} | {wall:.1f} | {rss:.2f} |"
              + (f" {', '.join(f'{w:.2f}' for w in workers.values())} |" if label == "P4" else ""))
    target_text = "" if target_wall_s is None else f" (target <= {target_wall_s})"
    print(f"| **total** | **{total_wall:.1f}**{target_text} "
          f"| **{peak:.2f}** (target <= {target_rss_gb:g}) |"
          + (f" {', '.join(f'{w:.2f}' for w in worker_peaks.values())} (limit {args.worker_memory}) |"
             if label == "P4" else ""))
    print(f"\nraw files {raw_bytes / 1e9:.2f} GB, prepared grid {grid_rows:,} rows"
          + (f", {example_rows:,} training examples in {shard_bytes / 1e9:.2f} GB of shards" if label == "P4" else ""))
    if rates:
        features_wall = next(r[1] for r in results if r[0] == FEATURE_STAGE)
        print(f"training (one process) at train.max_steps {rates['max_steps']}: "
              f"~{rates['max_steps'] * rates['train_step_ms'] / 1000:.0f} s of steps whatever the data size, "
              f"consuming {rates['max_steps'] * rates['batch_size']:,} rows; the features: {features_wall:.0f} s "
              f"for {example_rows:,} rows on {args.workers} workers")
    if single is not None:
        features_wall = next(r[1] for r in results if r[0] == FEATURE_STAGE)
        stage_cpu, workers_cpu = cpu[FEATURE_STAGE]
        print(f"features in one process: {single[0]:.1f} s, peak RSS {single[1]:.2f} GB, {single[2]:.1f} CPU-s "
              f"(on {args.workers} workers: {features_wall:.1f} s, {single[0] / features_wall:.2f}x; "
              f"{stage_cpu:.1f} CPU-s in the stage process + {sum(workers_cpu.values()):.1f} on the workers)")
    limit_gb = None
    if label == "P4":
        from dask.utils import parse_bytes

        limit_gb = parse_bytes(args.worker_memory) / GB
        within = peak <= target_rss_gb and all(w <= limit_gb for w in worker_peaks.values())
    else:
        within = total_wall <= target_wall_s and peak <= target_rss_gb
    if args.json:
        for stage, wall, rss, workers in results:
            record = {"id": f"{label}.{stage}", "wall_s": round(wall, 2), "peak_rss_gb": round(rss, 3),
                      "cpu_s": round(cpu[stage][0], 2)}
            if label == "P4":
                record["worker_peak_rss_gb"] = [round(w, 3) for w in workers.values()]
                record["worker_cpu_s"] = [round(t, 2) for t in cpu[stage][1].values()]
            print(json.dumps(record))
        if rates:
            print(json.dumps({"id": f"{label}.train_stream", **{k: round(v, 3) if isinstance(v, float) else v
                                                                 for k, v in rates.items()}}))
        if single is not None:
            print(json.dumps({"id": f"{label}-single.{FEATURE_STAGE}", "wall_s": round(single[0], 2),
                              "peak_rss_gb": round(single[1], 3), "cpu_s": round(single[2], 2)}))
        total = {"id": label, "scale": None if args.default_scale or args.stores else args.scale, "stores": stores,
                 "wall_s": round(total_wall, 2), "peak_rss_gb": round(peak, 3),
                 "rss_ratio": round(peak / target_rss_gb, 3), "unit": "s", "grid_rows": grid_rows}
        if target_wall_s is not None:
            total["ratio"] = round(total_wall / target_wall_s, 3)
        if label == "P4":
            total.update(workers=args.workers, worker_memory_limit_gb=round(limit_gb, 3),
                         worker_peak_rss_gb=[round(w, 3) for w in worker_peaks.values()],
                         training_examples=example_rows, shard_gb=round(shard_bytes / 1e9, 3))
        print(json.dumps(total))
    return 0 if within else 2


if __name__ == "__main__":
    raise SystemExit(main())
