"""Fixtures for the end-to-end tests: the real app under gunicorn on loopback, and headless Chromium.

Chromium comes from Debian's `chromium` + `chromium-driver` (scripts/install_browser.sh);
without them the tests skip and say so.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from app import launch

REPO = Path(__file__).resolve().parents[2]
WEBDRIVER_PATH = Path(__file__).with_name("webdriver.py")
AXE_AUDIT_PATH = Path(__file__).with_name("axe_audit.py")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


webdriver = _load("shelfcast_e2e_webdriver", WEBDRIVER_PATH)
axe_audit = _load("shelfcast_e2e_axe_audit", AXE_AUDIT_PATH)


@pytest.fixture(scope="session")
def e2e_bundle(tmp_path_factory) -> Path:
    """A real tiny bundle (shared with tests/app when both run in one session)."""
    tiny = _load("shelfcast_tests_tiny_bundle", REPO / "tests" / "app" / "tiny_bundle.py")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return tiny.tiny_bundles(tmp_path_factory.getbasetemp() / "app-bundles")[0]


class RunningServer:
    def __init__(self, served: launch.ServedApp, events_path: Path, model_dir: Path, drift_dir: Path):
        self.url, self.events_path, self.model_dir, self.drift_dir = served.url, events_path, model_dir, drift_dir
        self.stop = served.stop  # a test may take the server away mid-page (the fixture's own stop then does nothing)


@pytest.fixture
def gunicorn_server(e2e_bundle, tmp_path) -> Iterator[RunningServer]:
    """`gunicorn --config app/gunicorn_conf.py app.wsgi:app` (as `make serve`) on a free loopback port."""
    from pipeline.bundle import copy_bundle

    production = tmp_path / "models" / "production"
    copy_bundle(e2e_bundle, production)
    events_path = tmp_path / "logs" / "predictions.jsonl"
    drift_dir = tmp_path / "logs" / "drift"  # the test's own: not the repository's logs/drift, whatever is there
    served = launch.start({"SHELFCAST_MODEL_DIR": str(production), "SHELFCAST_PREDICTION_LOG": str(events_path),
                           "SHELFCAST_EVENT_SPOOL": str(tmp_path / "logs" / "spool"), "SHELFCAST_WORKERS": "1",
                           "SHELFCAST_DRIFT_DIR": str(drift_dir)},
                          tmp_path / "gunicorn.log", timeout_s=90)
    try:
        yield RunningServer(served, events_path, production, drift_dir)
    finally:
        served.stop(timeout_s=30)


@pytest.fixture
def browser(tmp_path) -> Iterator:
    """A headless Chromium session driven over WebDriver (skips when Chromium is not installed)."""
    chromium = webdriver.find_chromium()
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Chromium not installed (needs Debian's chromium and chromium-driver: scripts/install_browser.sh)")
    service = webdriver.ChromeDriver(driver, chromium, tmp_path / "chromium-profile", tmp_path / "chromedriver.log")
    try:
        session = service.session()
        try:
            yield session
        finally:
            session.quit()
    finally:
        service.stop()


@pytest.fixture(scope="session")
def axe():
    """axe-core, to run in a page (tests/e2e/axe_audit.py); skips without npm, fails when not installed."""
    return axe_audit.Axe.installed()
