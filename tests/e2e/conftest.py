"""Fixtures for the end-to-end tests: the real app under gunicorn on loopback, and headless Chromium.

Chromium comes from Debian's `chromium` + `chromium-driver` (scripts/install_browser.sh);
without them the tests skip and say so.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
WEBDRIVER_PATH = Path(__file__).with_name("webdriver.py")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


webdriver = _load("shelfcast_e2e_webdriver", WEBDRIVER_PATH)


@pytest.fixture(scope="session")
def e2e_bundle(tmp_path_factory) -> Path:
    """A real tiny bundle (shared with tests/app when both run in one session)."""
    tiny = _load("shelfcast_tests_tiny_bundle", REPO / "tests" / "app" / "tiny_bundle.py")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return tiny.tiny_bundles(tmp_path_factory.getbasetemp() / "app-bundles")[0]


class RunningServer:
    def __init__(self, url: str, events_path: Path, process: subprocess.Popen):
        self.url, self.events_path, self.process = url, events_path, process


@pytest.fixture
def gunicorn_server(e2e_bundle, tmp_path) -> Iterator[RunningServer]:
    """`gunicorn --config app/gunicorn_conf.py app.wsgi:app` (as `make serve`) on a free loopback port."""
    from pipeline.bundle import copy_bundle

    production = tmp_path / "models" / "production"
    copy_bundle(e2e_bundle, production)
    port = webdriver.free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("FLUENTD_HOST", "FLASK_DEBUG")}
    events_path = tmp_path / "logs" / "predictions.jsonl"
    env.update(SHELFCAST_MODEL_DIR=str(production), SHELFCAST_PREDICTION_LOG=str(events_path),
               SHELFCAST_EVENT_SPOOL=str(tmp_path / "logs" / "spool"), SHELFCAST_BIND=f"127.0.0.1:{port}",
               SHELFCAST_WORKERS="1")
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log = open(tmp_path / "gunicorn.log", "w", encoding="utf-8")
    process = subprocess.Popen([str(gunicorn), "--config", "app/gunicorn_conf.py", "app.wsgi:app"], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        webdriver.wait_until_answers(f"{url}/readyz", timeout_s=90, process=process, what="gunicorn")
        yield RunningServer(url, events_path, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def browser(tmp_path) -> Iterator:
    """A headless Chromium session driven over WebDriver (skips when Chromium is not installed)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
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
