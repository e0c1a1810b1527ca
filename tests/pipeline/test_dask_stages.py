"""The data stages on a real Dask cluster (2 worker processes) give the same files as in one process.

Each test runs the stage mains as a user does, once in process and once with
$SHELFCAST_DASK_SCHEDULER pointing at the session's LocalCluster, and compares
every output file byte for byte: a team that moves to a cluster keeps its DVC
hashes. Small sizes keep them in the default suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import download, prepare, split
from pipeline import source as source_stage
from pipeline.cluster import SCHEDULER_ENV, ClusterError, dask_client, run_tasks
from pipeline.params import SplitParams
from pipeline.prepare import StoreGridTask, build_store_grid
from pipeline.stage import StageError
from pipeline.store_parts import row_groups_by_store

from .conftest import REPO, default_params, kaggle_sample_files, prepare_with, write_kaggle_sample
from .foreign_data import write_foreign_dataset

OUTPUTS = ("data/raw", "data/prepared", "data/split")


def _project(root: Path, synthetic: dict | None = None) -> Path:
    params = default_params()
    if synthetic:
        params["data"]["synthetic"].update(synthetic)
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _run_stages(root: Path, monkeypatch, scheduler: str | None, stages=(download, prepare, split)) -> None:
    if scheduler is None:
        monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    else:
        monkeypatch.setenv(SCHEDULER_ENV, scheduler)
    for stage in stages:
        assert stage.main(["--root", str(root), "--quiet"]) == 0, stage.__name__


def _files(root: Path) -> dict[str, bytes]:
    """Every output file (hidden ones too: scratch left behind would show here) by its path under root."""
    files = {}
    for output in OUTPUTS:
        for path in sorted((root / output).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(root))] = path.read_bytes()
    return files


def _assert_same_files(local: Path, clustered: Path) -> None:
    in_process, on_cluster = _files(local), _files(clustered)
    assert sorted(on_cluster) == sorted(in_process)
    assert not [name for name in in_process if "/." in name], "scratch files left in an output"
    differing = [name for name in in_process if in_process[name] != on_cluster[name]]
    assert not differing, f"not byte-identical with and without Dask: {differing}"


def test_synthetic_stages_give_the_same_files_on_a_cluster(tmp_path, monkeypatch, dask_cluster):
    """3 stores, 120 items, 6 months: download's months and the stores of prepare and split are tasks on workers."""
    synthetic = dict(stores=3, items=120, start_date="2016-01-01", end_date="2016-06-30", test_days=3)  # 2 waves
    monkeypatch.setattr(prepare, "ROW_GROUP_ROWS", 4_000)  # several row groups per store, split across parts
    local, clustered = _project(tmp_path / "local", synthetic), _project(tmp_path / "cluster", synthetic)
    _run_stages(local, monkeypatch, None)
    _run_stages(clustered, monkeypatch, dask_cluster)
    _assert_same_files(local, clustered)
    assert len(_files(local)) == 7 + 5 + 2  # raw files, prepared tables, train/validation
    for path in ("data/prepared/sales.parquet", "data/split/train.parquet", "data/split/validation.parquet"):
        parquet = pq.ParquetFile(local / path)
        by_store = row_groups_by_store(parquet)  # a worker can read one store's row groups alone
        assert sorted(by_store) == [1, 2, 3] and parquet.num_row_groups > 3, path
        store_two = parquet.read_row_groups(by_store[2], columns=["store_nbr"]).column(0).to_pylist()
        assert set(store_two) == {2} and len(store_two) == pc.sum(pc.equal(
            parquet.read(columns=["store_nbr"]).column(0), 2)).as_py(), path


def test_split_refuses_row_groups_that_mix_stores(tmp_path, dask_cluster):
    """Another tool's sales.parquet (one row group, two stores) cannot be divided by store: the error says so."""
    sales = tmp_path / "sales.parquet"
    days = pa.array([np.datetime64("2016-01-01", "ns") + np.timedelta64(d, "D") for d in range(40)] * 2)
    pq.write_table(pa.table({"date": days, "store_nbr": pa.array([1] * 40 + [2] * 40, pa.int16())}), sales)
    with dask_client(dask_cluster) as client, \
            pytest.raises(StageError, match=r"sales.parquet: row group 0 holds stores 1..2.*rerun the prepare"):
        split.split(sales, tmp_path / "split", SplitParams(validation_days=16), progress=False, client=client)


