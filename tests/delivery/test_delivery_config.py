"""The workflow files and the make recipes their steps run, checked without running the pipelines: what starts them,
which branch may write to the shared registry, what each job installs, needs and may do, what the image is called."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from .actions import unset_secrets

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


# --- who may write to the shared registry, what the jobs need, what the image is called -----------------------

def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))


def triggers_of(name: str) -> dict:
    document = workflow(name)
    return document.get("on", document.get(True))


def run_steps(job: dict) -> list[str]:
    return [step["run"].strip() for step in job["steps"] if "run" in step]


def dry_run(name: str, contexts: dict, tmp_path: Path):
    """The workflow through the repository's runner (tests/delivery/actions.py) with every `run:` step stubbed:
    which jobs and steps GitHub would start, without starting them."""
    from .actions import run_workflow

    commands = {command: "stubbed" for job in workflow(name)["jobs"].values() for command in run_steps(job)}
    return run_workflow(WORKFLOWS / name, contexts, lambda job: tmp_path, lambda job: {}, commands,
                        say=lambda line: None)


def started(run) -> list[str]:
    return [step.command for step in run.steps if step.why == "stubbed"]


ML_CONTEXTS = {"github.event_name": "push", "github.sha": "pushed", "vars.MLFLOW_TRACKING_URI": "http://registry",
               "vars.SHELFCAST_DATA_SOURCE": "",
               **unset_secrets(WORKFLOWS / "ml-pipeline.yml")}
AFTER_ML = {"github.event_name": "workflow_run", "github.ref": "refs/heads/main", "github.sha": "main-now",
            "github.repository": "Owner/shelfcast", "github.event.workflow_run.conclusion": "success",
            "github.event.workflow_run.head_branch": "main", "github.event.workflow_run.head_sha": "tested",
            "github.event.workflow_run.event": "push",
            "github.event.workflow_run.head_repository.full_name": "Owner/shelfcast"}
# started by hand on main (another event: the workflow_run fields are empty, as GitHub leaves them)
BY_HAND = {**AFTER_ML, "github.event_name": "workflow_dispatch", "github.sha": "dispatched",
           **{key: "" for key in AFTER_ML if key.startswith("github.event.workflow_run.")}}
APP_CONTEXTS = {"github.repository_owner": "Owner", "github.actor": "someone",
                "vars.MLFLOW_TRACKING_URI": "http://registry",
                "vars.SHELFCAST_URL": "", "vars.SHELFCAST_MODELS_HOST": "/srv/shelfcast/models",
                "vars.SHELFCAST_PREDICTION_LOG": "", "vars.ELASTICSEARCH_URL": "",
                **unset_secrets(WORKFLOWS / "app-pipeline.yml"), **BY_HAND}


def test_a_run_on_another_branch_runs_the_gate_and_registers_nothing(tmp_path):
    """A manual ml-pipeline run on a feature branch registered its model @shadow in the shared registry; the app
    pipeline (workflow_run, no branch filter) then canaried and promoted it."""
    on_main = started(dry_run("ml-pipeline.yml", {**ML_CONTEXTS, "github.ref": "refs/heads/main"}, tmp_path))
    on_branch = started(dry_run("ml-pipeline.yml", {**ML_CONTEXTS, "github.ref": "refs/heads/try-lr"}, tmp_path))
    assert {"make promote", "make dvc-push"} <= set(on_main)
    assert "make ml-pipeline" in on_branch and "make threshold-test" in on_branch
    assert not {"make promote", "make dvc-push"} & set(on_branch), on_branch

    after = {**APP_CONTEXTS, **AFTER_ML}
    from_main = dry_run("app-pipeline.yml", {**after, "github.event.workflow_run.head_branch": "main"}, tmp_path)
    assert "make deploy" in started(from_main)
    from_branch = dry_run("app-pipeline.yml", {**after, "github.event.workflow_run.head_branch": "try-lr"}, tmp_path)
    assert set(from_branch.jobs.values()) == {"skipped"}
    # started by hand on a branch: its code is tested and its image built, but nothing is released
    by_hand = dry_run("app-pipeline.yml", {**APP_CONTEXTS, "github.ref": "refs/heads/try-lr"}, tmp_path)
    assert by_hand.jobs["release"] == "skipped" and "make publish-image" in started(by_hand)
    assert triggers_of("app-pipeline.yml")["workflow_run"]["branches"] == ["main"]  # GitHub's filter, before the if:


def test_a_failed_step_skips_the_rest_of_its_job(tmp_path):
    """The runner's step `if:` (success() unless a status function is named), on a small workflow."""
    from .actions import run_workflow

    path = tmp_path / "wf.yml"
    path.write_text(yaml.safe_dump({"name": "wf", "jobs": {"one": {"steps": [
        {"run": "echo first"}, {"run": "exit 3"}, {"run": "echo never"},
        {"if": "github.ref == 'refs/heads/main'", "run": "echo never either"},
        {"if": "${{ always() }}", "run": "echo always"}, {"if": "failure()", "run": "echo on failure"}]}}}))
    run = run_workflow(path, {"github.ref": "refs/heads/main"}, lambda job: tmp_path, lambda job: {}, {},
                       say=lambda line: None)
    assert run.jobs == {"one": "failure"}
    assert [(step.command, step.returncode) for step in run.steps] == [
        ("echo first", 0), ("exit 3", 3), ("echo never", None), ("echo never either", None), ("echo always", 0),
        ("echo on failure", 0)]


