"""pipeline.cluster: where tasks run (in process, or on a real Dask LocalCluster) and how a scheduler is chosen."""

from __future__ import annotations

import os
import re

import pytest

from pipeline.cluster import SCHEDULER_ENV, ClusterError, dask_client, run_tasks, scheduler_address
from pipeline.params import ParamsError


def _square_with_pid(value: int, offset: int = 0) -> tuple[int, int]:
    return value * value + offset, os.getpid()


def _fails_on_three(value: int) -> int:
    if value == 3:
        raise ValueError("three is bad")
    return value


def test_environment_wins_over_params_and_null_means_in_process():
    params = {"cluster": {"scheduler": "tcp://params:8786"}}
    assert scheduler_address(params, environ={SCHEDULER_ENV: "tcp://env:8786"}) == "tcp://env:8786"
    assert scheduler_address(params, environ={}) == "tcp://params:8786"
    assert scheduler_address({"cluster": {"scheduler": None}}, environ={}) is None
    assert scheduler_address({}, environ={SCHEDULER_ENV: "  "}) is None


def test_bad_cluster_params_name_the_key():
    with pytest.raises(ParamsError, match=r"cluster\.workers: unknown key"):
        scheduler_address({"cluster": {"workers": 2}}, environ={})
    with pytest.raises(ParamsError, match=r"cluster\.scheduler"):
        scheduler_address({"cluster": {"scheduler": 8786}}, environ={})


def test_in_process_runs_here_in_order():
    results = run_tasks(_square_with_pid, [3, 1, 2], desc="squares", progress=False, offset=1)
    assert [value for value, _ in results] == [10, 2, 5]
    assert {pid for _, pid in results} == {os.getpid()}


def test_cluster_runs_on_workers_and_keeps_input_order(dask_cluster):
    with dask_client(dask_cluster) as client:
        results = run_tasks(_square_with_pid, list(range(8)), client=client, desc="squares", progress=False, offset=1)
    assert [value for value, _ in results] == [i * i + 1 for i in range(8)]
    assert os.getpid() not in {pid for _, pid in results}


def test_failed_task_names_its_input(dask_cluster):
    with dask_client(dask_cluster) as client, pytest.raises(ClusterError, match=r"for 3 failed.*three is bad"):
        run_tasks(_fails_on_three, [1, 2, 3, 4], client=client, desc="checks", progress=False)


def test_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(ClusterError, match="cannot be reached"):
        with dask_client("tcp://127.0.0.1:9", timeout_s=2):
            pass


@pytest.mark.parametrize("address", ["notaurl", "tcp://127.0.0.1", "http://localhost:8786", "tcp://:abc",
                                     "tcp://host:0", "tcp://host:70000",
                                     # passed the check, then Dask refused them ("invalid literal for int()"), or
                                     # named a scheduler inside the stage's own process, which it never has
                                     "tcp://127.0.0.1:1/", "tcp://host:8786/path", "inproc://x"])
def test_an_address_dask_cannot_parse_is_a_params_error_naming_where_it_came_from(address):
    """They gave a traceback from inside distributed (ValueError: missing port number ...)."""
    with pytest.raises(ParamsError, match=rf"^cluster.scheduler: '{re.escape(address)}' is not a scheduler address"):
        scheduler_address({"cluster": {"scheduler": address}}, environ={})
    with pytest.raises(ParamsError, match=rf"^\${SCHEDULER_ENV}: '{re.escape(address)}' is not a scheduler"):
        scheduler_address({}, environ={SCHEDULER_ENV: address})
    for good in ("tcp://10.0.0.5:8786", "scheduler:8786", "tls://dask.example.org:8786", "tcp://[::1]:8786"):
        assert scheduler_address({"cluster": {"scheduler": good}}, environ={}) == good


