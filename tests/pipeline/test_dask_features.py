"""Training examples built on a Dask LocalCluster (2 workers) are the in-process ones, and train the same model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import feature_shards, train
from pipeline.cluster import SCHEDULER_ENV, dask_client
from pipeline.features import Vocabularies
from pipeline.history import build_history, load_history
from pipeline.model_params import feature_params, train_params
from tests.pipeline.models.conftest import TINY_PARAMS, tiny_prepared, write_params, write_tiny_project


@pytest.fixture(scope="module")
def history():
    return build_history(tiny_prepared(stores=3, items=24, days=220)[0])


def _params(**features):
    params = copy.deepcopy(TINY_PARAMS)
    params["features"].update(features)
    params["train"].update(max_steps=60, eval_every_steps=20)
    return feature_params(params), train_params(params)


def _same_examples(a, b):
    assert a.matrix.dense.tobytes() == b.matrix.dense.tobytes()
    assert np.array_equal(a.matrix.categorical, b.matrix.categorical)
    assert np.array_equal(a.units, b.units) and np.array_equal(a.weights, b.weights)


def test_shards_built_on_the_cluster_are_the_in_process_examples_and_train_the_same_model(dask_cluster, history,
                                                                                          tmp_path):
    fparams, tparams = _params()
    here = train.prepare_training(history, fparams, tparams.baseline_weeks, seed=tparams.seed)
    with dask_client(dask_cluster) as client:
        there = train.prepare_training(history, fparams, tparams.baseline_weeks, seed=tparams.seed, client=client,
                                       shard_dir=tmp_path / "shards")
    shards = sorted((tmp_path / "shards").glob("store=*/part-*.parquet"))
    assert [p.parent.name for p in shards] == ["store=1", "store=2", "store=3"]  # one shard per store
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in shards) == len(here.train) == there.train_examples
    _same_examples(here.train, there.train)  # same rows, same order: held sets are sorted back
    _same_examples(here.inner, there.inner)
    assert here.vocab.values == there.vocab.values
    assert here.batch_order == there.batch_order == "held"  # a checkpoint of one resumes in the other
    _, model_here = train.fit(tparams, here, fparams.spec)
    _, model_there = train.fit(tparams, there, fparams.spec)
    assert model_here.best_step == model_there.best_step
    for name, value in model_here.weights.items():
        assert value.tobytes() == model_there.weights[name].tobytes(), name


def test_streamed_shards_are_every_example_once_and_training_runs(dask_cluster, history, tmp_path):
    fparams, tparams = _params(in_memory_examples=3_000)  # fewer than the examples: they stream from the shards
    here = train.prepare_training(history, fparams, tparams.baseline_weeks, seed=tparams.seed)
    with dask_client(dask_cluster) as client:
        there = train.prepare_training(history, fparams, tparams.baseline_weeks, seed=tparams.seed, client=client,
                                       shard_dir=tmp_path / "shards")
    assert not there.in_memory and isinstance(there.train_stream, feature_shards.ShardStream)
    # another batch order than the in-process stream: a checkpoint of one must not be resumed by the other
    assert (here.batch_order, there.batch_order) == ("streamed", "streamed from shards")
    _same_examples(here.train, there.train)  # the statistics sample is the same seeded sample
    every = here.train_stream.materialize()
    assert there.train_examples == len(every)
    streamed = list(there.train_stream.batches(256, seed=5))
    assert all(len(b["weight"]) == 256 for b in streamed[:-1]) and len(streamed) == there.batches_per_epoch(256)

    def rows(dense, log1p):
        return sorted(map(bytes, np.column_stack([dense, log1p[:, None].astype(np.float32)])))

    assert rows(np.concatenate([b["dense"] for b in streamed]), np.concatenate([b["log1p"] for b in streamed])) \
        == rows(every.matrix.dense, np.log1p(every.units))
    again = list(there.train_stream.batches(256, seed=5))
    assert all(np.array_equal(a["dense"], b["dense"]) for a, b in zip(streamed, again))  # reproducible
    config, result = train.fit(tparams, there, fparams.spec)
    assert result.steps_run == tparams.max_steps and np.isfinite(result.curves[-1]["inner_validation_nwrmsle"])


def test_a_retried_task_keeps_the_finished_shard_and_a_changed_input_replaces_it(history, tmp_path):
    fparams, _ = _params()
    spec = fparams.spec
    _, _, origins = train.origins(history, fparams)
    vocab = Vocabularies.fit(history.series_categorical())
    task = feature_shards.store_tasks(history, spec, vocab, origins, tmp_path)[1]
    first = feature_shards.build_store_shard(task)
    again = feature_shards.build_store_shard(task)  # what Dask does when the worker died after writing
    assert not first["reused"] and again["reused"] and again["path"] == first["path"] and again["rows"] == first["rows"]
    shorter = feature_shards.store_tasks(history, spec, vocab, origins[:2], tmp_path)[1]
    replaced = feature_shards.build_store_shard(shorter)
    assert replaced["path"] != first["path"] and not Path(first["path"]).exists()
    assert [p.name for p in (tmp_path / "store=2").iterdir()] == [Path(replaced["path"]).name]  # no temp files


def test_the_command_builds_the_train_stages_shards_on_the_configured_cluster(dask_cluster, tmp_path, monkeypatch,
                                                                              capsys):
    root = write_tiny_project(tmp_path / "project")
    write_params(root, TINY_PARAMS)
    monkeypatch.setenv(SCHEDULER_ENV, dask_cluster)
    assert feature_shards.main(["--root", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"on {dask_cluster}" in out and "of 2 stores" in out
    assert len(list((root / feature_shards.SHARD_DIR).glob("store=*/part-*.parquet"))) == 2
    # the train stage's own tasks find those shards done (same vocabularies, same key): nothing is rebuilt
    fparams = feature_params(yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")))
    staged = load_history([root / train.TRAIN_DATA], days=train.days_needed(fparams))
    _, _, origins = train.origins(staged, fparams)
    tasks = feature_shards.store_tasks(staged, fparams.spec, train.training_vocabularies(staged), origins,
                                       root / feature_shards.SHARD_DIR)
    assert all(feature_shards.build_store_shard(task)["reused"] for task in tasks)


def test_shards_made_by_other_example_code_are_not_reused(history, tmp_path):
    """Shards left by an interrupted run were reused after features.py changed: the model silently differed from
    the in-process one (1,242 of 23,322 rows' features). The example code's version is part of a shard's name."""
    import dataclasses

    from pipeline.versions import EXAMPLE_CODE, code_version

    fparams, _ = _params()
    _, _, origins = train.origins(history, fparams)
    vocab = Vocabularies.fit(history.series_categorical())
    task = feature_shards.store_tasks(history, fparams.spec, vocab, origins, tmp_path)[1]
    assert task.code == code_version(entries=EXAMPLE_CODE) and len(task.code) == 64
    first = feature_shards.build_store_shard(task)
    other_code = feature_shards.build_store_shard(dataclasses.replace(task, code="0" * 64))
    assert not other_code["reused"] and other_code["path"] != first["path"]


def test_a_shard_this_process_cannot_see_is_one_line_saying_why(tmp_path, capsys):
    """Workers wrote shards on storage the train process does not share: a traceback ending in ShardError."""
    from pipeline.stage import run_stage

    def body(args):
        feature_shards.ShardStream([tmp_path / "store=1" / "part-0.parquet"], _params()[0].spec)

    assert run_stage("train", body, []) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"train: error: {tmp_path}/store=1/part-0.parquet: feature shard not found (a Dask worker "
                          "wrote it: the project must be on storage the workers and this process share")
    assert err.count("\n") == 1