def test_foreign_shaped_data_give_the_same_files_on_a_cluster(tmp_path, monkeypatch, dask_cluster):
    """Sparse store/item/train ids, gzip train.csv, 430 days: the user's data go through prepare on the workers."""
    source = write_foreign_dataset("sparse_large_ids", tmp_path / "source")
    monkeypatch.setenv("SHELFCAST_DATA_SOURCE", str(source))
    local, clustered = _project(tmp_path / "local"), _project(tmp_path / "cluster")
    stages = (source_stage, download, prepare, split)
    _run_stages(local, monkeypatch, None, stages)
    _run_stages(clustered, monkeypatch, dask_cluster, stages)
    _assert_same_files(local, clustered)


def test_bad_data_found_on_a_worker_names_file_line_and_store(tmp_path, monkeypatch, capsys, dask_cluster):
    """A duplicate key is found while a worker builds its store's grid: still one line, no traceback."""
    files = kaggle_sample_files()
    first_store2 = next(line for line in files["train"].splitlines()[1:] if line.split(",")[2] == "2")
    _, date, store, item, _, promo = first_store2.split(",")
    n_rows = len(files["train"].splitlines()) - 1
    raw = write_kaggle_sample(tmp_path / "project" / "data" / "raw")
    with open(raw / "train.csv", "a", encoding="utf-8") as train:
        train.write(f"{10**6},{date},{store},{item},3.0,{promo}\n")
    (tmp_path / "project" / "params.yaml").write_text(yaml.safe_dump(default_params(), sort_keys=False))
    monkeypatch.setenv(SCHEDULER_ENV, dask_cluster)
    assert prepare.main(["--root", str(tmp_path / "project"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("prepare: error:"), err
    assert "store_nbr=2" in err and "duplicate key" in err and f"line {n_rows + 2}" in err, err
    assert not (tmp_path / "project" / "data" / "prepared").exists()


def test_a_task_that_fails_on_a_worker_names_its_store_partition(tmp_path, dask_cluster):
    """E.g. the data directory is not on storage the workers see: the error says which partition."""
    raw = write_kaggle_sample(tmp_path / "raw")
    task = StoreGridTask(7, str(tmp_path / "not-shared" / "store=7.parquet"), str(tmp_path / "grid-store=7.arrow"),
                         str(raw), (16155, 16156))
    with dask_client(dask_cluster) as client, \
            pytest.raises(ClusterError, match=r"store partition store_nbr=7 .*not-shared.* failed on a Dask worker"):
        run_tasks(build_store_grid, [task], client=client, desc="prepare: stores", progress=False,
                  params=prepare_with(returns="zero", grid="from_first_sale"), train_name="train.csv",
                  row_group_rows=1000)


def test_a_rerun_task_rewrites_its_part_whole(tmp_path, monkeypatch):
    """Dask reruns the task of a worker that died: whatever it left, the rerun leaves the complete part, alone."""
    synthetic = dict(stores=2, items=40, start_date="2016-01-01", end_date="2016-01-31", test_days=0)
    root = _project(tmp_path / "project", synthetic)
    _run_stages(root, monkeypatch, None, (download, prepare))
    sales = root / "data/prepared/sales.parquet"
    parts = tmp_path / "parts"
    parts.mkdir()
    task = split.StoreSplitTask(2, str(sales), tuple(row_groups_by_store(pq.ParquetFile(sales))[2]),
                                (str(parts / "validation.arrow"), str(parts / "train.arrow")))
    cutoff = int(np.datetime64("2016-01-20", "ns").astype(np.int64))
    first = split.split_store(task, cutoff_ns=cutoff)
    complete = {path: Path(path).read_bytes() for path in task.parts}
    Path(task.parts[1]).write_bytes(complete[task.parts[1]][:100])  # what a worker killed mid-write might leave
    assert split.split_store(task, cutoff_ns=cutoff) == first and first["validation"] and first["train"]
    assert {path: Path(path).read_bytes() for path in task.parts} == complete
    assert sorted(p.name for p in parts.iterdir()) == ["train.arrow", "validation.arrow"]  # no temporary file left


def test_without_a_scheduler_dask_is_never_imported(tmp_path):
    """The embedded default starts nothing and pays nothing for the cluster path."""
    root = _project(tmp_path / "project", dict(stores=1, items=40, start_date="2016-01-01", end_date="2016-02-15",
                                              test_days=0))
    code = ("import sys\nfrom pipeline import download, prepare, split\n"
            "for stage in (download, prepare, split):\n"
            f"    assert stage.main(['--root', {str(root)!r}, '--quiet']) == 0\n"
            "assert not {'dask', 'distributed'} & set(sys.modules), 'Dask imported'\n")
    env = {k: v for k, v in os.environ.items() if k not in (SCHEDULER_ENV, "SHELFCAST_DATA_SOURCE")}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)),
                            capture_output=True, text=True, timeout=900)  # generous: a loaded CI box
    assert result.returncode == 0, result.stderr[-2000:]
    assert (root / "data/split/train.parquet").exists()