def test_tls_takes_daskconfig_settings_and_without_them_says_which(monkeypatch):
    """tls://… gave a 55-line traceback ending "TypeError: TLS expects a ssl_context": the settings it lacks are
    Dask's own (distributed.comm.tls.*), which the client picks up; a real TLS scheduler, in this process."""
    import dask
    from distributed import LocalCluster
    from distributed.security import Security

    for key in [k for k in os.environ if k.startswith("DASK_")]:
        monkeypatch.delenv(key)
    security = Security.temporary()  # in-memory certificates; Dask's config takes PEM text or file paths alike
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls", security=security,
                      host="127.0.0.1", dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert scheduler_address({}, environ={SCHEDULER_ENV: address}) == address
        with pytest.raises(ClusterError) as refused:
            with dask_client(address, timeout_s=5):
                pass
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"Dask scheduler {address} ")
        assert "TLS needs Dask's security settings" in message and "distributed.comm.tls.ca-file" in message
        with dask.config.set({"distributed.comm.tls.ca-file": security.tls_ca_file,
                              "distributed.comm.tls.client.cert": security.tls_client_cert,
                              "distributed.comm.tls.client.key": security.tls_client_key}):
            with dask_client(address, timeout_s=30) as client:
                assert [v for v, _ in run_tasks(_square_with_pid, [2, 3], client=client, progress=False)] == [4, 9]


def test_ucx_without_its_package_is_one_line_naming_it():
    """ucx://… gave a traceback ending in a TypeError about UCXConnector (Distributed dropped UCX-Py)."""
    import importlib.util

    if importlib.util.find_spec("distributed_ucxx") is not None:
        pytest.skip("distributed-ucxx is installed: ucx:// is a transport like any other here")
    with pytest.raises(ClusterError, match=r"^Dask scheduler ucx://127.0.0.1:1 .*cannot be reached: ucx:// needs "
                                           r"the distributed-ucxx package, which is not installed here$"):
        with dask_client("ucx://127.0.0.1:1", timeout_s=2):
            pass


def _slow(value: int) -> int:
    import time

    time.sleep(value)
    return value


def test_a_cluster_without_workers_fails_the_stage_instead_of_waiting_forever(monkeypatch):
    """A scheduler with no worker (all of them killed, none started) made a stage wait with no output and no end."""
    from distributed import LocalCluster

    import pipeline.cluster as cluster

    monkeypatch.setattr(cluster, "WATCH_S", 0.2)
    monkeypatch.setattr(cluster, "NO_WORKER_S", 1.0)
    with LocalCluster(n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as workerless:
        with dask_client(workerless.scheduler_address) as client:
            with pytest.raises(ClusterError, match=r"^squares: no Dask worker at tcp://127.0.0.1:\d+ for 1 s"):
                run_tasks(_square_with_pid, [1, 2], client=client, desc="squares", progress=False)


def _pause(dask_worker) -> None:
    from distributed.core import Status

    dask_worker.status = Status.paused  # what its memory monitor does past distributed.worker.memory.pause


def test_a_cluster_whose_every_worker_is_paused_for_memory_fails_the_stage_instead_of_waiting_forever(monkeypatch):
    """Workers paused for memory that no task holds (left unmanaged, not given back to the OS) run nothing more:
    the stage waited with a frozen bar and no end, as they still counted as workers."""
    import threading

    from distributed import LocalCluster

    import pipeline.cluster as cluster

    monkeypatch.setattr(cluster, "WATCH_S", 0.2)
    monkeypatch.setattr(cluster, "NO_WORKER_S", 1.0)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, memory_limit=0, protocol="tcp://",
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as paused:
        with dask_client(paused.scheduler_address) as client:
            client.run(_pause)
            outcome: list = []

            def stage() -> None:
                try:
                    outcome.append(run_tasks(_square_with_pid, [1, 2], client=client, desc="squares", progress=False))
                except ClusterError as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=stage, daemon=True)
            thread.start()
            thread.join(timeout=20)
            stuck = thread.is_alive()
            if stuck:  # let the waiting stage end with the cluster
                client.cancel(list(client.futures))
    assert not stuck, "the stage still waits on workers that are all paused"
    assert re.match(r"squares: every Dask worker at tcp://127\.0\.0\.1:\d+ \(1\) has been paused for memory for 1 s",
                    str(outcome[0]))


def test_a_lost_scheduler_is_said_as_such_not_blamed_on_a_task(tmp_path):
    """The scheduler killed mid-stage: the error named a store partition's task as having failed."""
    import subprocess
    import sys
    import time

    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", "0", "--no-dashboard", "--scheduler-file", str(tmp_path / "s.json")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(200):
            if (tmp_path / "s.json").exists() and (tmp_path / "s.json").stat().st_size:
                break
            time.sleep(0.1)
        import json

        address = json.loads((tmp_path / "s.json").read_text())["address"]
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                   "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with dask_client(address) as client:
            client.wait_for_workers(1, timeout=60)
            killer = __import__("threading").Timer(1.0, scheduler.kill)
            killer.start()
            began = time.monotonic()
            with pytest.raises(ClusterError, match=r"^naps: lost the Dask scheduler mid-stage"):
                run_tasks(_slow, [20, 20], client=client, desc="naps", progress=False)
            assert time.monotonic() - began < 60
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.kill()
                process.wait(timeout=30)


