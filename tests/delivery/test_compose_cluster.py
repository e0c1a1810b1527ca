"""docker-compose.yml's optional Dask cluster: the services' own commands, run for real on 127.0.0.1.

No Docker engine here, so the compose file is checked against what it promises: the pair is
under the ``cluster`` profile only (a plain ``docker compose up`` is unchanged), built from the
pipeline image whose pins are pyproject.toml's, with the checkout mounted at its own path and on
PYTHONPATH (the absolute paths a stage sends are valid in the containers, and the code is the
same). Then the scheduler's and the worker's commands — exactly as compose would run them, with
only the addresses moved to free local ports — start a real cluster, their health checks pass,
and the data stages run on it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline import download, prepare

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
CLUSTER = ("dask-scheduler", "dask-worker")


def _defaults(word: str) -> str:
    """Compose interpolation with nothing set: ``${NAME:-default}`` -> default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", word)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health_port(service: dict) -> int:
    return int(re.search(r"127\.0\.0\.1:(\d+)/health", " ".join(service["healthcheck"]["test"])).group(1))


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_cluster_is_an_opt_in_profile_of_the_pipeline_image():
    profiled = {name for name, service in SERVICES.items() if "profiles" in service}
    assert profiled == set(CLUSTER) and all(SERVICES[name]["profiles"] == ["cluster"] for name in CLUSTER)
    dockerfile = (REPO / "deploy" / "pipeline.Dockerfile").read_text()
    assert "pyproject.toml" in dockerfile and "dependencies" in dockerfile  # the pins come from pyproject.toml
    ignore = (REPO / "deploy" / "pipeline.Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:] == ["!pyproject.toml"]
    images = {SERVICES[name]["image"] for name in CLUSTER}
    assert len(images) == 1 and all(SERVICES[name]["build"]["dockerfile"] == "deploy/pipeline.Dockerfile"
                                    for name in CLUSTER)
    for name in CLUSTER:
        service = SERVICES[name]
        mounts = [v for v in service["volumes"] if v["type"] == "bind"]
        assert [(m["source"], m["target"]) for m in mounts] == [("${PWD}", "${PWD}")], name
        assert service["environment"]["PYTHONPATH"] == "${PWD}" and service["working_dir"] == "${PWD}", name
        assert re.fullmatch(r"\$\{SHELFCAST_UID:-\d+\}:\$\{SHELFCAST_GID:-\d+\}", service["user"]), name
    worker = [_defaults(word) for word in SERVICES["dask-worker"]["command"]]
    scheduler = SERVICES["dask-scheduler"]["command"]
    assert worker[:3] == ["dask", "worker", f"tcp://dask-scheduler:{_option(scheduler, '--port')}"]
    assert _option(worker, "--nthreads") == "1" and _option(worker, "--memory-limit").endswith("GB")
    assert SERVICES["dask-worker"]["depends_on"]["dask-scheduler"]["condition"] == "service_healthy"
    port = _option(scheduler, "--port")
    assert f"127.0.0.1:{port}:{port}" in SERVICES["dask-scheduler"]["ports"]  # loopback: a scheduler runs clients' code


def _wait_healthy(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args[:2]} exited {process.returncode}: see its log in tmp_path"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"no health on port {port} within {timeout_s} s")


@pytest.mark.slow  # ~25 s on 2 loaded cores: three Python processes import Dask before the stages run
def test_the_services_commands_start_a_cluster_the_stages_run_on(tmp_path, monkeypatch):
    scheduler_port, scheduler_http, worker_http = _free_port(), _free_port(), _free_port()
    scheduler_cmd = SERVICES["dask-scheduler"]["command"]
    moved = {_option(scheduler_cmd, "--port"): str(scheduler_port),
             _option(scheduler_cmd, "--dashboard-address"): f"127.0.0.1:{scheduler_http}",
             f"tcp://dask-scheduler:{_option(scheduler_cmd, '--port')}": f"tcp://127.0.0.1:{scheduler_port}",
             _option(SERVICES["dask-worker"]["command"], "--dashboard-address"): f"127.0.0.1:{worker_http}",
             "/tmp/dask-worker-space": str(tmp_path / "dask-worker-space")}
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    processes = []
    try:
        for name, health in (("dask-scheduler", scheduler_http), ("dask-worker", worker_http)):
            command = [moved.get(word, word) for word in map(_defaults, SERVICES[name]["command"])]
            command += ["--host", "127.0.0.1"]  # in compose: the container's own address
            log = open(tmp_path / f"{name}.log", "w")  # the process keeps its own copy of the descriptor
            processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
            assert _health_port(SERVICES[name]) == int(_option(SERVICES[name]["command"], "--dashboard-address")
                                                       .rsplit(":", 1)[1])
            _wait_healthy(health, processes[-1])
        root = tmp_path / "project"
        root.mkdir()
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["data"]["synthetic"].update(stores=2, items=60, start_date="2016-01-01", end_date="2016-02-29",
                                           test_days=2)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.setenv("SHELFCAST_DASK_SCHEDULER", f"tcp://127.0.0.1:{scheduler_port}")
        monkeypatch.delenv("SHELFCAST_DATA_SOURCE", raising=False)
        for stage in (download, prepare):
            assert stage.main(["--root", str(root), "--quiet"]) == 0, stage.__name__
        assert (root / "data" / "prepared" / "sales.parquet").stat().st_size > 0
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