def test_a_shard_cut_short_is_rebuilt_with_one_line_naming_it(history, tmp_path, capsys):
    """A truncated shard (a full disk, a copy cut short) made every rerun fail with "ArrowInvalid: Parquet magic
    bytes not found", naming no file: it is rebuilt, as a damaged checkpoint is."""
    fparams, _ = _params()
    _, _, origins = train.origins(history, fparams)
    vocab = Vocabularies.fit(history.series_categorical())
    first = feature_shards.build_shards(history, fparams.spec, vocab, origins, tmp_path)
    damaged = Path(first[1]["path"])
    whole = damaged.read_bytes()
    damaged.write_bytes(whole[:len(whole) // 2])
    capsys.readouterr()
    again = feature_shards.build_shards(history, fparams.spec, vocab, origins, tmp_path, progress=False)
    said = [line for line in capsys.readouterr().err.splitlines() if line.strip()]  # said even when quiet
    assert len(said) == 1 and said[0].startswith(f"features: the feature shard {damaged} cannot be read (")
    assert said[0].endswith("); rebuilt")
    assert [r["reused"] for r in again] == [True, False, True] and damaged.read_bytes() == whole
    # damaged after it was built (read by training): one line naming it, not Arrow's traceback
    from pipeline.stage import run_stage

    damaged.write_bytes(b"PAR1 cut")
    assert run_stage("train", lambda args: feature_shards.ShardStream([damaged], fparams.spec), []) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"train: error: {damaged}: feature shard cannot be read (") and err.count("\n") == 1


def test_an_item_that_never_sold_in_the_history_is_unknown_to_the_model(history):
    """``train.training_vocabularies`` is the one rule (the train stage and ``python -m pipeline.feature_shards``
    both call it): a series with no row in the history's days adds nothing to the vocabularies."""
    import dataclasses

    items = history.series_categorical()["item_nbr"]
    silent_item = items[0]
    observed = history.observed.copy()
    observed[items == silent_item, :] = False  # that item has no row in any store in these days
    vocab = train.training_vocabularies(dataclasses.replace(history, observed=observed))
    assert str(silent_item) not in vocab.values["item_nbr"]
    assert str(silent_item) in Vocabularies.fit(history.series_categorical()).values["item_nbr"]
    assert train.training_vocabularies(history).values == Vocabularies.fit(history.series_categorical()).values


@pytest.mark.slow  # two whole train stages (MLflow run, bundle, drift statistics): ~50 s
def test_the_train_stage_on_a_cluster_writes_the_candidate_it_writes_in_one_process(dask_cluster, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = copy.deepcopy(TINY_PARAMS)
    params["train"].update(max_steps=60, eval_every_steps=20)
    roots = []
    for name, scheduler in (("here", None), ("there", dask_cluster)):
        root = write_tiny_project(tmp_path / name)
        write_params(root, params)
        if scheduler:
            monkeypatch.setenv(SCHEDULER_ENV, scheduler)
        train.run(root, quiet=True)
        roots.append(root)
    here, there = (root / train.CANDIDATE_DIR / "weights.npz" for root in roots)
    assert here.read_bytes() == there.read_bytes()
    assert not (roots[1] / feature_shards.SHARD_DIR).exists()  # the shards are gone once training finished


def test_stores_are_sent_as_many_at_a_time_as_the_workers_there_are_now(history, tmp_path, monkeypatch):
    """The wave size was fixed when the stage began: begun before the workers joined (``docker compose up`` then
    the stage at once) it stayed one store at a time on one worker for the whole stage, and past a cluster that
    lost workers it kept sending as many stores as the lost ones would have held."""
    import pipeline.cluster as cluster

    fparams, _ = _params()
    _, _, origins = train.origins(history, fparams)
    vocab = Vocabularies.fit(history.series_categorical())
    sent, original = [], cluster.run_tasks

    def run_here(fn, items, client=None, **kwargs):
        sent.append(len(items))
        return original(fn, items, client=None, **kwargs)

    class Joining:  # no worker yet when the stage begins, two (one thread each) from the first wave on
        def __init__(self):
            self.calls = 0

        def nthreads(self):
            self.calls += 1
            return {} if self.calls == 1 else {"tcp://a": 1, "tcp://b": 1}

    monkeypatch.setattr(cluster, "run_tasks", run_here)
    results = feature_shards.build_shards(history, fparams.spec, vocab, origins, tmp_path, client=Joining())
    assert sent == [1, 2] and [r["store"] for r in results] == [1, 2, 3]