def _pretend_this_worker_imported_other_code(relative: str | None) -> None:
    """On a worker: as if ``relative`` had another content when this process imported it (None: forget)."""
    import pipeline.cluster as cluster

    loaded = cluster.__dict__.setdefault("_LOADED", {})
    if relative is None:
        loaded.clear()
    else:
        loaded[relative] = "0" * 64


def test_a_worker_running_code_older_than_the_stages_is_refused_by_name(dask_cluster):
    """A long-lived worker keeps the modules it imported: after pipeline/features.py changed on the shared checkout
    its tasks ran the old code, and (with the new code's digest in their shards' names) were silently kept."""
    with dask_client(dask_cluster) as client:
        run_tasks(_square_with_pid, [1, 2], client=client, desc="squares", progress=False)  # the workers import
        client.run(_pretend_this_worker_imported_other_code, "pipeline/features.py")
        try:
            with pytest.raises(ClusterError, match=r"^squares: a Dask worker at tcp://127\.0\.0\.1:\d+ runs other "
                                                   r"code than this stage \(" + re.escape("pipeline/features.py")
                                                   + r"\).*restart"):
                run_tasks(_square_with_pid, [1, 2, 3], client=client, desc="squares", progress=False)
        finally:
            client.run(_pretend_this_worker_imported_other_code, None)
        assert [v for v, _ in run_tasks(_square_with_pid, [3], client=client, desc="squares", progress=False)] == [9]


def test_a_worker_running_other_blas_kernels_is_refused_for_tasks_that_train(dask_cluster, monkeypatch):
    """A `dask worker` has loaded numpy, and OpenBLAS with it, before a task imports pipeline.blas: too late to pin
    the Haswell kernels. On an AVX-512 machine such a worker ran SkylakeX's, so the backtest windows and sweep runs
    it trained differed from the one-process ones (probed: `dask worker --nworkers 1 --nthreads 1` without
    OPENBLAS_CORETYPE reported ['SkylakeX'] after importing pipeline.blas). A worker whose OpenBLAS runs other
    kernels (here: started with OPENBLAS_CORETYPE=Sandybridge) is now refused for such tasks, saying how to start
    it; data tasks, whose numbers do not depend on BLAS, still run there."""
    from distributed import LocalCluster

    from pipeline import blas

    if not {"avx2", "fma"} <= blas._cpu_flags():
        pytest.skip("the CPU has no AVX2 + FMA: the stage runs the kernels the CPU picks")
    ours = blas.kernels_in_use()
    with monkeypatch.context() as started:  # the worker processes start with it, as from a shell that sets it
        started.setenv(blas.ENV_BLAS_KERNELS, "Sandybridge")
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="2GB",
                               host="127.0.0.1", dashboard_address="127.0.0.1:0")
    with cluster:
        with dask_client(cluster.scheduler_address) as client:
            with pytest.raises(ClusterError) as refused:
                run_tasks(_square_with_pid, [1, 2], client=client, desc="sweep: training runs", progress=False,
                          same_blas_kernels=True)
            assert re.fullmatch(r"sweep: training runs: a Dask worker at tcp://127\.0\.0\.1:\d+ runs OpenBLAS's "
                                rf"Sandybridge kernels, this stage {ours}: the models it trains would differ from "
                                rf"this stage's in their last bits; start the workers with OPENBLAS_CORETYPE={ours} "
                                "in their environment and rerun", str(refused.value)), str(refused.value)
            assert [v for v, _ in run_tasks(_square_with_pid, [1, 2], client=client, progress=False)] == [1, 4]
    with dask_client(dask_cluster) as client:  # workers started with this process's pinned kernels
        assert [v for v, _ in run_tasks(_square_with_pid, [3], client=client, progress=False,
                                        same_blas_kernels=True)] == [9]


