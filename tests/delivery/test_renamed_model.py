"""A project whose params.yaml names another registered model (``promote.model_name: acme-forecaster``, two teams
sharing one MLflow server) is that model everywhere: promote, release, fetch-model, the bundle's name (the app's
/api/v1/model and every prediction event) and the validation-metrics event, against a real `mlflow server`.

Found by a probe: promote registered "acme-forecaster" while `release`, `make fetch-model` and the workflows that
run them spoke of the constant "shelfcast-forecaster" (no such model: every release command failed), the bundle
said "shelfcast-forecaster" in /api/v1/model and in each prediction event, and so did the metrics event."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline import registry_fetch, release, tracking
from pipeline.bundle import load_bundle, verify_bundle
from pipeline.release_store import CANARY, PRODUCTION
from tests.mlflow_server import mlflow_server

from .conftest import evaluate_and_promote, prepare_registry, tiny_bundle_module

# A real mlflow server and a project trained, promoted and released: 70-100 s a module on 2 cores
pytestmark = pytest.mark.slow

ACME = "acme-forecaster"
SHIPPED = "shelfcast-forecaster"  # params.yaml's promote.model_name as shipped


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    """(project root, tracking URI, {alias: version}): a tiny project of ACME promoted through a real server,
    version 1 production, version 2 canary (as CI's promote to a candidate alias leaves it)."""
    base = tmp_path_factory.mktemp("renamed")
    with mlflow_server(f"sqlite:///{(base / 'mlflow.db').as_posix()}") as (uri, _):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            prepare_registry(uri, base / "artifacts")
            tiny = tiny_bundle_module()
            params = copy.deepcopy(tiny.TINY_APP_PARAMS)
            params["promote"]["model_name"] = ACME
            root = base / "acme"
            tiny.build_tiny_project(root, params)
            first = evaluate_and_promote(root, PRODUCTION)
            tiny.retrain(root, seed=4)
            second = evaluate_and_promote(root, CANARY)
        yield root, uri, {PRODUCTION: first["version"], CANARY: second["version"]}


@pytest.fixture
def acme_env(acme, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", acme[1])
    return acme


def registered_names(root) -> list[str]:
    return sorted(m.name for m in tracking.client(root).search_registered_models())


def test_promote_registers_params_name_and_the_bundles_and_metrics_event_carry_it(acme_env):
    from monitoring.metrics_events import metrics_event

    root, _, versions = acme_env
    assert registered_names(root) == [ACME]
    assert versions == {PRODUCTION: "1", CANARY: "2"}
    assert load_bundle(root / "models/candidate").metadata["name"] == ACME
    assert load_bundle(root / "models/production").metadata["name"] == ACME
    evaluation = json.loads((root / "results/evaluation.json").read_text())
    metrics = json.loads((root / "results/metrics.json").read_text())
    event = metrics_event(metrics, evaluation)
    assert (event["model_name"], event["model_version"]) == (ACME, evaluation["bundle_version"])
    assert tracking.production_version(root).version == "1"  # the project's name, no argument


def test_release_fetch_model_and_the_app_use_params_name(acme_env, tmp_path, capsys):
    from app import create_app
    from app.config import AppSettings
    from app.events import PredictionEventSink

    root, _, versions = acme_env
    host = tmp_path / "models"
    cli = ["--root", str(root), "--models", str(host)]  # as `make release-*` runs it: no --name
    try:
        assert release.main(["status", *cli]) == 0, capsys.readouterr().err
        status = json.loads(capsys.readouterr().out.splitlines()[0])
        assert status["aliases"] == {PRODUCTION: "1", CANARY: "2"}
        assert release.main(["sync", *cli]) == 0, capsys.readouterr().err
        assert release.main(["promote", *cli]) == 0, capsys.readouterr().err
        assert str(tracking.client(root).get_registered_model(ACME).aliases[PRODUCTION]) == versions[CANARY]
        assert release.main(["rollback", *cli]) == 0, capsys.readouterr().err
        model = tracking.client(root).get_registered_model(ACME)
        assert str(model.aliases[PRODUCTION]) == versions[PRODUCTION]
        fetched = tmp_path / "fetched"  # `make fetch-model`: no --name
        assert registry_fetch.main(["--root", str(root), "--to", str(fetched)]) == 0, capsys.readouterr().err
        assert f"models:/{ACME}@production = version 1" in capsys.readouterr().out
        assert verify_bundle(fetched) == \
            tracking.client(root).get_model_version(ACME, "1").tags[registry_fetch.TAG_DIGEST]
    finally:
        tracking.client(root).set_registered_model_alias(ACME, PRODUCTION, versions[PRODUCTION])
        tracking.client(root).set_registered_model_alias(ACME, CANARY, versions[CANARY])
    assert registered_names(root) == [ACME]  # nothing made or asked of the shipped name

    log = tmp_path / "events" / "predictions.jsonl"
    sink = PredictionEventSink.from_environment({}, log_path=log, spool_root=log.parent / "spool")
    client = create_app(AppSettings(model_dir=host / PRODUCTION, reload_interval_s=3600.0), sink=sink).test_client()
    try:
        assert client.get("/api/v1/model").json["name"] == ACME
        bundle = load_bundle(host / PRODUCTION)
        store, item = (int(bundle.metadata["vocabularies"][field][0]) for field in ("store_nbr", "item_nbr"))
        day = bundle.metadata["horizon_dates"][0]
        answer = client.post("/api/v1/predict", json={"instances": [
            {"store_nbr": store, "item_nbr": item, "date": day, "onpromotion": False}]})
        assert answer.status_code == 200, answer.get_data(as_text=True)
        assert answer.json["model"]["name"] == ACME
    finally:
        sink.close()
    [event] = [json.loads(line) for line in log.read_text().splitlines()]
    assert event["model_name"] == ACME


def test_release_and_fetch_model_without_params_yaml_say_so_and_take_name(acme_env, tmp_path, capsys):
    """A folder without params.yaml has no model name: one line naming the file and --name, nothing assumed."""
    bare = tmp_path / "bare"
    bare.mkdir()
    assert release.main(["status", "--root", str(bare), "--models", str(bare / "models")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("release: error: ") and "params.yaml" in err and "--name" in err, err
    assert registry_fetch.main(["--root", str(bare), "--alias", PRODUCTION]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fetch-model: error: ") and "params.yaml" in err and "--name" in err, err
    assert not (bare / "models").exists()
    assert release.main(["status", "--root", str(bare), "--models", str(bare / "models"), "--name", ACME]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["aliases"] == {PRODUCTION: "1", CANARY: "2"}


def test_promote_refuses_a_candidate_named_otherwise_than_params(acme_env, capsys):
    """promote.model_name changed after train: the bundle would be registered under a name it does not carry."""
    from pipeline import promote

    root, _, _ = acme_env
    params = root / "params.yaml"
    before = params.read_text()
    params.write_text(before.replace(f"model_name: {ACME}", "model_name: beta-forecaster"))
    try:
        with pytest.raises(promote.PromotionRefused, match="named 'acme-forecaster', promote.model_name is "
                                                           "'beta-forecaster'; run `dvc repro`"):
            promote.run(root, quiet=True)
    finally:
        params.write_text(before)
    assert registered_names(root) == [ACME]



def test_a_host_serving_the_former_names_production_is_not_told_to_promote_its_version(acme, host, monkeypatch,
                                                                                           capsys):
    """promote.model_name renamed on a deployed host: it serves the shipped name's version 1, and acme-forecaster
    (registered by CI's first promote, a @shadow) names no production yet. Before, `release status` and `sync` took
    that for a deleted alias and said `python -m pipeline.release promote --version 1` names it again, which would
    have made acme-forecaster's version 1 (a candidate no release judged) production. They now name the rename and
    the first production to make by hand."""
    root_acme, uri, versions = acme
    host_root, store, _ = host  # serves shelfcast-forecaster's version 1 as production
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (host_root / "params.yaml").write_text((host_root / "params.yaml").read_text(encoding="utf-8").replace(
        f"model_name: {SHIPPED}", f"model_name: {ACME}"), encoding="utf-8")
    client = tracking.client(root_acme)
    client.delete_registered_model_alias(ACME, PRODUCTION)
    try:
        for command, code in (("status", 0), ("sync", 1)):
            assert release.main([command, "--root", str(host_root), "--models", str(store.root)]) == code
            err = capsys.readouterr().err
            assert "promote --version" not in err, err
            assert f"this host serves {SHIPPED}'s version 1 as production" in err, err
            assert f"promote.model_name is {ACME!r}" in err and "by hand" in err, err
        assert load_bundle(store.variant_dir(PRODUCTION)).metadata["name"] == SHIPPED  # nothing installed
    finally:
        client.set_registered_model_alias(ACME, PRODUCTION, versions[PRODUCTION])

@pytest.mark.slow
def test_the_workflow_files_train_release_and_prune_a_renamed_model(tmp_path, monkeypatch):
    """The repository's params.yaml names acme-forecaster, on an MLflow server where another project's
    shelfcast-forecaster (the shipped name) has its production already: a wrong lookup would find a real model, not
    fail. ml-pipeline.yml then app-pipeline.yml run as tests/delivery/test_workflows.py runs them (fresh clones, a
    real `mlflow server`, a running Shelfcast on the serving host): train -> gate -> promote (@shadow) -> metrics
    event -> record, then fetch -> build -> release (shadow, canary, promote). Then `make fetch-model
    MODEL_SOURCE=dvc` and `make prune` (every keep at 0) on a fresh runner. Every step finds and writes
    acme-forecaster; nothing is served or logged as the shipped name, and the other model keeps its version, its
    alias and its runs (before, prune deleted the runs behind every other model's versions)."""
    from .actions import run_workflow, runner_environment, unset_secrets
    from .conftest import REPO, ServedWithUsers
    from .runners import clone, commit, git, set_params, source_repository
    from .test_workflows import NOT_RUN, RELEASE_SETTINGS, Users, catalog_series, checkout_ref, deploy_report

    from pipeline.release_store import SHADOW, ReleaseStore

    with mlflow_server(f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}", "--artifacts-destination",
                       str(tmp_path / "mlflow-artifacts")) as (uri, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        repository = source_repository(REPO, tmp_path / "github")
        dvc = subprocess.run([str(Path(sys.executable).with_name("dvc")), "remote", "add", "-d", "shared",
                              str(tmp_path / "dvc-remote")], cwd=repository, capture_output=True, text=True,
                             timeout=120)
        assert dvc.returncode == 0, dvc.stderr
        params = yaml.safe_load((repository / "params.yaml").read_text(encoding="utf-8"))
        params["promote"]["model_name"] = ACME
        (repository / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        commit(repository, "our model's name in the shared registry")
        set_params(repository, "small scale for the test; another seed than the first production's", seed=4)
        git(repository, "config", "receive.denyCurrentBranch", "updateInstead")  # the record job pushes to it

        tiny = tiny_bundle_module()  # once, by an operator: the first production model, under the new name
        first = copy.deepcopy(tiny.TINY_APP_PARAMS)
        first["promote"]["model_name"] = ACME
        tiny.build_tiny_project(tmp_path / "operator", first)
        other = shutil.copytree(tmp_path / "operator", tmp_path / "other-project")  # the shipped name's project
        (other / "params.yaml").write_text((other / "params.yaml").read_text(encoding="utf-8").replace(
            f"model_name: {ACME}", f"model_name: {SHIPPED}"), encoding="utf-8")
        tiny.retrain(other, seed=5)
        evaluate_and_promote(other, PRODUCTION)
        evaluate_and_promote(tmp_path / "operator", PRODUCTION)
        theirs = tracking.client(other).get_model_version(SHIPPED, "1")
        host = tmp_path / "host"  # the serving host's checkout: the repository's params.yaml
        host.mkdir()
        (host / "params.yaml").write_text((repository / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
        store, events = ReleaseStore(host / "models"), host / "logs" / "predictions.jsonl"
        release.sync(host, store)
        served = ServedWithUsers(store, events, tmp_path, None)
        try:
            tested = git(repository, "rev-parse", "HEAD").strip()
            contexts = {"github.event_name": "push", "github.ref": "refs/heads/main", "github.sha": tested,
                        "vars.MLFLOW_TRACKING_URI": uri, "vars.SHELFCAST_DATA_SOURCE": "",
                        **unset_secrets(repository / ".github/workflows/ml-pipeline.yml")}
            ml = run_workflow(repository / ".github/workflows/ml-pipeline.yml", contexts,
                              lambda job: clone(repository, tmp_path / f"ml-{job}"), lambda job: runner_environment(),
                              NOT_RUN, at_ref=checkout_ref, artifacts=tmp_path / "ml-artifacts")
            assert ml.conclusion == "success", [(s.command, s.output[-1500:]) for s in ml.steps if s.returncode]
            assert f"promote: {ACME} version 2" in ml.step("make promote").output
            model = tracking.client(host).get_registered_model(ACME)
            assert {k: str(v) for k, v in model.aliases.items()} == {PRODUCTION: "1", SHADOW: "2"}
            [metrics] = [json.loads(line) for line in
                         (tmp_path / "ml-train-evaluate-promote/logs/monitoring.jsonl").read_text().splitlines()]
            assert metrics["model_name"] == ACME

            contexts = {"github.event_name": "workflow_run", "github.event.workflow_run.conclusion": ml.conclusion,
                        "github.event.workflow_run.head_branch": "main", "github.ref": "refs/heads/main",
                        "github.event.workflow_run.head_sha": tested, "github.event.workflow_run.event": "push",
                        "github.event.workflow_run.head_repository.full_name": "Acme/shelfcast",
                        "github.repository": "Acme/shelfcast", "github.sha": git(repository, "rev-parse", "HEAD"),
                        "github.actor": "acme-bot", "github.repository_owner": "Acme", "vars.MLFLOW_TRACKING_URI": uri,
                        "vars.SHELFCAST_URL": served.url, "vars.SHELFCAST_MODELS_HOST": str(store.root),
                        "vars.SHELFCAST_PREDICTION_LOG": str(events), "vars.ELASTICSEARCH_URL": "",
                        **unset_secrets(repository / ".github/workflows/app-pipeline.yml")}
            users = Users(served.url, catalog_series(store.variant_dir(PRODUCTION)))  # ~10 forecasts a second
            app = run_workflow(repository / ".github/workflows/app-pipeline.yml", contexts,
                               lambda job: clone(repository, tmp_path / f"app-{job}"),
                               lambda job: runner_environment(**(RELEASE_SETTINGS if job == "release" else {})),
                               NOT_RUN, at_ref=checkout_ref)
            assert set(users.close()) == {200}
            assert app.jobs == {"test": "success", "build-publish": "success", "release": "success"}, \
                [(s.command, s.output[-2000:]) for s in app.steps if s.returncode]
            assert f"models:/{ACME}@production = version 1" in app.step("make fetch-model").output
            report = deploy_report(app.step("make deploy"))
            assert report["outcome"] == "promoted", report
            model = tracking.client(host).get_registered_model(ACME)
            assert {k: str(v) for k, v in model.aliases.items()} == {PRODUCTION: "2"}
            with urllib.request.urlopen(f"{served.url}/api/v1/model", timeout=30) as answer:
                assert json.loads(answer.read())["name"] == ACME
        finally:
            served.close()
        logged = {json.loads(line).get("model_name") for line in events.read_text(encoding="utf-8").splitlines()}
        assert logged == {ACME}, logged

        runner = clone(repository, tmp_path / "fetcher")  # a fresh runner: the bundle from the DVC remote
        env = runner_environment(MLFLOW_TRACKING_URI=uri)
        done = subprocess.run(["make", "fetch-model", "MODEL_SOURCE=dvc"], cwd=runner, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0 and f"models:/{ACME}@production = version 2" in done.stdout, \
            done.stdout + done.stderr
        assert verify_bundle(runner / "models/production") == \
            tracking.client(host).get_model_version(ACME, "2").tags[registry_fetch.TAG_DIGEST]
        params = yaml.safe_load((runner / "params.yaml").read_text(encoding="utf-8"))
        params["prune"].update(keep_versions=0, keep_runs=0)
        (runner / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        done = subprocess.run(["make", "prune"], cwd=runner, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"prune: {ACME}: keeps version 2 (alias production" in done.stdout, done.stdout
        assert f"prune: {ACME}: keeps version 1 (previous_production" in done.stdout, done.stdout
        assert "deleted 0 model versions" in done.stdout, done.stdout
        # the other project's model: as it was, its run and evaluation run not deleted
        assert registered_names(host) == sorted([ACME, SHIPPED])
        shipped = tracking.client(host).get_registered_model(SHIPPED)
        assert {k: str(v) for k, v in shipped.aliases.items()} == {PRODUCTION: "1"}
        assert len(tracking.client(host).search_model_versions(f"name='{SHIPPED}'")) == 1
        for run_id in (theirs.run_id, theirs.tags["evaluation_run_id"]):
            assert tracking.client(host).get_run(run_id).info.lifecycle_stage == "active", done.stdout


def test_the_served_models_name_of_an_unreadable_bundle_json_is_unknown_not_a_traceback(tmp_path):
    """Found by an outside review: the rename advice reads the served production's bundle.json; one nested deeper
    than Python's parser recurses (a damaged disk, a hand edit) raised RecursionError, no ValueError, out of `release
    status` and `sync` as a traceback. Unreadable in any way, the name is unknown and the usual advice is given."""
    from pipeline.release_store import ReleaseStore

    store = ReleaseStore(tmp_path / "models")
    store.variant_dir(PRODUCTION).mkdir(parents=True)
    bundle_json = store.variant_dir(PRODUCTION) / "bundle.json"
    for text, name in (('{"name": "acme-forecaster"}', "acme-forecaster"), ('{"name": [' * 5000, None),
                       ("[" * 100_000, None), ("[1]", None), ('{"name": 3}', None)):
        bundle_json.write_text(text, encoding="utf-8")
        assert release.served_model_name(store) == name, text[:20]


def test_a_renamed_models_releases_never_stand_for_the_former_models_on_the_host(tmp_path, monkeypatch):
    """The host released the shipped name's versions 1 and 2 (production 2, rolled back from 1), then
    promote.model_name was renamed and the new name's version 1 (its versions count from 1 again) made production.
    Before, releases/2 still held the former model's version 2, marked good: the newest good release, which the app
    falls back to when production cannot be loaded, was the other model; releases/.rollback named "2" (the former
    model's number, for a version of the new one); and a candidate the host serves of the former model was reported
    as the new name's version of that number (`release promote --version 2` told, which promotes another bundle).
    Checked by digest and by bundle.json's name."""
    from pipeline.release_store import ReleaseStore

    uri = f"sqlite:///{(tmp_path / 'registry.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    prepare_registry(uri, tmp_path / "artifacts")
    tiny = tiny_bundle_module()
    ml = tmp_path / "ml"
    tiny.build_tiny_project(ml)
    assert evaluate_and_promote(ml, PRODUCTION)["version"] == "1"
    tiny.retrain(ml, seed=4)
    assert evaluate_and_promote(ml, CANARY)["version"] == "2"
    host_root = tmp_path / "host"
    host_root.mkdir()
    shutil.copy(ml / "params.yaml", host_root / "params.yaml")
    store = ReleaseStore(host_root / "models")
    client = tracking.client(ml)
    release.sync(host_root, store)
    assert release.main(["promote", "--version", "2", "--root", str(host_root), "--models", str(store.root)]) == 0
    release.set_candidate(host_root, store, CANARY, "1", share=0.5)  # the former model's 1, a canary again
    former = {v: verify_bundle(store.release_dir(v)) for v in ("1", "2")}

    for root in (ml, host_root):  # the rename, on both sides
        (root / "params.yaml").write_text((root / "params.yaml").read_text(encoding="utf-8").replace(
            f"model_name: {SHIPPED}", f"model_name: {ACME}"), encoding="utf-8")
    # before the new name's first production: the former's canary is not the new name's version 1
    with pytest.raises(release.ReleaseError) as refused:
        release.served_candidate(host_root, store, {}, CANARY, ACME)
    assert "--version 1" not in str(refused.value) and f"{SHIPPED}'s bundle" in str(refused.value), refused.value
    tiny.retrain(ml, seed=5)
    assert evaluate_and_promote(ml, PRODUCTION)["version"] == "1"  # the new name's first production, by hand
    assert client.get_registered_model(SHIPPED).aliases == {PRODUCTION: 2, CANARY: 1}  # the other model's

    assert release.main(["sync", "--root", str(host_root), "--models", str(store.root)]) == 0
    served = verify_bundle(store.variant_dir(PRODUCTION))
    assert served == registry_fetch.promoted_digest(client.get_model_version(ACME, "1"))
    assert served not in former.values()
    for path in store.releases():  # every release on disk is the new name's: no folder stands for the other's
        assert load_bundle(path).metadata["name"] == ACME, path
        assert verify_bundle(path) not in former.values(), path
    assert [p.name for p in store.good_releases()] == ["1"]  # the app's fallback: the new name's production only
    assert store.rollback_release() is None and store.served_version(PRODUCTION) == "1"
    assert not store.variant_dir(CANARY).exists()  # the new name names no canary


def _named_bundle(source: Path, target: Path, name: str, mark: str) -> Path:
    """A copy of the real bundle ``source`` that names registered model ``name`` (bundle.json), its version field
    marked with ``mark`` so each copy is a bundle of its own, its checksums made again: what train writes for a
    project of that name."""
    from pipeline.atomic import file_digest
    from pipeline.bundle import copy_bundle

    copy_bundle(source, target)
    metadata = json.loads((target / "bundle.json").read_text(encoding="utf-8"))
    metadata.update(name=name, version=f"{metadata['version']}-{mark}")
    (target / "bundle.json").write_text(json.dumps(metadata), encoding="utf-8")
    manifest = json.loads((target / "checksums.json").read_text(encoding="utf-8"))
    manifest["files"]["bundle.json"] = file_digest(target / "bundle.json")
    (target / "checksums.json").write_text(json.dumps(manifest), encoding="utf-8")
    return target


def test_a_rollback_record_of_the_former_model_is_dropped_when_the_new_names_production_replaces_it(
        tmp_path_factory, tmp_path):
    """releases/.rollback names a release by number. The former model's production 1 had replaced its version 2
    (.rollback "2"); then the renamed model's version 1 replaced production. Before, .rollback still said "2": the
    former model's number, which the store's cleanup then read as the new name's version 2 and kept that release
    as the rollback's past the newest --keep, though production never served it (`release rollback` asks the
    registry and installs by digest, so it was never installed). The record goes when another model's production
    is replaced; the new name's next production move records its own."""
    from pipeline.release_store import ReleaseStore

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        bases = tiny_bundle_module().tiny_bundles(tmp_path_factory.getbasetemp() / "app-bundles")
    store = ReleaseStore(tmp_path / "models", keep=2)
    for version, base in (("2", bases[1]), ("1", bases[0])):  # the former model's 2, then a rollback to its 1
        former = _named_bundle(base, tmp_path / f"{SHIPPED}-{version}", SHIPPED, "former")
        store.add_release(version, former, name=SHIPPED)
        store.install(PRODUCTION, version, SHIPPED)
    assert store.rollback_release() == "2"

    bundles = {n: _named_bundle(bases[n % 2], tmp_path / f"{ACME}-{n}", ACME, str(n)) for n in (1, 2, 3, 4)}
    store.add_release("1", bundles[1], name=ACME)
    store.install(PRODUCTION, "1", ACME)  # the renamed model's first production replaces the former's 1
    assert store.rollback_release() is None
    for n in (2, 3, 4):  # candidates of the new name, none of them production
        store.add_release(str(n), bundles[n], name=ACME)
    assert [p.name for p in store.releases()] == ["4", "3", "1"]  # newest 2 and production: 2 is no rollback's

    store.install(PRODUCTION, "4", ACME)  # the new name's own move: recorded as before
    assert store.rollback_release() == "1"
