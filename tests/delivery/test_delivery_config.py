"""What starts the two pipelines, and the make variables the release job passes: checked without running them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"


def push_paths(workflow: str) -> list[str]:
    document = yaml.safe_load((WORKFLOWS / workflow).read_text(encoding="utf-8"))
    triggers = document.get("on", document.get(True))  # YAML 1.1 reads a bare `on:` key as True
    return triggers["push"]["paths"]


def triggered(path: str, patterns: list[str]) -> bool:
    return any(path == p or (p.endswith("/**") and path.startswith(p[:-2])) for p in patterns)


def test_a_change_to_anything_the_image_or_the_tests_hold_starts_a_pipeline():
    """A push touching only eventlog/ (copied into the image) or deploy/ (compose's proxy) once started nothing:
    untested, never rebuilt into the image."""
    patterns = push_paths("ml-pipeline.yml") + push_paths("app-pipeline.yml")
    copied = re.findall(r"^COPY (\S+)/ \S+/$", (REPO / "Dockerfile").read_text(encoding="utf-8"), re.M)
    mounted = set(re.findall(r"\./([\w.-]+)/", (REPO / "docker-compose.yml").read_text(encoding="utf-8"))) - {"models"}
    needed = [f"{folder}/x.py" for folder in copied if folder != "models/production"] + \
             [f"{folder}/x" for folder in mounted] + \
             ["tests/app/test_api_predict.py", "Makefile", "Dockerfile", ".dockerignore", "docker-compose.yml",
              "pyproject.toml"]
    assert "eventlog/x.py" in needed and "deploy/x" in needed
    assert [path for path in needed if not triggered(path, patterns)] == []


def test_an_empty_shelfcast_url_means_the_default():
    """GitHub passes an unset repository variable as an empty string: `--url` without its value broke deploy."""
    def deploy_line(*args: str) -> str:
        out = subprocess.run(["make", "-n", "deploy", *args], cwd=REPO, capture_output=True, text=True).stdout
        return next(line for line in out.splitlines() if "pipeline.release deploy" in line)

    assert "--url http://127.0.0.1:5005 " in deploy_line("SHELFCAST_URL=")
    assert "--url http://shelfcast.example:8080 " in deploy_line("SHELFCAST_URL=http://shelfcast.example:8080")