def test_a_refused_cluster_scheduler_names_params_yaml_and_the_variable_names_itself(tmp_path):
    """cluster.scheduler's refusal named the param, not the file, where every other section's names both (11215b8);
    $SHELFCAST_DASK_SCHEDULER's names the variable alone: it is not in the file."""
    from pipeline.params import load_yaml

    path = tmp_path / "params.yaml"
    path.write_text("cluster:\n  scheduler: notaurl\n", encoding="utf-8")
    with pytest.raises(ParamsError) as refused:
        scheduler_address(load_yaml(path), environ={})
    assert str(refused.value) == (f"{path}: cluster.scheduler: 'notaurl' is not a scheduler address (expected e.g. "
                                  "tcp://host:8786)")
    with pytest.raises(ParamsError, match=rf"^\${SCHEDULER_ENV}: 'notaurl' is not a scheduler address"):
        scheduler_address(load_yaml(path), environ={SCHEDULER_ENV: "notaurl"})


def _connect_in_a_thread(address: str, timeout_s: float, bound_s: float) -> tuple[bool, list]:
    """dask_client(address) on a thread, given ``bound_s``: (still waiting, [what it raised or 'connected'])."""
    import threading

    outcome: list = []

    def connect() -> None:
        try:
            with dask_client(address, timeout_s=timeout_s):
                outcome.append("connected")
        except ClusterError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout=bound_s)
    return thread.is_alive(), outcome


def test_an_address_that_answers_but_is_not_a_dask_scheduler_is_one_line_not_a_wait_without_end(monkeypatch):
    """The scheduler's dashboard port (tcp://host:8787, an HTTP server) given for the scheduler's: distributed's
    Client waits for the handshake without a bound, so the stage waited with no output and no end (probed: still
    waiting after 200 s, the Client's timeout of 30 s notwithstanding). A worker's address gave the worker's
    TypeError ("Worker.identity() got an unexpected keyword argument 'n_workers'")."""
    from distributed import LocalCluster

    import pipeline.cluster as cluster

    monkeypatch.setattr(cluster, "HANDSHAKE_S", 1.0, raising=False)  # absent before the fix
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as real:
        dashboard = f"tcp://127.0.0.1:{real.scheduler.http_server.port}"
        stuck, outcome = _connect_in_a_thread(dashboard, timeout_s=2, bound_s=30)
        assert not stuck, "the stage still waits on an HTTP server's answer in Dask's protocol"
        assert re.fullmatch(rf"Dask scheduler {dashboard} \(from .*\) cannot be reached: the server there accepts "
                            r"connections but gave no Dask handshake in 3 s: not a Dask scheduler \(an HTTP server\? "
                            r"the scheduler's dashboard is on :8787, the scheduler on :8786 by default\)",
                            str(outcome[0])), outcome
        worker = next(iter(real.scheduler_info["workers"]))
        stuck, outcome = _connect_in_a_thread(worker, timeout_s=5, bound_s=30)
        assert not stuck
        assert str(outcome[0]).endswith(f"cannot be reached: it is a Dask worker's address, not the scheduler's (its "
                                        f"scheduler: {real.scheduler_address}): give the scheduler's address"), outcome
        stuck, outcome = _connect_in_a_thread(real.scheduler_address, timeout_s=5, bound_s=30)
        assert not stuck and outcome == ["connected"]



