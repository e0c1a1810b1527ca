"""The two pipelines as two runners would run them, sharing only a real MLflow server (started here).

The ML runner (its own directory: a tiny synthetic project) does what ml-pipeline.yml's job
does — train, evaluate (the gate), promote with SHELFCAST_PROMOTE_ALIAS=shadow — through the
same modules the make targets call, at a tiny scale. The app runner is another, empty
directory with nothing but MLFLOW_TRACKING_URI: it does what app-pipeline.yml's release job
does — `release sync`, then `release deploy` against a running Shelfcast (gunicorn). Three
runs: a better model is released (shadow, canary, promoted); a deliberately worse one is
stopped by the gate; a canary that is worse on actual sales is rolled back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline import tracking
from pipeline.release_store import CANARY, PRODUCTION, SHADOW, ReleaseStore

from .conftest import REPO, tiny_bundle_module

pytestmark = pytest.mark.slow
NAME = tracking.REGISTERED_MODEL


@pytest.fixture
def mlflow_server(tmp_path):
    from .test_release import free_port

    port = free_port()
    log = (tmp_path / "mlflow.log").open("w", encoding="utf-8")
    process = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1",
                                "--backend-store-uri", f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}",
                                "--artifacts-destination", str(tmp_path / "mlflow-artifacts")],
                               cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            assert process.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start in 300 s"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def ml_pipeline(root: Path, uri: str, alias: str, seed: int | None = None, min_improvement: float | None = None):
    """ml-pipeline.yml's job on the ML runner: (re)train, evaluate (the gate), promote; returns promote's exit."""
    from pipeline import evaluate, promote, train

    tiny = tiny_bundle_module()
    env = {"MLFLOW_TRACKING_URI": uri, "SHELFCAST_PROMOTE_ALIAS": alias}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        if not (root / "params.yaml").exists():
            tiny.build_tiny_project(root)
        else:
            params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
            if seed is not None:
                params["train"]["seed"] = seed
            params["evaluate"]["min_improvement"] = -1.0 if min_improvement is None else min_improvement
            (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
            train.run(root, quiet=True)
        if evaluate.main(["--root", str(root), "--quiet"]) != 0:
            return "gate failed"
        return promote.main(["--root", str(root), "--quiet"])


def app_pipeline(host: Path, uri: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO),
           "SHELFCAST_PREDICTION_LOG": str(host / "logs" / "predictions.jsonl")}
    return subprocess.run([sys.executable, "-m", "pipeline.release", "deploy", "--url", url, "--shadow-s", "5",
                           "--share", "0.5", "--requests", "120", "--observe-s", "30", *extra], cwd=host, env=env,
                          capture_output=True, text=True, timeout=600)


def test_two_runners_share_only_the_registry(mlflow_server, tmp_path, monkeypatch):
    from .test_release import ServedApp

    uri = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ml_runner, app_runner = tmp_path / "ml-runner", tmp_path / "app-runner"
    app_runner.mkdir()
    client = tracking.client(app_runner)
    # bootstrap: the first model becomes production directly (nothing to compare it with)
    assert ml_pipeline(ml_runner, uri, PRODUCTION) == 0
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pipeline.release", "sync"], cwd=app_runner, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    served = ServedApp(ReleaseStore(app_runner / "models"), app_runner / "logs" / "predictions.jsonl", tmp_path,
                       None)
    try:
        # run 1: a better model, registered as shadow, released through shadow and canary
        started = time.perf_counter()
        assert ml_pipeline(ml_runner, uri, SHADOW, seed=4) == 0
        ml_s = time.perf_counter() - started
        assert str(client.get_registered_model(NAME).aliases[SHADOW]) == "2"
        deployed = app_pipeline(app_runner, uri, served.url)
        handoff_s = time.perf_counter() - started
        assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]
        assert '"outcome": "promoted"' in deployed.stdout
        assert {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()} == {PRODUCTION: "2"}
        print(f"handoff: ML pipeline {ml_s:.1f} s, ML start -> promoted in production {handoff_s:.1f} s")

        # run 2: a deliberately worse model (the gate asks for 50 % better): stopped, nothing registered
        assert ml_pipeline(ml_runner, uri, SHADOW, seed=5, min_improvement=0.5) == "gate failed"
        assert {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()} == {PRODUCTION: "2"}
        assert len(client.search_model_versions(f"name='{NAME}'")) == 2

        # run 3: a canary that is worse on actual sales (production forecast them exactly): rolled back
        assert ml_pipeline(ml_runner, uri, SHADOW, seed=6) == 0
        actuals = actual_sales_matching(app_runner / "models" / PRODUCTION, tmp_path / "actuals.csv")
        deployed = app_pipeline(app_runner, uri, served.url, "--actuals", str(actuals))
        assert deployed.returncode == 2 and '"outcome": "rolled back"' in deployed.stdout, deployed.stdout[-2000:]
        aliases = {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}
        assert aliases == {PRODUCTION: "2"}
        assert not (app_runner / "models" / CANARY).exists()
    finally:
        served.close()


def actual_sales_matching(production_dir: Path, path: Path) -> Path:
    """A CSV of "actual sales" equal to production's forecasts over its whole catalog and horizon's first day."""
    from app.predictor import load_model

    model = load_model(production_dir)
    stores, items = sorted(model.catalog.stores), sorted(model.catalog.items)
    pairs = [(s, i) for s in stores for i in items]
    day = int(model.horizon_days[0])
    units = model.forecast([s for s, _ in pairs], [i for _, i in pairs], [day] * len(pairs), [0] * len(pairs)).units
    rows = ["store_nbr,item_nbr,date,unit_sales"] + [f"{s},{i},{model.first_date.isoformat()},{float(u)}"
                                                    for (s, i), u in zip(pairs, units)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
