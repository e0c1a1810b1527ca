"""Fixtures for the delivery tests: a real MLflow registry with two released versions of a real tiny model.

The fast tests use a database-backed MLflow store (sqlite) shared by "both runners" — the ML
side that trains, evaluates and promotes, and fresh directories on the app side that hold
nothing but the tracking URI. The experiment's artifact location is created first under the
session's tmp directory, so nothing is written to the working tree. The slow workflow test
starts a real ``mlflow server`` instead (tests/delivery/test_workflows.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pipeline.release_store import ReleaseStore

MODEL_NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml

REPO = Path(__file__).resolve().parents[2]


def a_clone(path: Path) -> Path:
    """A serving host's checkout as far as `release` and `fetch-model` read it: the repository's params.yaml, whose
    promote.model_name names the registered model (the tiny projects' name too), and nothing else."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "params.yaml", path / "params.yaml")
    return path


@pytest.fixture(autouse=True)
def host_checkout(tmp_path):
    """Each test's tmp_path, the host root most of them run `release` and `fetch-model` in, is a_clone."""
    return a_clone(tmp_path)


def predict_status(url: str, instance: dict, request_id: str | None = None) -> int:
    """POST one instance to the app as a user would (with ``request_id`` as its X-Request-ID): the HTTP status, or
    0 when nothing answered."""
    body = json.dumps({"instances": [instance]}).encode()
    headers = {"Content-Type": "application/json", **({"X-Request-ID": request_id} if request_id else {})}
    request = urllib.request.Request(f"{url}/api/v1/predict", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class ServedWithUsers:
    """Shelfcast as `make serve` runs it (gunicorn, 2 workers, hot reload every 0.2 s) on 127.0.0.1,
    with a user thread sending one-instance forecasts over every store×item while a release happens. Here, not in
    test_release.py: the deploy tests of five files serve through it."""

    def __init__(self, store: ReleaseStore, events: Path, workdir: Path, series: list[dict] | None):
        from app import launch
        from pipeline.release_store import PRODUCTION

        self.served = launch.start({"SHELFCAST_WORKERS": "2", "SHELFCAST_MODEL_DIR": str(store.variant_dir(PRODUCTION)),
                                    "SHELFCAST_PREDICTION_LOG": str(events), "SHELFCAST_RELOAD_INTERVAL_S": "0.2",
                                    "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics")},
                                   workdir / "gunicorn.log")
        self.url = self.served.url
        self.series = series
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.users = threading.Thread(target=self._users, daemon=True)
        if series:  # None: no user traffic
            self.users.start()

    def _users(self) -> None:
        n = 0
        while not self.stop.is_set():
            self.statuses.append(predict_status(self.url, self.series[n % len(self.series)]))
            n += 1
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        if self.users.is_alive():
            self.users.join(30)
        self.served.stop()


def tiny_bundle_module():
    """tests/app/tiny_bundle.py by path (pytest runs with --import-mode=importlib: no package imports)."""
    path = REPO / "tests" / "app" / "tiny_bundle.py"
    spec = importlib.util.spec_from_file_location("delivery_tests_tiny_bundle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_registry(uri: str, artifacts: Path) -> None:
    """Create the shelfcast experiment with its artifacts under ``artifacts`` (not ./mlruns of the cwd)."""
    from mlflow import MlflowClient

    from pipeline import tracking

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if client.get_experiment_by_name(tracking.EXPERIMENT_NAME) is None:
        client.create_experiment(tracking.EXPERIMENT_NAME, artifact_location=artifacts.as_uri(),
                                 tags={tracking.EXPERIMENT_KIND_TAG: tracking.MODEL_TRAINING_KIND})


def evaluate_and_promote(root: Path, alias: str) -> dict:
    from pipeline import evaluate, promote

    assert evaluate.main(["--root", str(root), "--quiet"]) == 0
    os.environ["SHELFCAST_PROMOTE_ALIAS"] = alias
    try:
        return promote.run(root, quiet=True)
    finally:
        del os.environ["SHELFCAST_PROMOTE_ALIAS"]


@pytest.fixture(scope="session")
def released(tmp_path_factory):
    """(ML project root, tracking URI, {alias: version}): version 1 is production, version 2 the canary."""
    base = tmp_path_factory.mktemp("delivery")
    uri = f"sqlite:///{(base / 'registry.db').as_posix()}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        prepare_registry(uri, base / "artifacts")
        tiny = tiny_bundle_module()
        root = base / "ml-runner"
        tiny.build_tiny_project(root)
        first = evaluate_and_promote(root, "production")
        tiny.retrain(root, seed=4)
        second = evaluate_and_promote(root, "canary")
    return root, uri, {"production": first["version"], "canary": second["version"]}


@pytest.fixture
def registry_env(released, monkeypatch):
    """The app side's only configuration: the tracking URI."""
    root, uri, versions = released
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri, versions


@pytest.fixture
def host(released, registry_env, tmp_path):
    """A serving host's models directory in sync with the registry (production 1, canary 2, share 0.5)."""
    from pipeline import release, tracking
    from pipeline.release_store import CANARY, PRODUCTION, SHADOW, ReleaseStore

    _, _, versions = released
    client = tracking.client(tmp_path)

    def registry_as_released() -> None:
        client.set_registered_model_alias(MODEL_NAME, PRODUCTION, versions["production"])
        client.set_registered_model_alias(MODEL_NAME, CANARY, versions["canary"])
        for alias in (SHADOW,):
            try:
                client.delete_registered_model_alias(MODEL_NAME, alias)
            except Exception:  # noqa: BLE001 (absent already)
                pass
        client.delete_registered_model_tag(MODEL_NAME, release.PREVIOUS_TAG) if release.PREVIOUS_TAG \
            in (client.get_registered_model(MODEL_NAME).tags or {}) else None

    registry_as_released()
    store = ReleaseStore(tmp_path / "models", keep=2)
    release.sync(tmp_path, store)
    store.set_canary_share(0.5)
    yield tmp_path, store, versions
    registry_as_released()  # the session's registry as `released` left it, for the tests that read it after