def test_the_jobs_holding_the_dvc_remote_s_credentials_install_its_plugin():
    """The S3 credentials were passed, but DVC's S3 plugin was never installed: `dvc push` to s3:// failed with
    "s3 is supported, but requires 'dvc-s3' to be installed"."""
    from packaging.requirements import Requirement

    holders = [(name, job_name, job) for name in ("ml-pipeline.yml", "app-pipeline.yml")
               for job_name, job in workflow(name)["jobs"].items() if "AWS_ACCESS_KEY_ID" in (job.get("env") or {})]
    assert len(holders) == 2
    for name, job_name, job in holders:
        assert "s3" in str(job["env"].get("VENV_EXTRAS", "")).split(","), f"{name} {job_name}"
        assert "make venv" in run_steps(job)

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = [Requirement(r) for r in project["optional-dependencies"]["s3"]]
    assert [r.name for r in pinned] == ["dvc-s3"] and str(pinned[0].specifier).startswith("==")
    dvc_pin = next(Requirement(r) for r in project["dependencies"] if r.startswith("dvc=="))
    assert importlib.metadata.version("dvc") in dvc_pin.specifier  # the dvc whose s3 range is read below
    dvc_s3_range = next(Requirement(r) for r in importlib.metadata.requires("dvc")
                        if r.startswith("dvc-s3") and 'extra == "s3"' in r).specifier
    assert str(pinned[0].specifier)[2:] in dvc_s3_range, (pinned[0], dvc_s3_range)

    def installs(*args: str, **env: str) -> str:
        out = subprocess.run(["make", "-n", "-W", "pyproject.toml", "venv", *args], cwd=REPO, capture_output=True,
                             text=True, env={**os.environ, **env}).stdout
        return re.search(r"scripts/pip_install.py -e '([^']+)'", out).group(1)

    assert installs() == ".[test]"
    assert installs(VENV_EXTRAS="s3") == ".[test,s3]"  # as the workflows set it: in the job's env
    assert installs("VENV_EXTRAS=s3,kaggle") == ".[test,s3,kaggle]"


