"""The workflow files run for real: ml-pipeline.yml, then app-pipeline.yml, step by step, as two runners would.

Each job gets a fresh clone of a "GitHub repository" made from this working tree (tests/delivery/
runners.py); the clones share nothing but a real MLflow server (started here) and the DVC remote (a
local directory, committed as the repository's default remote). The jobs' own `run:` steps run in
order (tests/delivery/actions.py: `${{ }}` from the explicit mapping below, unknown expressions fail;
GitHub-hosted `uses:` actions are not run — checkout is the fresh clone, setup-python the seeded venv;
`make test` is not run from inside the suite it belongs to). The serving host is a directory with a
running Shelfcast (gunicorn) whose release store the app pipeline's self-hosted `release` job points
at (`vars.SHELFCAST_MODELS_HOST`); users send forecasts while releases happen.

The repository is committed at a small scale (tests/app/tiny_bundle.py's params, with a gate that lets
a model be at most 20 % worse than the baseline with confidence), so a whole ML pipeline takes well
under a minute. Once, before the first run, an operator makes the first production model (nothing to
compare it with). Then:
1. a better model (another seed): the gate passes, promote registers it as @shadow; the app pipeline
   fetches, builds, and its release job deploys it — shadow, then canary — and the decision promotes it;
2. a deliberately worse model (one training step): the gate stops the ML pipeline; the app pipeline,
   started by a failed run, skips its jobs; nothing is registered, production is unchanged;
3. a model trained on a broken sales feed (every quantity x100, as if it had switched units: the gate,
   evaluating on the same feed, passes it): its canary's forecasts are far above production's and the
   canary check rolls it back.
Then `make rollback` on the host. Printed: the fresh-runner handoff (ML pipeline start -> canary
serving) and the rollback times.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline import release, tracking
from pipeline.release_store import CANARY, PRODUCTION, SHADOW, ReleaseStore

from .actions import run_workflow, runner_environment, unset_secrets
from .conftest import REPO, a_clone, evaluate_and_promote, predict_status, tiny_bundle_module
from .runners import clone, git, set_params, source_repository

pytestmark = pytest.mark.slow
NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml
NOT_RUN = {"make test": "the test suite this test runs inside (CI runs it: .ci/run)"}
# the serving host's runner: a shorter release than the defaults (README "Releases"), so the test stays short
RELEASE_SETTINGS = {"SHADOW_S": "10", "CANARY_SHARE": "0.5", "OBSERVE_S": "40", "SMOKE_REQUESTS": "60"}


def checkout_ref(checkout: Path, ref: str) -> None:
    """actions/checkout's `ref:` in a job's fresh clone (the app pipeline's: the commit the ML pipeline tested)."""
    git(checkout, "checkout", "-q", "--detach", ref)


@pytest.fixture
def mlflow_server(tmp_path):
    from app.launch import free_port

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


class Users:
    """People using the app during a release: one-row forecasts over the catalog, ~10 a second."""

    def __init__(self, url: str, series: list[dict]):
        self.url, self.series, self.statuses = url, series, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        n = 0
        while not self.stop.wait(0.1):
            self.statuses.append(predict_status(self.url, self.series[n % len(self.series)]))
            n += 1

    def close(self) -> list[int]:
        self.stop.set()
        self.thread.join(30)
        return self.statuses


def catalog_series(bundle: Path) -> list[dict]:
    from app.predictor import load_model

    model = load_model(bundle)
    first = model.first_date.isoformat()
    return [{"store_nbr": s, "item_nbr": i, "date": first, "onpromotion": False}
            for s in sorted(model.catalog.stores) for i in sorted(model.catalog.items)]


def broken_feed(raw: Path, path: Path) -> Path:
    """The same sales files with every quantity x100 (a feed that switched units)."""
    import shutil

    import pandas as pd

    shutil.copytree(raw, path)
    train = pd.read_csv(path / "train.csv")
    train["unit_sales"] = train["unit_sales"] * 100
    train.to_csv(path / "train.csv", index=False)
    return path


def aliases(root: Path) -> dict[str, str]:
    return {k: str(v) for k, v in tracking.client(root).get_registered_model(NAME).aliases.items()}


def deploy_report(step) -> dict:
    """The JSON report `release deploy` prints last (make may add its own error line after it)."""
    lines = [line for line in step.output.splitlines() if line.startswith("{")]
    assert lines, step.output[-3000:]
    return json.loads(lines[-1])


def first_line_at(step, text: str) -> float:
    found = [at for at, line in step.lines if text in line]
    assert found, f"{text!r} not in the output of {step.command!r}:\n{step.output[-3000:]}"
    return found[0]


def test_the_workflow_files_run_as_two_runners_would(mlflow_server, tmp_path, monkeypatch):
    from .conftest import ServedWithUsers

    uri, began = mlflow_server, time.monotonic()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    repository = source_repository(REPO, tmp_path / "github")
    remote = tmp_path / "dvc-remote"
    done = subprocess.run([str(Path(sys.executable).with_name("dvc")), "remote", "add", "-d", "shared", str(remote)],
                          cwd=repository, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    set_params(repository, "small scale for the test; the DVC remote everyone shares")
    git(repository, "config", "receive.denyCurrentBranch", "updateInstead")  # the record job pushes dvc.lock to it

    # once, by an operator: the first production model (the same small-scale recipe, seed 3)
    operator = tmp_path / "operator"
    tiny_bundle_module().build_tiny_project(operator)
    evaluate_and_promote(operator, PRODUCTION)
    host = a_clone(tmp_path / "host")
    store, events = ReleaseStore(host / "models"), host / "logs" / "predictions.jsonl"
    release.sync(host, store)
    served = ServedWithUsers(store, events, tmp_path, None)
    series = catalog_series(store.variant_dir(PRODUCTION))
    user_statuses: list[int] = []
    print(f"set-up (repository, first production, app): {time.monotonic() - began:.1f} s")

    tested: dict[int, str] = {}  # run -> the commit its ML pipeline ran on (workflow_run's head_sha)

    def ml_pipeline(run: int, data_source: str = "", event: str = "push", ref: str = "refs/heads/main"):
        tested[run] = git(repository, "rev-parse", "HEAD").strip()
        contexts = {"github.event_name": event, "github.ref": ref, "github.sha": tested[run],
                    "vars.MLFLOW_TRACKING_URI": uri, "vars.SHELFCAST_DATA_SOURCE": data_source,
                    **unset_secrets(repository / ".github/workflows/ml-pipeline.yml")}
        return run_workflow(repository / ".github/workflows/ml-pipeline.yml", contexts,
                            lambda job: clone(repository, tmp_path / f"run{run}-ml-{job}"),
                            lambda job: runner_environment(), NOT_RUN, at_ref=checkout_ref,
                            artifacts=tmp_path / f"run{run}-ml-artifacts")

    def app_pipeline(run: int, ml_run, **settings: str):
        contexts = {"github.event_name": "workflow_run", "github.event.workflow_run.conclusion": ml_run.conclusion,
                    "github.event.workflow_run.head_branch": "main", "github.ref": "refs/heads/main",
                    "github.event.workflow_run.head_sha": tested[run], "github.event.workflow_run.event": "push",
                    "github.event.workflow_run.head_repository.full_name": "Shelfcast-Demo/shelfcast",
                    "github.repository": "Shelfcast-Demo/shelfcast", "github.sha": git(repository, "rev-parse", "HEAD"),
                    "github.actor": "shelfcast-bot",
                    "github.repository_owner": "Shelfcast-Demo", "vars.MLFLOW_TRACKING_URI": uri,
                    "vars.SHELFCAST_URL": served.url, "vars.SHELFCAST_MODELS_HOST": str(store.root),
                    "vars.SHELFCAST_PREDICTION_LOG": str(events), "vars.ELASTICSEARCH_URL": "",
                    **unset_secrets(repository / ".github/workflows/app-pipeline.yml")}
        users = Users(served.url, series)
        try:
            return run_workflow(repository / ".github/workflows/app-pipeline.yml", contexts,
                                lambda job: clone(repository, tmp_path / f"run{run}-app-{job}"),
                                lambda job: runner_environment(**({**RELEASE_SETTINGS, **settings}
                                                                  if job == "release" else {})), NOT_RUN,
                                at_ref=checkout_ref)
        finally:
            user_statuses.extend(users.close())

    try:
        # run 1: a better model
        set_params(repository, "another seed", seed=4)
        started = time.monotonic()
        ml = ml_pipeline(1)
        assert ml.conclusion == "success", [(s.command, s.output[-1500:]) for s in ml.steps if s.returncode]
        ml_s = time.monotonic() - started
        assert aliases(host) == {PRODUCTION: "1", SHADOW: "2"}
        assert "dvc add + push" in ml.step("make promote").output  # the bundle is in the DVC remote too
        # the record: this run's dvc.lock and metrics committed to main on top of the commit it ran on
        assert ml.jobs["record"] == "success" and "committed and pushed" in ml.step("make commit-lock").output
        assert git(repository, "rev-parse", "HEAD^").strip() == tested[1]
        assert set(git(repository, "diff", "--name-only", "HEAD^", "HEAD").split()) <= {
            "dvc.lock", "results/metrics.json", "results/evaluation.json", "results/backtest.json",
            "results/slices.json", "results/plots/daily.csv", "results/plots/predictions.csv"}
        assert git(repository, "show", "HEAD:dvc.lock") == (tmp_path / "run1-ml-train-evaluate-promote" /
                                                             "dvc.lock").read_text(encoding="utf-8")
        app = app_pipeline(1, ml)
        assert app.jobs == {"test": "success", "build-publish": "success", "release": "success"}, \
            [(s.command, s.output[-2000:]) for s in app.steps if s.returncode]
        assert {s.inputs.get("ref") for s in app.steps if s.command.startswith("actions/checkout")} == {tested[1]}
        assert all(git(tmp_path / f"run1-app-{job}", "rev-parse", "HEAD").strip() == tested[1] for job in app.jobs)
        deploy = app.step("make deploy")
        report = deploy_report(deploy)
        handoff_s = first_line_at(deploy, "the app serves the canary") - started
        assert report["outcome"] == "promoted" and report["shadow_verdict"]["figures"]["shadow_predictions"] > 0
        assert CANARY in report["smoke"] and report["verdict"]["decision"] == "promote"
        assert aliases(host) == {PRODUCTION: "2"}
        assert "nothing published" in app.step("make publish-image").output  # no Docker engine here
        built_from = tracking.client(host).get_model_version(NAME, "1").tags["serving_digest"]  # @production then
        assert f"-model-{built_from[:12]})" in app.step("make build-image").output  # the image tag names its model
        assert app.step("make release-store-check").returncode == 0
        figures = report["verdict"]["figures"]
        print(f"run 1: ML pipeline {ml_s:.0f} s; fresh-runner handoff (ML pipeline start -> canary serving) "
              f"{handoff_s:.0f} s; promoted {time.monotonic() - started:.0f} s after the ML pipeline started "
              f"(canary: {figures.get('compared_pairs')} pairs, median log1p shift {figures.get('forecast_log_shift')},"
              f" total {figures.get('forecast_volume_log_ratio')})")

        # a pull request (the same code, standing in for its merge commit): the gate on a fresh runner with no
        # registry, no secret, nothing written; no app pipeline follows (its guard is checked by
        # tests/delivery/test_delivery_config.py)
        started = time.monotonic()
        pull_request = ml_pipeline(12, event="pull_request", ref="refs/pull/1/merge")
        assert pull_request.jobs == {"test": "success", "train-evaluate-promote": "skipped", "record": "skipped",
                                     "gate": "success"}, [(s.command, s.output[-1500:]) for s in pull_request.steps
                                                          if s.returncode]
        assert "passed" in pull_request.step("make threshold-test").output
        assert git(repository, "rev-parse", "HEAD").strip() == tested[12]
        assert aliases(host) == {PRODUCTION: "2"}
        assert len(tracking.client(host).search_model_versions(f"name='{NAME}'")) == 2
        print(f"pull request: gated in {time.monotonic() - started:.0f} s; nothing registered or committed")

        # run 2: a deliberately worse model: one training step
        set_params(repository, "a worse model: one training step", seed=4, max_steps=1, eval_every_steps=1)
        ml = ml_pipeline(2)
        assert ml.jobs["train-evaluate-promote"] == "failure"
        assert ml.jobs["record"] == "skipped" and git(repository, "rev-parse", "HEAD").strip() == tested[2]
        failed = [s for s in ml.steps if s.returncode][0]
        assert failed.command == "make ml-pipeline" and "THRESHOLD TEST FAILED" in failed.output, failed.output[-2000:]
        app = app_pipeline(2, ml)
        assert set(app.jobs.values()) == {"skipped"} and not app.steps
        assert aliases(host) == {PRODUCTION: "2"}
        assert len(tracking.client(host).search_model_versions(f"name='{NAME}'")) == 2
        print("run 2: stopped by the gate; the app pipeline skipped")

        # run 3: a model trained on a broken feed; its canary misbehaves (SHADOW_S=0: straight to canary)
        set_params(repository, "back to the good recipe", seed=4)
        feed = broken_feed(operator / "data" / "raw", tmp_path / "broken-feed")
        ml = ml_pipeline(3, data_source=str(feed))
        assert ml.conclusion == "success", [(s.command, s.output[-1500:]) for s in ml.steps if s.returncode]
        assert aliases(host) == {PRODUCTION: "2", SHADOW: "3"}
        app = app_pipeline(3, ml, SHADOW_S="0")
        deploy = app.step("make deploy")
        assert app.jobs["release"] == "failure" and deploy.returncode == 2, deploy.output[-3000:]
        report = deploy_report(deploy)
        assert report["outcome"] == "rolled back" and "forecast distribution" in report["reason"], report
        # judged on pairs (production's bundle replayed on the canary's requests), by its total units: levels of
        # different series, or the median of pairs dominated by series that sell nothing, sit near the bar
        assert "units in all" in report["reason"] and "production's bundle" in report["reason"], report
        assert report["rollback_s"] is not None
        assert aliases(host) == {PRODUCTION: "2"}
        assert not store.variant_dir(CANARY).exists() and not store.variant_dir(SHADOW).exists()
        print(f"run 3: canary rolled back automatically: {report['reason']}; out of service "
              f"{report['rollback_s']} s after the check failed")

        # make rollback on the host: production back to the previous version (1)
        host_checkout = tmp_path / "run3-app-release"
        env = runner_environment(MLFLOW_TRACKING_URI=uri, SHELFCAST_MODELS_HOST=str(store.root))
        started = time.monotonic()
        done = subprocess.run(["make", "rollback"], cwd=host_checkout, env=env, capture_output=True, text=True,
                              timeout=300)
        command_s = time.monotonic() - started
        assert done.returncode == 0, done.stdout + done.stderr
        digest = tracking.client(host).get_model_version(NAME, "1").tags["serving_digest"]
        release.wait_for_variant(served.url, PRODUCTION, digest, 60)
        rollback_s = time.monotonic() - started
        assert aliases(host) == {PRODUCTION: "1"}
        print(f"make rollback: {command_s:.1f} s (the command), {rollback_s:.1f} s until the app serves version 1")
    finally:
        served.close()
    assert user_statuses and set(user_statuses) == {200}, sorted(set(user_statuses))  # no user request failed
    print(f"workflow test: {time.monotonic() - began:.0f} s in all; {len(user_statuses)} user requests, all 200")