def test_a_server_that_answers_in_http_is_one_line_not_a_traceback():
    """A server that answers whatever it is sent with an HTTP error and hangs up (as nginx or a load balancer does):
    Dask read "HTTP/1.1" as a frame length, and the stage ended in a 54-line traceback, "numpy._core._exceptions.
    _ArrayMemoryError: Unable to allocate 3.07 EiB for an array with shape (3543824036068086856,)"."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            with connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    try:
        with pytest.raises(ClusterError) as refused:
            with dask_client(address, timeout_s=5):
                pass
    finally:
        server.close()
    assert re.fullmatch(rf"Dask scheduler {address} \(from .*\) cannot be reached: the server there answers in another "
                        r"protocol than Dask's \(MemoryError reading its reply as Dask's\): not a Dask scheduler "
                        r"\(an HTTP server\? .*\)", str(refused.value)), str(refused.value)

def _hog(megabytes: int) -> int:
    """Holds ``megabytes`` of memory, 50 MB at a time, slowly enough for a nanny's memory monitor to see it grow."""
    import time

    import numpy as np

    held = []
    for _ in range(megabytes // 50):
        held.append(np.ones(50 * 2**20, np.uint8))
        time.sleep(0.05)
    time.sleep(1)
    return sum(block.size for block in held)


def _die(value: int) -> int:
    os.kill(os.getpid(), 9)  # a crash: the process is gone, nothing to do with memory
    return value


def test_a_task_that_kills_every_worker_that_runs_it_says_whether_it_was_memory():
    """Workers whose --memory-limit is too small for one store's task: the stage ended in Dask's KilledWorker text
    ("Attempted to run task 'build_store_grid-2757…' on 4 different workers, but all those workers died ...
    Inspecting worker logs is often a good next step"), which names neither the memory nor what to change (probed:
    prepare on two `dask worker --memory-limit 250MB`, a store of 4,100 items)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="600MB", host="127.0.0.1",
                         dashboard_address="127.0.0.1:0") as small:
        with dask_client(small.scheduler_address) as client:
            assert run_tasks(_hog, [50], client=client, progress=False) == [50 * 2**20]
            with pytest.raises(ClusterError) as refused:
                run_tasks(_hog, [2000], client=client, desc="prepare: stores", progress=False)
            assert re.fullmatch(r"prepare: stores: the task for 2000 died with every Dask worker that ran it \(1 run, "
                                r"the last on tcp://127\.0\.0\.1:\d+\): its nanny restarted it for memory, "
                                r"past its terminate share \(95% by default\) of its --memory-limit "
                                r"\(572 MiB, holding [\d,]+ MiB\): the task needs more "
                                r"memory than a worker has; give the workers more \(`dask worker --memory-limit`\) and "
                                r"rerun", str(refused.value)), str(refused.value)
            client.wait_for_workers(1, timeout=60)
            with pytest.raises(ClusterError) as crashed:
                run_tasks(_die, [7], client=client, desc="split: stores", progress=False)
            assert re.fullmatch(r"split: stores: the task for 7 died with every Dask worker that ran it \(1 run, the "
                                r"last on tcp://127\.0\.0\.1:\d+\), not restarted for memory by a nanny: "
                                r"see the workers' logs for why \(a crash, or a process killed from outside\); rerun "
                                r"once it is fixed", str(crashed.value)), str(crashed.value)


def test_a_worker_that_cannot_import_the_project_is_named_not_taken_for_no_worker(tmp_path, monkeypatch):
    """A `dask worker` started from an environment without the project (here: the interpreter's packages alone,
    -S leaving out the .pth that installs the checkout) died unpickling its first task, its nanny with it, and the
    stage waited, then said "no Dask worker at tcp://… for 60 s; start workers and rerun" to a user who had."""
    import subprocess
    import sys
    import sysconfig

    from distributed import Client, LocalCluster

    import pipeline.cluster as cluster

    monkeypatch.setattr(cluster, "WATCH_S", 0.2)
    monkeypatch.setattr(cluster, "NO_WORKER_S", 2.0)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DASK_", "PYTHON"))}
    paths = sysconfig.get_paths()  # Dask and NumPy: the packages, not the project (an editable install's .pth)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys((paths["purelib"], paths["platlib"])))
    if subprocess.run([sys.executable, "-S", "-c", "import pipeline"], cwd=tmp_path, env=env,
                      capture_output=True).returncode == 0:
        pytest.skip("the project is installed into site-packages itself: no environment here lacks it")
    with LocalCluster(n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as bare:
        worker = subprocess.Popen([sys.executable, "-S", "-m", "distributed.cli.dask_worker", bare.scheduler_address,
                                   "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], cwd=tmp_path, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(bare.scheduler_address) as watcher:
                watcher.wait_for_workers(1, timeout=60)
            with pytest.raises(ClusterError) as refused:
                with dask_client(bare.scheduler_address) as client:
                    run_tasks(_square_with_pid, [1, 2], client=client, desc="squares", progress=False)
        finally:
            worker.kill()
            worker.wait(timeout=30)
    assert re.fullmatch(rf"Dask scheduler {re.escape(bare.scheduler_address)} \(from .*\): 1 of its 1 Dask "
                        r"worker\(s\) \(tcp://127\.0\.0\.1:\d+\) cannot import this project's code \(.*No module "
                        r"named 'pipeline'.*\): "
                        r"start them from an environment that has it \(`pip install -e \.` in the shared checkout, or "
                        r"the checkout on their PYTHONPATH\) and rerun; such a worker stops at its first task",
                        str(refused.value)), str(refused.value)
