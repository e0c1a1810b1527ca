"""Training examples built on a Dask cluster, one task per store, as Parquet shards that training streams.

With a scheduler configured (pipeline/cluster.py), the train stage does not
build its training examples itself: each store's series go to a worker as one
task, which builds that store's examples at every training origin, chunk by
chunk (memory: the store's history slice plus one chunk), and writes them as
one Parquet file::

    models/checkpoints/train-features/store=<N>/part-<digest>.parquet

``digest`` is a hash of everything the examples are computed from (the
store's history slice, the feature spec, the origins, the vocabularies), so a
task rerun by Dask after a worker died, or a resumed train stage, finds the
finished file and keeps it; the file appears by an atomic rename, so a crashed
task leaves none. The vocabularies, origins and series numbering are the
whole data's, fixed by the process that submits the tasks, so every shard
encodes the same ids and normalization is computed the same way.

Each row carries ``row``: its position in the order the in-process build makes
(origin, then series, then target day), so a held set read back and sorted is
exactly the in-process matrix (the same trained model), and a streamed one is
the same rows. Training reads the shards in one process (``ShardStream``).

On a real cluster the directory must be on storage the workers and the train
process share (it is under the project root). ``python -m pipeline.feature_shards``
builds the shards of the current data without training (benchmark P4).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_file
from pipeline.examples import DEFAULT_CHUNK_ROWS, Examples, ExampleStream, origin_pairs, shuffled_batches
from pipeline.features import CATEGORICAL_FIELDS, FeatureMatrix, FeatureSpec, Vocabularies, dense_feature_names
from pipeline.history import SalesHistory
from pipeline.io import PARQUET_COMPRESSION
from pipeline.stage import StageError, bar_options
from pipeline.versions import EXAMPLE_CODE, code_version

SHARD_DIR = "models/checkpoints/train-features"  # outside the DVC output: removed once training finished
ROW_COLUMN = "row"
TARGET_COLUMNS = ("units", "weight")
CATEGORICAL_PREFIX = "id_"  # categorical columns are id_store_nbr, id_item_nbr, ...
TASKS_PER_WORKER = 2  # stores in flight per worker thread: their history slices are all that is sent at once


class ShardError(StageError):
    """A feature shard is missing or does not match what training expects (message names the file)."""


@dataclass
class StoreTask:
    """One store's share of the training examples: everything a worker needs, nothing it must read."""

    store_nbr: int
    history: SalesHistory  # the store's series only (a slice of the whole data's history)
    series_offset: int  # the store's first series in the whole history (rows are numbered globally)
    n_series: int  # series in the whole history
    spec: dict  # FeatureSpec.to_json()
    vocab: dict  # Vocabularies.to_json() of the whole data
    origins: list[int]  # training origin columns, in the in-process order
    out_dir: str
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    code: str = ""  # versions.code_version of EXAMPLE_CODE where the tasks were made: other code, other shards

    def __repr__(self) -> str:  # a failing task is reported by this
        return f"store {self.store_nbr} ({self.history.sales.shape[0]:,} series)"

    def digest(self) -> str:
        h = hashlib.sha256(json.dumps({"spec": self.spec, "vocab": self.vocab, "origins": self.origins,
                                       "offset": self.series_offset, "n_series": self.n_series,
                                       "first_day": self.history.first_day, "chunk_rows": self.chunk_rows,
                                       "code": self.code},
                                      sort_keys=True).encode())
        for array in (self.history.store_nbr, self.history.item_nbr, self.history.sales, self.history.promo,
                      self.history.observed, self.history.perishable, self.history.holidays):
            h.update(np.ascontiguousarray(array).tobytes())
        for table in (self.history.items, self.history.stores):
            for name in sorted(table):
                h.update(name.encode() + np.asarray(table[name]).astype(str).tobytes())
        return h.hexdigest()[:16]