@pytest.mark.slow  # ~20 s: a cluster of its own, and a stage that waits for the lost worker's task to rerun
def test_a_worker_killed_mid_stage_changes_nothing(tmp_path, monkeypatch):
    """SIGKILL the worker that holds a prepare task: Dask reruns it elsewhere and the file is still the same bytes.

    A cluster of its own (its nannies restart the killed worker), so the session's cluster is left alone.
    """
    from distributed import Client, LocalCluster

    synthetic = dict(stores=3, items=600, start_date="2016-01-01", end_date="2016-06-30", test_days=0)
    local, clustered = _project(tmp_path / "local", synthetic), _project(tmp_path / "cluster", synthetic)
    _run_stages(local, monkeypatch, None, (download, prepare))
    shutil.copytree(local / "data" / "raw", clustered / "data" / "raw")
    killed: list[str] = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="2GB", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as watcher:
        monkeypatch.setenv(SCHEDULER_ENV, cluster.scheduler_address)
        outcome: list[int] = []
        stage = threading.Thread(target=lambda: outcome.append(prepare.main(["--root", str(clustered), "--quiet"])))
        stage.start()
        deadline = time.monotonic() + 120
        while not killed and stage.is_alive() and time.monotonic() < deadline:
            busy = {worker: keys for worker, keys in watcher.processing().items()
                    if any("build_store_grid" in str(key) for key in keys)}
            if busy:
                worker = next(iter(busy))
                pid = watcher.run(os.getpid, workers=[worker])[worker]
                os.kill(pid, signal.SIGKILL)
                killed.append(worker)
            time.sleep(0.02)
        stage.join(timeout=300)
    assert killed, "no prepare task was seen on a worker"
    assert outcome == [0]
    assert _files(clustered) == _files(local)  # the same bytes, and no part or temporary file left in data/prepared


def _scheduler_and_worker(directory: Path) -> tuple[subprocess.Popen, subprocess.Popen, str]:
    """`dask scheduler` and one `dask worker` as a user starts them, on 127.0.0.1; and the scheduler's address."""
    import json

    env = dict(os.environ, PYTHONPATH=str(REPO))
    scheduler_file = directory / "scheduler.json"
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (scheduler_file.exists() and scheduler_file.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    address = json.loads(scheduler_file.read_text())["address"]
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--no-dashboard", "--host", "127.0.0.1"], env=env, cwd=directory,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return scheduler, worker, address


@pytest.mark.slow  # ~20 s: a scheduler and a worker of their own, one of them killed
def test_a_scheduler_killed_mid_stage_is_the_stages_one_line_alone(tmp_path, monkeypatch):
    """SIGKILL the scheduler while a prepare task runs: the stage said it in one line, after distributed's own log of
    the client's reconnection ending — a 50-line traceback of its cancelled reconnect (asyncio.CancelledError), or
    `distributed.client - ERROR - Failed to reconnect to scheduler after 30.00 seconds` one second after the loss."""
    from distributed import Client

    synthetic = dict(stores=4, items=600, start_date="2016-01-01", end_date="2016-06-30", test_days=0)
    root = _project(tmp_path / "project", synthetic)
    _run_stages(root, monkeypatch, None, (download,))
    scheduler, worker, address = _scheduler_and_worker(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO), **{SCHEDULER_ENV: address})
    try:
        with Client(address, timeout="60s") as watcher:
            watcher.wait_for_workers(1, timeout=60)
            stage = subprocess.Popen([sys.executable, "-m", "pipeline.prepare", "--root", str(root), "--quiet"],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 120
            while stage.poll() is None and time.monotonic() < deadline:
                if any("build_store_grid" in str(key) for keys in watcher.processing().values() for key in keys):
                    break
                time.sleep(0.02)
        scheduler.kill()
        _, err = stage.communicate(timeout=120)
    finally:
        for process in (worker, scheduler):
            process.kill()
            process.wait(timeout=30)
    assert stage.returncode == 1
    assert err == ("prepare: error: prepare: stores: lost the Dask scheduler mid-stage (its tasks were cancelled); "
                   "rerun once it is back\n"), err
    assert not (root / "data" / "prepared").exists() and [p.name for p in (root / "data").iterdir()] == ["raw"]