def test_the_release_job_stops_at_its_start_without_a_host_release_store_or_the_served_traffic(tmp_path):
    """Unset, the release store was models/ in the runner's checkout, which actions/checkout (git clean -ffdx)
    wipes before every run: the host lost its releases. Likewise the canary check read logs/predictions.jsonl of
    the checkout, where the serving app logs nothing: it judged a canary on no traffic."""
    release = workflow("app-pipeline.yml")["jobs"]["release"]
    assert release["steps"][0]["uses"].startswith("actions/checkout@")
    assert run_steps(release)[0] == "make release-store-check"
    assert {"SHELFCAST_MODELS_HOST", "SHELFCAST_PREDICTION_LOG", "ELASTICSEARCH_URL"} <= set(release["env"])
    host_log = str(tmp_path / "app" / "predictions.jsonl")

    def check(store: str | None, log: str | None = host_log, elasticsearch: str = "") -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items()
               if k not in ("SHELFCAST_MODELS_HOST", "SHELFCAST_PREDICTION_LOG", "ELASTICSEARCH_URL")}
        env["ELASTICSEARCH_URL"] = elasticsearch  # as GitHub passes an unset repository variable: empty
        if store is not None:
            env["SHELFCAST_MODELS_HOST"] = store
        if log is not None:
            env["SHELFCAST_PREDICTION_LOG"] = log
        return subprocess.run(["make", "--no-print-directory", "-s", "release-store-check"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)

    def refused(done: subprocess.CompletedProcess, variable: str) -> bool:
        said = [line for line in done.stderr.splitlines() if not line.startswith("make")]
        return done.returncode != 0 and len(said) == 1 and variable in said[0]

    for store in (None, "", "models", str(REPO / "models")):
        assert refused(check(store), "SHELFCAST_MODELS_HOST"), store
    store = str(tmp_path / "models")
    for log in (None, "", "logs/predictions.jsonl", str(REPO / "logs" / "predictions.jsonl")):
        assert refused(check(store, log), "SHELFCAST_PREDICTION_LOG"), log
    assert check(store).returncode == 0
    assert check(store, None, elasticsearch="http://127.0.0.1:9200").returncode == 0  # the compose stack's events


def test_no_job_is_named_for_a_deploy_it_does_not_do():
    """`build-publish-deploy` published an image and started nothing: the app's code is not deployed by CI."""
    for name in ("ml-pipeline.yml", "app-pipeline.yml"):
        for job_name, job in workflow(name)["jobs"].items():
            if "deploy" in f"{job_name} {job.get('name', '')}".lower():
                assert "make deploy" in run_steps(job), f"{name}: job {job_name} deploys nothing"


def fake_bundle(path: Path, salt: str) -> Path:
    """Files that pass pipeline.bundle.verify_bundle (their content is not read): a bundle with its own digest."""
    from pipeline.bundle import CHECKSUMS_FILE, DATA_FILES, GRAPH_FILES, file_digest

    path.mkdir(parents=True)
    for name in GRAPH_FILES + DATA_FILES:
        (path / name).write_text(f"{name} {salt}", encoding="utf-8")
    files = {name: file_digest(path / name) for name in GRAPH_FILES + DATA_FILES}
    (path / CHECKSUMS_FILE).write_text(json.dumps({"files": files}), encoding="utf-8")
    return path


def test_two_models_on_one_commit_get_two_image_tags(tmp_path):
    """The tag was the commit alone, though the image bakes in @production as fetched at build time: a rebuild
    after a new model pushed over the same tag."""
    from pipeline.bundle import verify_bundle

    probe = tmp_path / "probe.mk"
    probe.write_text("probe:\n\t@echo $(IMAGE_TAG)\n", encoding="utf-8")

    def tag(project: Path) -> str:
        done = subprocess.run(["make", "-s", "-f", str(REPO / "monitoring" / "delivery.mk"), "-f", str(probe), "probe",
                               f"BIN={Path(sys.executable).parent}"], cwd=project, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    tags = []
    for salt in ("one", "two"):
        bundle = fake_bundle(tmp_path / salt / "models" / "production", salt)
        tags.append(tag(tmp_path / salt))
        assert tags[-1].endswith(verify_bundle(bundle)[:12]), tags[-1]
    assert tags[0] != tags[1]
    assert re.fullmatch(r"[\w][\w.-]{0,127}", tags[0])  # a valid docker tag


def test_the_ml_pipeline_retrains_on_a_schedule_and_when_its_recipes_change():
    """Nothing retrained when the data changed; a change to the steps' recipes (Makefile, delivery.mk, the
    workflows) did not run the pipeline it changed."""
    triggers = triggers_of("ml-pipeline.yml")
    crons = [entry["cron"] for entry in triggers["schedule"]]
    assert crons and all(len(cron.split()) == 5 for cron in crons)
    paths = triggers["push"]["paths"]
    for changed in ("Makefile", "monitoring/delivery.mk", ".github/workflows/ml-pipeline.yml",
                    ".github/workflows/app-pipeline.yml"):
        assert triggered(changed, paths), changed
    assert triggered(".github/workflows/app-pipeline.yml", push_paths("app-pipeline.yml"))


def test_actionlint_knows_every_self_hosted_runner_label():
    config = yaml.safe_load((REPO / ".github" / "actionlint.yaml").read_text(encoding="utf-8"))
    declared = set(config["self-hosted-runner"]["labels"])
    for name in ("ml-pipeline.yml", "app-pipeline.yml"):
        for job in workflow(name)["jobs"].values():
            labels = job["runs-on"] if isinstance(job["runs-on"], list) else [job["runs-on"]]
            if "self-hosted" in labels:
                assert set(labels) - {"self-hosted", "linux", "x64", "arm64"} <= declared, labels


def test_write_permission_and_approval_where_they_are_used():
    """`packages: write` was granted to every job of the app pipeline, and two jobs waited on `production`'s
    approval."""
    app = workflow("app-pipeline.yml")
    assert "write" not in (app.get("permissions") or {}).values()
    for job_name, job in app["jobs"].items():
        if "write" in (job.get("permissions") or {}).values():
            assert "make publish-image" in run_steps(job), job_name
    assert [n for n, job in app["jobs"].items() if job.get("environment") == "production"] == ["release"]


def test_every_deployment_environment_a_job_names_is_documented():
    """ml-pipeline's train-evaluate-promote names the `model-registry` environment, which no document mentioned: a
    team setting the workflows up knew of `production` alone, and not where that job's secrets could be scoped."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("The deployment environments the workflows name:")
    sentence = readme[start:readme.index("train and gate there.", start)]
    named = {name: (job["environment"] if isinstance(job["environment"], str) else job["environment"]["name"])
             for workflow_name in ("ml-pipeline.yml", "app-pipeline.yml")
             for name, job in workflow(workflow_name)["jobs"].items() if "environment" in job}
    assert set(named.values()) == {"production", "model-registry"}, named
    for job, environment in named.items():
        assert f"`{environment}` (the `{job}` job" in sentence or f"`{environment}` (`{job}`" in sentence, \
            (job, environment)


def test_every_action_is_pinned_to_a_commit_that_dependabot_keeps_current():
    """Every `uses:` named a movable tag (`docker/login-action@v3`): whoever moves the tag runs other code in the job,
    and build-publish's job-level env hands docker/login-action the registry's password and the DVC remote's keys
    (with `packages: write`). A full commit SHA cannot be moved; its release is said in a comment, and Dependabot
    proposes the next one."""
    for name in ("ml-pipeline.yml", "app-pipeline.yml"):
        text = (WORKFLOWS / name).read_text(encoding="utf-8")
        uses = re.findall(r"^\s*(?:- )?uses:\s*(.*)$", text, re.M)
        assert uses, name
        for line in uses:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}\s+# v\d+\.\d+\.\d+", line), (name, line)
    dependabot = yaml.safe_load((REPO / ".github" / "dependabot.yml").read_text(encoding="utf-8"))
    assert {"package-ecosystem": "github-actions", "directory": "/"}.items() <= dependabot["updates"][0].items()


def test_every_job_that_runs_the_suite_keeps_the_kernel_cache_the_engine_uses(monkeypatch):
    """Found by a fresh-runner measure: with an empty Numba cache `make test` took 13 min of tests (780 s), ~8 with
    a warm one; the runners kept none. Each job that runs `make test` restores the engine's own cache folder first
    (engine/config.py default_cache_dir, as a runner's HOME gives it) and saves it under the commit."""
    from engine.config import default_cache_dir

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", "/home/runner")
    for name in ("ml-pipeline.yml", "app-pipeline.yml"):
        for job_name, job in workflow(name)["jobs"].items():
            runs = [step.get("run", "") for step in job["steps"]]
            if "make test" not in runs:
                continue
            caches = [(number, step["with"]) for number, step in enumerate(job["steps"])
                      if step.get("uses", "").startswith("actions/cache@")]
            assert len(caches) == 1, (name, job_name)
            number, cache = caches[0]
            assert number < runs.index("make test"), (name, job_name)
            assert os.path.expanduser(cache["path"].replace("~", "/home/runner", 1)) == default_cache_dir()
            assert cache["key"] == "numba-kernels-${{ github.sha }}" and cache["restore-keys"] == "numba-kernels-"


def test_only_the_record_job_keeps_the_token_in_its_checkout():
    """actions/checkout writes the job's GITHUB_TOKEN into .git/config unless told not to, and every later step can
    read it there: pipeline code and the packages `make venv` installs, in build-publish with `packages: write`.
    The record job was made the only one that runs git with the token (it pushes the lock) and no pipeline code;
    every other job now leaves it out of the checkout."""
    for name in ("ml-pipeline.yml", "app-pipeline.yml"):
        for job_name, job in workflow(name)["jobs"].items():
            checkouts = [step.get("with") or {} for step in job["steps"]
                         if step.get("uses", "").startswith("actions/checkout@")]
            assert len(checkouts) == 1, (name, job_name)
            keeps = checkouts[0].get("persist-credentials", True) is not False
            assert keeps == ((name, job_name) == ("ml-pipeline.yml", "record")), (name, job_name, checkouts[0])


def run_with_real_checks(name: str, contexts: dict, checks: tuple[str, ...]):
    """The workflow through the runner with every `run:` step stubbed but ``checks``, which run for real here (make
    targets that read only the environment), in a clean runner's environment."""
    from .actions import run_workflow, runner_environment

    commands = {command: "stubbed" for job in workflow(name)["jobs"].values() for command in run_steps(job)
                if command not in checks}
    return run_workflow(WORKFLOWS / name, contexts, lambda job: REPO, lambda job: runner_environment(), commands,
                        say=lambda line: None)


def test_the_jobs_using_the_shared_registry_stop_at_their_start_without_it(tmp_path):
    """GitHub passes an unset vars.MLFLOW_TRACKING_URI as "", which is the checkout's own sqlite store: the ML
    pipeline on main promoted its candidate into the runner's mlflow.db, thrown away with the runner, and passed;
    the app pipeline it started then failed at fetch-model with a traceback about a missing local bundle."""
    checks = ("make registry-check",)
    for uri in ("", "sqlite:///mlflow.db", f"sqlite:///{REPO / 'mlflow.db'}"):
        ml = run_with_real_checks("ml-pipeline.yml", {**ML_CONTEXTS, "vars.MLFLOW_TRACKING_URI": uri,
                                                      "github.ref": "refs/heads/main"}, checks)
        assert ml.jobs["train-evaluate-promote"] == "failure", (uri, ml.jobs)
        assert not {"make venv", "make ml-pipeline", "make promote"} & set(started(ml)), (uri, started(ml))
        said = [line for line in ml.step("make registry-check").output.splitlines() if not line.startswith("make")]
        assert len(said) == 1 and "MLFLOW_TRACKING_URI" in said[0], said

        app = run_with_real_checks("app-pipeline.yml", {**APP_CONTEXTS, "vars.MLFLOW_TRACKING_URI": uri,
                                                        "github.event_name": "workflow_dispatch",
                                                        "github.ref": "refs/heads/main",
                                                        "github.event.workflow_run.conclusion": "",
                                                        "github.event.workflow_run.head_branch": ""}, checks)
        assert app.jobs["build-publish"] == "failure" and app.jobs["release"] == "skipped", (uri, app.jobs)
        assert "make fetch-model" not in started(app), started(app)

    # a branch run trains and gates only: its runs may go to the runner's own store
    branch = run_with_real_checks("ml-pipeline.yml", {**ML_CONTEXTS, "vars.MLFLOW_TRACKING_URI": "",
                                                      "github.ref": "refs/heads/try-lr"}, checks)
    assert branch.jobs["train-evaluate-promote"] == "success" and "make ml-pipeline" in started(branch)
    # the shared registry set: every job runs, the check names it without the password it may carry
    ml = run_with_real_checks("ml-pipeline.yml", {**ML_CONTEXTS, "vars.MLFLOW_TRACKING_URI": "http://ci:pw@registry",
                                                  "github.ref": "refs/heads/main"}, checks)
    assert ml.conclusion == "success" and "make promote" in started(ml)
    assert "shared registry is http://registry" in ml.step("make registry-check").output
    assert "pw" not in ml.step("make registry-check").output
    outside = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a self-hosted runner's store outside its checkout
    app = run_with_real_checks("app-pipeline.yml", {**APP_CONTEXTS, "vars.MLFLOW_TRACKING_URI": outside,
                                                    "vars.SHELFCAST_PREDICTION_LOG": str(tmp_path / "app.jsonl"),
                                                    "github.event_name": "workflow_dispatch",
                                                    "github.ref": "refs/heads/main",
                                                    "github.event.workflow_run.conclusion": "",
                                                    "github.event.workflow_run.head_branch": ""},
                              checks + ("make release-store-check",))
    assert app.conclusion == "success" and "make deploy" in started(app), \
        [(s.command, s.output) for s in app.steps if s.returncode]


def test_dvc_push_fails_when_dvc_cannot_read_its_remotes(tmp_path):
    """`dvc remote list` failing (here: a merge left conflict markers in .dvc/config) read as "no remote": the step
    said "nothing to push" and passed, and the ML pipeline pushed nothing."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, timeout=60)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "dvc"), "init", "-q"], cwd=tmp_path, check=True, timeout=120)
    (tmp_path / "stamp").touch()

    def dvc_push() -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-s", "--no-print-directory", "-f", str(REPO / "monitoring" / "delivery.mk"),
                               "dvc-push", f"BIN={bin_dir}", f"STAMP={tmp_path / 'stamp'}"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    done = dvc_push()  # a readable config without a remote: nothing to push, and that is fine
    assert done.returncode == 0 and "no DVC remote configured" in done.stdout, done.stdout + done.stderr
    (tmp_path / ".dvc" / "config").write_text(
        "[core]\n<<<<<<< HEAD\n    remote = shared\n=======\n    remote = backup\n>>>>>>> other\n"
        "['remote \"shared\"']\n    url = /nonexistent/shared\n", encoding="utf-8")
    done = dvc_push()
    assert done.returncode != 0, done.stdout + done.stderr
    assert "nothing to push" not in done.stdout and "dvc-push: `dvc remote list` failed" in done.stderr


def test_a_failed_dvc_push_ends_in_one_line_saying_what_to_do(tmp_path):
    """DVC's own error for a remote it cannot write ("unexpected error - ...", then "Having any troubles? Hit us up
    at https://dvc.org/support") was the step's last word: no remedy. Now one line: DVC's reason and what to do."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, timeout=60)
    bin_dir = Path(sys.executable).parent
    dvc = str(bin_dir / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True, timeout=120)
    (tmp_path / "data.txt").write_text("sales\n", encoding="utf-8")
    subprocess.run([dvc, "add", "-q", "data.txt"], cwd=tmp_path, check=True, timeout=120)
    (tmp_path / "blocker").touch()  # the remote's folder lies under a file: no object can be written there
    subprocess.run([dvc, "remote", "add", "-d", "shared", str(tmp_path / "blocker" / "remote")], cwd=tmp_path,
                   check=True, timeout=120)
    (tmp_path / "stamp").touch()
    done = subprocess.run(["make", "-s", "--no-print-directory", "-f", str(REPO / "monitoring" / "delivery.mk"),
                           "dvc-push", f"BIN={bin_dir}", f"STAMP={tmp_path / 'stamp'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout + done.stderr
    told = [line for line in done.stderr.splitlines() if not line.startswith("make")]
    assert len(told) == 1, done.stderr
    assert told[0].startswith("dvc-push: error: `dvc push` failed: ") and "Not a directory" in told[0], told
    assert "rerun `make dvc-push` once fixed" in told[0] and "Having any troubles" not in done.stderr


PROXY_PROBE = """
import sys, urllib.request
import requests
url = sys.argv[1]
with urllib.request.urlopen(url, timeout=10) as response:
    print("urllib", response.status)
print("requests", requests.get(url, timeout=10).status_code)
print("runner's own entry kept:", urllib.request.proxy_bypass_environment("mlflow.corp.example"))
"""


def test_the_make_targets_reach_loopback_past_a_runner_s_proxy(tmp_path):
    """The release job runs on a self-hosted runner, and one behind a proxy sets HTTP_PROXY/http_proxy, often without
    NO_PROXY: urllib and requests then sent `make deploy`'s requests to the app at http://127.0.0.1:5005 (and to the
    compose stack's Elasticsearch, or a registry on the host) through the proxy, and deploy said "Connection refused:
    is the app running there" of a serving app. A recipe's environment now adds loopback to both spellings, keeping
    the runner's own entries (urllib and requests read no_proxy first: loopback there alone would hide them)."""
    import http.server
    import socket
    import threading

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens: a proxy that refuses
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = tmp_path / "probe.py"
    script.write_text(PROXY_PROBE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    env.update(http_proxy=dead_proxy, HTTP_PROXY=dead_proxy, NO_PROXY="mlflow.corp.example")  # the runner's
    try:
        done = subprocess.run(["make", "--no-print-directory", "-s", "--eval",
                               f"proxy-probe: ; @{sys.executable} {script} http://127.0.0.1:{server.server_port}/",
                               "proxy-probe"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split("\n")[:3] == ["urllib 200", "requests 200", "runner's own entry kept: True"], done.stdout


def test_compose_waits_for_the_apps_graceful_stop_before_killing_it():
    """`docker compose stop` kills a container `stop_grace_period` after SIGTERM (Docker's default: 10 s); gunicorn
    gives its workers graceful_timeout to send their spooled events. Shorter, and a stop with a backlog killed
    workers mid-close."""
    grace = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))["services"]["app"].get(
        "stop_grace_period", "10s")
    seconds = int(re.fullmatch(r"(\d+)s", grace).group(1))
    conf = (REPO / "app" / "gunicorn_conf.py").read_text(encoding="utf-8")
    graceful = int(re.search(r"^graceful_timeout = (\d+)", conf, re.M).group(1))
    assert seconds >= graceful + 10, (seconds, graceful)


# --- the app pipeline after the ML pipeline: the commit that run tested, and only a run worth releasing ----------

def checkouts(run) -> dict[str, list[dict]]:
    """job -> the evaluated `with:` of each actions/checkout step it ran."""
    found: dict[str, list[dict]] = {}
    for step in run.steps:
        if step.command.split("@")[0] == "actions/checkout" and step.why == "GitHub-hosted action":
            found.setdefault(step.job, []).append(step.inputs)
    return found


def test_a_release_after_the_ml_pipeline_checks_out_the_commit_that_run_tested(tmp_path):
    """The workflow_run-triggered jobs checked out the latest main (actions/checkout's default for workflow_run),
    not `github.event.workflow_run.head_sha`: a push landing between the two runs was released untested."""
    after = dry_run("app-pipeline.yml", {**APP_CONTEXTS, **AFTER_ML}, tmp_path)
    assert after.jobs == {"test": "success", "build-publish": "success", "release": "success"}
    assert {job: [c.get("ref") for c in found] for job, found in checkouts(after).items()} == \
        {"test": ["tested"], "build-publish": ["tested"], "release": ["tested"]}
    # a push or a run by hand: its own commit
    for contexts in ({**BY_HAND, "github.event_name": "push"}, BY_HAND):
        own = dry_run("app-pipeline.yml", {**APP_CONTEXTS, **contexts}, tmp_path)
        assert {c.get("ref") for found in checkouts(own).values() for c in found} == {contexts["github.sha"]}


def test_only_a_successful_ml_pipeline_run_on_this_repository_s_main_is_released(tmp_path):
    """`branches: [main]` matches the head branch's name alone: a pull request from a fork's branch called main
    passed it, and the release (with the repository's secrets and the production host) would have checked out the
    fork's head_sha. Every job that runs after the ML pipeline checks the run's conclusion, event and repository."""
    assert "workflow_run" in triggers_of("app-pipeline.yml")
    for wrong in ({"github.event.workflow_run.conclusion": "failure"},
                  {"github.event.workflow_run.head_branch": "try-lr"},
                  {"github.event.workflow_run.event": "pull_request"},
                  {"github.event.workflow_run.event": "pull_request_target"},
                  {"github.event.workflow_run.head_repository.full_name": "someone/shelfcast"}):
        run = dry_run("app-pipeline.yml", {**APP_CONTEXTS, **AFTER_ML, **wrong}, tmp_path)
        assert set(run.jobs.values()) == {"skipped"} and not run.steps, (wrong, run.jobs)
    for event in ("push", "schedule", "workflow_dispatch"):
        run = dry_run("app-pipeline.yml", {**APP_CONTEXTS, **AFTER_ML, "github.event.workflow_run.event": event},
                      tmp_path)
        assert run.jobs["release"] == "success", (event, run.jobs)
    # each job guards itself: none relies on a `needs` chain alone (a job added without `needs: test` would not)
    for job_name, job in workflow("app-pipeline.yml")["jobs"].items():
        condition = str(job.get("if", ""))
        for name in ("conclusion", "head_branch", "event", "head_repository.full_name"):
            assert f"github.event.workflow_run.{name}" in condition, (job_name, name)


def test_a_re_run_job_uploads_its_artifacts_again(tmp_path):
    """upload-artifact v4 refuses a name the run already holds (409 Conflict), and a re-run job is the same run: after
    train-evaluate-promote failed past its `if: always()` upload of `evaluation` (a dvc push the S3 store refused, a
    registry that timed out), "Re-run failed jobs" failed again at that upload whatever the rest did, the `record`
    job was skipped and the app pipeline released nothing; "Re-run all jobs" after a failed `record` failed at
    `pipeline-record` the same way, and a pull request's re-run `gate` at `evaluation`. Each upload now overwrites."""
    from .actions import WorkflowError, _hosted_action, run_workflow

    runner, artifacts = tmp_path / "runner", tmp_path / "artifacts"
    (runner / "results").mkdir(parents=True)
    (runner / "results" / "evaluation.json").write_text("{}")
    upload = {"name": "plain", "path": "results/"}
    _hosted_action("actions/upload-artifact", upload, runner, None, artifacts)
    try:  # the runner refuses a second upload of one name as GitHub does, or this test proves nothing
        _hosted_action("actions/upload-artifact", upload, runner, None, artifacts)
        raise AssertionError("a second upload of one artifact name was taken")
    except WorkflowError as refused:
        assert "409" in str(refused)
    shutil.rmtree(artifacts)

    commands = {command: "stubbed" for job in workflow("ml-pipeline.yml")["jobs"].values()
                for command in run_steps(job)}
    for contexts in ({**ML_CONTEXTS, "github.ref": "refs/heads/main"}, {**ML_CONTEXTS, **PULL_REQUEST}):
        for attempt in ("first", "re-run"):
            (runner / "dvc.lock").write_text(f"the {attempt} attempt's lock\n")
            run = run_workflow(WORKFLOWS / "ml-pipeline.yml", contexts, lambda job: runner, lambda job: {},
                               commands, say=lambda line: None, artifacts=artifacts)
            assert set(run.jobs.values()) <= {"success", "skipped"}, (contexts["github.event_name"], run.jobs)
        record = artifacts / "pipeline-record" / "dvc.lock"  # main only: what the record job commits
        assert not record.exists() or record.read_text() == "the re-run attempt's lock\n"
        assert (artifacts / "evaluation" / "results" / "evaluation.json").is_file()
        shutil.rmtree(artifacts)


# --- pull requests: tested and gated, with nothing to write to and no secrets ----------------------------------

PULL_REQUEST = {"github.event_name": "pull_request", "github.ref": "refs/pull/7/merge", "github.sha": "merge-of-7",
                **{key: "" for key in AFTER_ML if key.startswith("github.event.workflow_run.")}}


def test_a_pull_request_to_main_is_tested_and_gated_without_secrets_or_writes(tmp_path):
    """No workflow ran on a pull request: a team's changes reached main untested. Now both run on one to main: the
    tests, and the ML pipeline's gate on the PR's code; nothing that writes the registry, the DVC remote, the image
    registry or the serving host, and no job that reads a secret (a fork's pull request gets none)."""
    for name in ("ml-pipeline.yml", "app-pipeline.yml"):
        triggers = triggers_of(name)
        assert triggers["pull_request"]["branches"] == ["main"], name
        assert triggers["pull_request"]["paths"] == triggers["push"]["paths"], name  # what a push to main would run

    ml = dry_run("ml-pipeline.yml", {**ML_CONTEXTS, **PULL_REQUEST}, tmp_path)
    assert {"make test", "make venv", "make ml-pipeline", "make threshold-test"} <= set(started(ml)), started(ml)
    app = dry_run("app-pipeline.yml", {**APP_CONTEXTS, **PULL_REQUEST}, tmp_path)
    assert {"make test", "make lint-docker"} <= set(started(app)), started(app)
    writes = {"make registry-check", "make promote", "make dvc-push", "make metrics-event", "make commit-lock",
              "make fetch-model", "make publish-image", "make release-sync", "make deploy"}
    assert not writes & set(started(ml) + started(app)), started(ml) + started(app)

    for name, run in (("ml-pipeline.yml", ml), ("app-pipeline.yml", app)):
        document = workflow(name)
        assert "secrets." not in yaml.safe_dump(document.get("env") or {}), name
        assert set((document.get("permissions") or {}).values()) <= {"read"}, name
        for job_name, outcome in run.jobs.items():
            if outcome == "skipped":
                continue
            job = document["jobs"][job_name]
            assert "secrets." not in yaml.safe_dump(job), (name, job_name)
            assert "environment" not in job, (name, job_name)  # a deployment environment's secrets and approval
            assert set((job.get("permissions") or {}).values()) <= {"read"}, (name, job_name)
            runs_on = job["runs-on"] if isinstance(job["runs-on"], list) else [job["runs-on"]]
            assert "self-hosted" not in runs_on, (name, job_name)  # a fork's code on the serving host


# --- the record: dvc.lock and the metrics committed to main ----------------------------------------------------

def test_the_ml_pipeline_records_its_lock_on_main_from_a_job_that_runs_git_alone(tmp_path):
    """ml-pipeline never committed dvc.lock: the repository did not record which data and model versions a promoted
    model came from. The `record` job commits it (make commit-lock) on main, never for a pull request or another
    branch, and is the only job that may write the repository; it runs no pipeline code and reads no secret."""
    for event in ("push", "schedule", "workflow_dispatch"):
        run = dry_run("ml-pipeline.yml", {**ML_CONTEXTS, "github.event_name": event, "github.ref": "refs/heads/main"},
                      tmp_path)
        assert run.jobs["record"] == "success" and started(run)[-1] == "make commit-lock", (event, started(run))
        assert started(run).index("make promote") < started(run).index("make commit-lock")
    branch = dry_run("ml-pipeline.yml", {**ML_CONTEXTS, "github.event_name": "workflow_dispatch",
                                         "github.ref": "refs/heads/try-lr"}, tmp_path)
    pull_request = dry_run("ml-pipeline.yml", {**ML_CONTEXTS, **PULL_REQUEST}, tmp_path)
    for run in (branch, pull_request):
        assert run.jobs["record"] == "skipped" and "make commit-lock" not in started(run), run.jobs

    document = workflow("ml-pipeline.yml")
    assert document["permissions"] == {"contents": "read"}
    writers = {name: job["permissions"] for name, job in document["jobs"].items()
               if "write" in (job.get("permissions") or {}).values()}
    assert writers == {"record": {"contents": "write"}}, writers
    record = document["jobs"]["record"]
    assert run_steps(record) == ["make commit-lock"] and "secrets." not in yaml.safe_dump(record)
    assert "environment" not in record and record["needs"] == "train-evaluate-promote"
    # what it commits is what train-evaluate-promote wrote, handed over as an artifact
    uploads = {step["with"]["name"]: step["with"]["path"].split()
               for step in document["jobs"]["train-evaluate-promote"]["steps"]
               if step.get("uses", "").startswith("actions/upload-artifact")}
    downloads = [step["with"]["name"] for step in record["steps"]
                 if step.get("uses", "").startswith("actions/download-artifact")]
    assert len(downloads) == 1 and {"dvc.lock", "results/"} <= set(uploads[downloads[0]]), (uploads, downloads)
    assert triggered("scripts/commit_lock.sh", push_paths("ml-pipeline.yml"))  # the step's recipe
