"""The CI/CD definitions: two GitHub Actions pipelines whose every step is a make target that exists here."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

ML_ORDER = ["test", "ml-pipeline", "threshold-test", "promote", "dvc-push", "commit-lock"]
APP_ORDER = ["test", "fetch-model", "build-image", "publish-image", "deploy"]


def workflow(repo_root, name: str) -> dict:
    return yaml.safe_load((repo_root / ".github" / "workflows" / name).read_text(encoding="utf-8"))


def make_targets_in(data: dict) -> list[str]:
    targets = []
    for job in data["jobs"].values():
        for step in job["steps"]:
            if "run" in step:
                match = re.fullmatch(r"make ([a-z-]+)", step["run"].strip())
                assert match, f"step {step.get('name')!r} runs {step['run']!r}, not a single make target"
                targets.append(match.group(1))
            else:
                # a full commit SHA, never a tag that can be moved (tests/delivery/test_delivery_config.py)
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), f"unpinned action {step['uses']}"
    return targets


def in_order(wanted: list[str], got: list[str]) -> bool:
    positions = [got.index(t) for t in wanted if t in got]
    return len(positions) == len(wanted) and positions == sorted(positions)


@pytest.mark.parametrize("name, order", [("ml-pipeline.yml", ML_ORDER), ("app-pipeline.yml", APP_ORDER)])
def test_each_pipeline_runs_make_targets_in_the_lecture_order(repo_root, name, order):
    data = workflow(repo_root, name)
    targets = make_targets_in(data)
    assert in_order(order, targets), targets
    jobs = list(data["jobs"].values())
    assert all(job.get("timeout-minutes") for job in jobs)
    assert jobs[1]["needs"] == "test"


def test_the_app_pipeline_follows_a_successful_ml_pipeline(repo_root):
    data = workflow(repo_root, "app-pipeline.yml")
    triggers = data.get("on") or data.get(True)  # YAML 1.1 reads a bare `on` as true
    assert triggers["workflow_run"]["workflows"] == ["ml-pipeline"]
    assert "conclusion == 'success'" in data["jobs"]["test"]["if"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make not found on PATH")
def test_every_ci_step_is_a_make_target_defined_here(repo_root):
    targets = sorted({t for name in ("ml-pipeline.yml", "app-pipeline.yml")
                      for t in make_targets_in(workflow(repo_root, name))})
    result = subprocess.run(["make", "-n", "-f", "Makefile", "-f", "monitoring/delivery.mk", *targets],
                            cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "No rule to make target" not in result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make not found on PATH")
def test_the_image_name_is_lowercase_whatever_the_owner_is_called(repo_root, tmp_path):
    """ghcr.io/${{ github.repository_owner }} keeps an owner's capitals; docker refuses them in a reference."""
    probe = tmp_path / "probe.mk"  # the test's own: a fixed /tmp name is another user's on a shared runner
    probe.write_text("probe:\n\t@echo $(REGISTRY_LC)/$(IMAGE_LC)\n", encoding="utf-8")
    result = subprocess.run(["make", "-s", "-f", "monitoring/delivery.mk", "-f", str(probe), "probe",
                             "REGISTRY=ghcr.io/Some-Owner", "IMAGE=Shelfcast-App"],
                            cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ghcr.io/some-owner/shelfcast-app", result.stderr
    publish = (repo_root / "monitoring" / "delivery.mk").read_text(encoding="utf-8").split("\npublish-image:")[1]
    assert "docker push $(REGISTRY_LC)/$(IMAGE_LC)" in publish.split("\n\n")[0]


def test_the_app_pipeline_needs_no_git_commit_from_the_ml_pipeline(repo_root):
    """The handoff is the registry alias (pipeline/registry_fetch.py), not a committed models/production.dvc."""
    ml, app = workflow(repo_root, "ml-pipeline.yml"), workflow(repo_root, "app-pipeline.yml")
    assert ml["jobs"]["train-evaluate-promote"]["env"]["SHELFCAST_PROMOTE_ALIAS"] == "shadow"
    assert ml["permissions"] == {"contents": "read"}  # only its `record` job may push (dvc.lock), not the model
    triggers = app.get("on") or app.get(True)
    assert not any(".dvc" in p for p in triggers["push"]["paths"])
    release = app["jobs"]["release"]
    assert "MLFLOW_TRACKING_URI" in release["env"] and "self-hosted" in release["runs-on"]
    assert make_targets_in({"jobs": {"release": release}})[-1] == "deploy"


def test_every_job_that_talks_to_the_registry_can_log_in_to_it(repo_root):
    """Found by a probe: the jobs passed MLFLOW_TRACKING_URI alone, so a team whose tracking server asks for a login
    (`mlflow server --app-name basic-auth`) had every registry step fail 401 in CI. Each job that names the server
    also passes its account from the repository's secrets (unset: empty, and MLflow sends no login)."""
    jobs = [(name, job) for file in ("ml-pipeline.yml", "app-pipeline.yml")
            for name, job in workflow(repo_root, file)["jobs"].items()
            if "MLFLOW_TRACKING_URI" in job.get("env", {})]
    assert len(jobs) == 3, [name for name, _ in jobs]
    for name, job in jobs:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert job["env"].get(key) == f"${{{{ secrets.{key} }}}}", (name, key)