def shard_schema(spec: FeatureSpec) -> pa.Schema:
    return pa.schema([(ROW_COLUMN, pa.int64())]
                     + [(name, pa.float32()) for name in dense_feature_names(spec)]
                     + [(CATEGORICAL_PREFIX + name, pa.int32()) for name in CATEGORICAL_FIELDS]
                     + [(name, pa.float32()) for name in TARGET_COLUMNS])


def _table(schema: pa.Schema, row: np.ndarray, examples: Examples) -> pa.Table:
    dense, categorical = examples.matrix.dense, examples.matrix.categorical
    columns = [pa.array(row)] + [pa.array(dense[:, j]) for j in range(dense.shape[1])]
    columns += [pa.array(categorical[:, j]) for j in range(categorical.shape[1])]
    columns += [pa.array(examples.units), pa.array(examples.weights)]
    return pa.Table.from_arrays(columns, schema=schema)


def build_store_shard(task: StoreTask) -> dict[str, Any]:
    """Build one store's training examples and write its shard (a Dask task; also runs in process).

    Returns ``{"store", "path", "rows", "reused", "rebuilt"}``; an existing shard of the same inputs is kept, one
    that cannot be read (cut short by a full disk, altered) is built again and ``rebuilt`` says why.
    """
    directory = Path(task.out_dir) / f"store={task.store_nbr}"
    target = directory / f"part-{task.digest()}.parquet"
    rebuilt = None
    if target.exists():
        try:
            return {"store": task.store_nbr, "path": str(target), "rows": pq.ParquetFile(target).metadata.num_rows,
                    "reused": True, "rebuilt": None}
        except (pa.ArrowException, OSError) as exc:
            rebuilt = f"the feature shard {target} cannot be read ({exc}); rebuilt"
            target.unlink(missing_ok=True)
    spec = FeatureSpec.from_json(task.spec)
    vocab = Vocabularies.from_json(task.vocab)
    history = task.history
    series, origins = origin_pairs(history.sales.shape[0], task.origins)
    stream = ExampleStream(history, spec, vocab, series, origins, baseline_weeks=None, chunk_rows=task.chunk_rows)
    by_column = np.argsort(task.origins)  # origin column -> its index in task.origins (the in-process order)
    sorted_columns = np.asarray(task.origins, np.int64)[by_column]
    schema = shard_schema(spec)
    rows_written = 0
    with atomic_file(target) as tmp:
        with pq.ParquetWriter(tmp, schema, compression=PARQUET_COMPRESSION) as writer:
            for start in range(0, stream.pairs, stream.chunk_pairs):
                examples, rows, row_series = stream.build_rows(np.arange(start, min(stream.pairs,
                                                                                    start + stream.chunk_pairs)))
                if not len(examples):
                    continue
                origin_col = np.asarray(rows.origin_day, np.int64) - history.first_day
                origin_index = by_column[np.searchsorted(sorted_columns, origin_col)]
                row = ((origin_index * task.n_series + task.series_offset + row_series) * spec.horizon
                       + np.asarray(rows.horizon, np.int64) - 1)
                writer.write_table(_table(schema, row, examples))
                rows_written += len(examples)
    for stale in directory.glob("part-*.parquet"):  # an earlier build of other inputs
        if stale != target:
            stale.unlink(missing_ok=True)
    return {"store": task.store_nbr, "path": str(target), "rows": rows_written, "reused": False, "rebuilt": rebuilt}


def store_slice(history: SalesHistory, start: int, stop: int) -> SalesHistory:
    """The series start..stop of a history (views: nothing is copied until a task is sent)."""
    return dataclasses.replace(history, store_nbr=history.store_nbr[start:stop], item_nbr=history.item_nbr[start:stop],
                               sales=history.sales[start:stop], promo=history.promo[start:stop],
                               observed=history.observed[start:stop], perishable=history.perishable[start:stop],
                               promo_known=None if history.promo_known is None else history.promo_known[start:stop])


def store_tasks(history: SalesHistory, spec: FeatureSpec, vocab: Vocabularies, origins: list[int],
                out_dir: Path, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> list[StoreTask]:
    """One task per store (the history's series are sorted by store, so each store is one slice)."""
    stores, starts = np.unique(history.store_nbr, return_index=True)
    stops = np.r_[starts[1:], history.store_nbr.size]
    code = code_version(entries=EXAMPLE_CODE)
    return [StoreTask(int(s), store_slice(history, int(a), int(b)), int(a), int(history.store_nbr.size),
                      spec.to_json(), vocab.to_json(), [int(o) for o in origins], str(out_dir), chunk_rows, code)
            for s, a, b in zip(stores, starts, stops)]


def build_shards(history: SalesHistory, spec: FeatureSpec, vocab: Vocabularies, origins: list[int],
                 out_dir: Path, client: Any = None, progress: bool = False,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS) -> list[dict[str, Any]]:
    """Every store's shard, on the cluster's workers (``client``) or here; returns the tasks' results by store.

    Stores are sent a few per worker at a time, so neither the scheduler nor a
    worker ever holds more than those stores' history slices. A shard that had to be rebuilt is said in one
    line each on stderr, even without ``progress``.
    """
    from pipeline.cluster import run_tasks

    out_dir = Path(out_dir).resolve()  # workers run elsewhere: the path must not depend on their directory
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = store_tasks(history, spec, vocab, origins, out_dir, chunk_rows)
    known = {f"store={t.store_nbr}" for t in tasks}
    for other in out_dir.glob("store=*"):  # stores no longer in the data
        if other.name not in known:
            shutil.rmtree(other, ignore_errors=True)
    results = []
    with warnings.catch_warnings():
        # Each task carries its store's history slice (~20 MB at Favorita's 4,100 items), a wave at a time,
        # deliberately: reading one store on the worker would scan all of data/split/train.parquet (in date order).
        warnings.filterwarnings("ignore", message="Sending large graph")
        start = 0
        while start < len(tasks):
            # sized by the workers there are now: they may join after the stage began, or leave during it
            wave = len(tasks) if client is None else max(1, TASKS_PER_WORKER * sum(client.nthreads().values()))
            results += run_tasks(build_store_shard, tasks[start:start + wave], client=client,
                                 desc=f"features: stores {start + 1}..{min(len(tasks), start + wave)} of {len(tasks)}",
                                 progress=progress)
            start += wave
    for result in results:
        if result["rebuilt"]:  # said even with --quiet: a damaged file is news
            print(f"features: {result['rebuilt']}", file=sys.stderr, flush=True)
    return results


class ShardStream:
    """Training examples read back from shards: all at once (sorted: the in-process order) or streamed."""

    def __init__(self, paths: list[Path | str], spec: FeatureSpec, label: str = "train shards"):
        self.paths = [Path(p) for p in paths]
        self.spec, self.label = spec, label
        self.dense_names = dense_feature_names(spec)
        expected = shard_schema(spec)
        self._groups: list[tuple[int, int]] = []
        self._rows = 0
        for i, path in enumerate(self.paths):
            if not path.exists():  # a worker wrote it: where this process cannot see it, or since removed
                raise ShardError(f"{path}: feature shard not found (a Dask worker wrote it: the project must be on "
                                 "storage the workers and this process share, at the same path)")
            try:
                parquet = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as exc:  # damaged since it was built: the next build replaces it
                raise ShardError(f"{path}: feature shard cannot be read ({exc}); rerun to build it again") from None
            if not parquet.schema_arrow.equals(expected):
                raise ShardError(f"{path}: columns differ from the features of this spec (stale shard?)")
            self._groups += [(i, g) for g in range(parquet.num_row_groups)]
            self._rows += parquet.metadata.num_rows

    def count_rows(self) -> int:
        return self._rows

    def _examples(self, table: pa.Table) -> tuple[np.ndarray, Examples]:
        def column(name, dtype):
            return table.column(name).to_numpy().astype(dtype, copy=False)

        dense = np.empty((table.num_rows, len(self.dense_names)), np.float32)
        for j, name in enumerate(self.dense_names):
            dense[:, j] = column(name, np.float32)
        categorical = np.empty((table.num_rows, len(CATEGORICAL_FIELDS)), np.int32)
        for j, name in enumerate(CATEGORICAL_FIELDS):
            categorical[:, j] = column(CATEGORICAL_PREFIX + name, np.int32)
        examples = Examples(FeatureMatrix(dense, categorical), column("units", np.float32),
                            column("weight", np.float32), None)
        return column(ROW_COLUMN, np.int64), examples

    def materialize(self) -> Examples:
        """Every example in one matrix, in the in-process build's order (only for sets that fit)."""
        parts = [self._examples(pq.read_table(path)) for path in self.paths]
        width = (len(self.dense_names), len(CATEGORICAL_FIELDS))
        if not parts:
            return Examples.concatenate([], width)
        row = np.concatenate([p[0] for p in parts])
        order = np.argsort(row, kind="stable")
        return Examples.concatenate([p[1] for p in parts], width).take(order)

    def chunks(self, order: np.ndarray) -> Iterator[Examples]:
        """Row groups (one build chunk each) in ``order``."""
        files = [pq.ParquetFile(path) for path in self.paths]
        for k in order:
            i, group = self._groups[int(k)]
            yield self._examples(files[i].read_row_group(group))[1]

    def batches(self, batch_size: int, seed: int) -> Iterator[dict[str, np.ndarray]]:
        """One epoch: row groups in a seeded order, rows shuffled within each (``shuffled_batches``)."""
        rng = np.random.default_rng(seed)
        return shuffled_batches(self.chunks(rng.permutation(len(self._groups))), batch_size, rng)

    def batch_source(self, batch_size: int, seed: int, progress: bool = False):
        """epoch -> that epoch's batches, read on a background thread while the model trains."""
        from engine import data as en_data
        from tqdm import tqdm

        def epoch_batches(epoch: int):
            batches = self.batches(batch_size, seed * 100_003 + epoch)
            if progress:
                batches = tqdm(batches, total=-(-self._rows // batch_size), unit="batch", leave=False,
                               desc=f"{self.label}: epoch {epoch + 1}, streamed batches", **bar_options(progress))
            return en_data.prefetch(batches)

        return epoch_batches


def main(argv: list[str] | None = None) -> int:
    """Build the train stage's feature shards of the current data (on the configured cluster) and stop."""
    from pipeline import train
    from pipeline.cluster import ClusterError, dask_client, scheduler_address
    from pipeline.history import HistoryError, load_history
    from pipeline.model_params import feature_params
    from pipeline.stage import run_stage, stage_params

    def body(args: argparse.Namespace) -> str:
        raw = stage_params(args)
        fparams = feature_params(raw)
        history = load_history([args.root / train.TRAIN_DATA], days=train.days_needed(fparams),
                               progress=not args.quiet)
        _, _, origins = train.origins(history, fparams)
        vocab = train.training_vocabularies(history)
        address = scheduler_address(raw)
        with dask_client(address) as client:
            results = build_shards(history, fparams.spec, vocab, origins, args.out or args.root / SHARD_DIR, client,
                                   progress=not args.quiet)
        rows = sum(r["rows"] for r in results)
        size = sum(Path(r["path"]).stat().st_size for r in results)
        reused = sum(r["reused"] for r in results)
        return (f"{rows:,} training examples of {len(results)} stores in {len(origins)} origins "
                f"({reused} shards kept from an earlier build), {size / 1e9:.2f} GB of shards, "
                f"{'on ' + address if address else 'in this process'}")

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, help=f"shard directory (default: <root>/{SHARD_DIR})")

    return run_stage("feature_shards", body, argv, description=main.__doc__, options=options,
                     errors=(ClusterError, ShardError, HistoryError, train.TrainError, FileNotFoundError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
