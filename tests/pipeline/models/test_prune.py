"""prune: old model versions, MLflow runs and DVC objects go; production, rollback, the host's and the candidate's stay.

The registry is built the way promote builds it (a real training run per version, its bundle rolled forward with
pipeline/serving_bundle.py, pushed with promote's own `dvc add` + `dvc push`, uploaded and tagged by
registry_fetch.publish_serving_bundle), in a store of the test's own, then pruned with every keep at 0.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import promote, prune, registry_fetch, tracking
from pipeline.bundle import verify_bundle
from pipeline.params import ParamsError
from pipeline.serving_bundle import roll_forward

from .conftest import copy_tree

NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml
STAGING = "models/promoted-production"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    done = promote._dvc(root, *args)
    assert done.returncode == 0, done.stderr
    return done


def _project(template: Path, tmp_path: Path, with_dvc: bool) -> Path:
    """The trained tiny project with a store of its own (the template's records the template's artifact folder,
    which a gc here must not touch), every prune keep at 0; ``with_dvc``: a git + DVC project with a local remote."""
    root = copy_tree(template, tmp_path / "project")
    (root / "mlflow.db").unlink()
    shutil.rmtree(root / "mlartifacts", ignore_errors=True)
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["prune"] = {"keep_versions": 0, "keep_runs": 0, "dvc_remote": True}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    if with_dvc:
        if promote._dvc(root, "version").returncode != 0:
            pytest.skip("dvc CLI not available")
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        shutil.copy(Path(__file__).resolve().parents[3] / ".gitignore", root / ".gitignore")
        _dvc(root, "init", "-q")
        _dvc(root, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    return root


def _training_run(client, experiment_id: str, root: Path, digest: str, status: str = "FINISHED",
                  model: str | None = NAME) -> str:
    """A training run and its evaluation, tagged as train and evaluate tag theirs (``model``: their registered model;
    None: none recorded, as runs made before they recorded it)."""
    owner = {} if model is None else {tracking.REGISTERED_MODEL_TAG: model}
    run = client.create_run(experiment_id, tags={"stage": "train", tracking.BUNDLE_DIGEST_TAG: digest, **owner})
    client.log_artifacts(run.info.run_id, str(root / "models/candidate"), tracking.BUNDLE_ARTIFACT_PATH)
    evaluation = client.create_run(experiment_id, tags={"stage": "evaluate", tracking.BUNDLE_DIGEST_TAG: digest,
                                                        tracking.PARENT_RUN_TAG: run.info.run_id, **owner})
    client.log_artifacts(evaluation.info.run_id, str(root / "results"), "results")
    client.set_terminated(evaluation.info.run_id)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _promoted_version(client, experiment_id: str, root: Path, digest: str) -> tuple[str, str]:
    """A version registered as promote registers one: (version, its serving digest)."""
    run_id = _training_run(client, experiment_id, root, digest)
    staging = root / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    roll_forward(root, root / "models/candidate", staging, digest, {"mlflow_run_id": run_id})
    _, dvc_file = promote.track_with_dvc(root, staging)
    tags = registry_fetch.publish_serving_bundle(root, run_id, staging)
    if dvc_file is not None:
        dvc_file.unlink()
    version = client.create_model_version(NAME, f"runs:/{run_id}/bundle", run_id=run_id,
                                          tags={tracking.BUNDLE_DIGEST_TAG: digest, tracking.VERDICT_TAG: "passed",
                                                **tags})
    return str(version.version), tags[registry_fetch.TAG_DIGEST]


def _registry(root: Path, tmp_path: Path) -> dict:
    """Six versions as promote registers them: 5 production, 2 previous_production, 4 the canary, 3 on the
    serving host's store (releases/), 6 the current candidate's; 1 named by nothing. Plus a refused
    candidate's run, a train running now and a sweep run."""
    client = tracking.client(root)
    experiment = tracking.ensure_experiment(client, root)
    client.create_registered_model(NAME)
    candidate = verify_bundle(root / "models/candidate")
    made = {n: _promoted_version(client, experiment, root, f"{n:064x}")[0] for n in range(1, 6)}  # old bundles
    made[6] = _promoted_version(client, experiment, root, candidate)[0]  # the candidate's, registered as a shadow
    client.set_registered_model_alias(NAME, "production", made[5])
    client.set_registered_model_tag(NAME, tracking.PREVIOUS_PRODUCTION_TAG, made[2])
    client.set_registered_model_alias(NAME, "canary", made[4])
    host = tmp_path / "host-models"  # the serving host's store ($SHELFCAST_MODELS_HOST) keeps version 3's bundle
    (host / "releases").mkdir(parents=True)
    registry_fetch.download_version(root, client.get_model_version(NAME, made[3]), host / "releases" / made[3])
    registry_fetch.download_version(root, client.get_model_version(NAME, made[5]), root / "models/production")
    return {"client": client, "made": made, "host": host, "gone": [made[1]],
            "refused": _training_run(client, experiment, root, f"{99:064x}"),  # champion/challenger refused it
            "running": _training_run(client, experiment, root, f"{98:064x}", status="RUNNING"),  # a train now
            "sweep": client.create_run(experiment, tags={"stage": "sweep"}).info.run_id}  # not prune's kind


def _versions(client) -> set[str]:
    return {str(v.version) for v in client.search_model_versions(f"name='{NAME}'")}


def _prune_and_check(root: Path, r: dict) -> dict:
    """Dry run (nothing goes), then prune with every keep at 0: what production, rollback, the host and the candidate
    need stays, the rest goes, and the artifacts freed are the bytes it reported."""
    client, made, host = r["client"], r["made"], r["host"]
    artifacts_before, cache_before = _size(root / "mlartifacts"), _size(root / ".dvc/cache")
    listed = prune.run(root, dry_run=True, models_dir=host)
    assert listed["deleted_versions"] == r["gone"]
    assert set(listed["deleted_runs"]) >= {client.get_model_version(NAME, v).run_id for v in r["gone"]} | {r["refused"]}
    assert _size(root / "mlartifacts") == artifacts_before and _size(root / ".dvc/cache") == cache_before
    assert _versions(client) == set(made.values())

    done = prune.run(root, models_dir=host)
    kept = done["kept_versions"]
    assert "alias production" in kept[made[5]] and "previous_production" in kept[made[2]]
    assert "alias canary" in kept[made[4]] and str(host / "releases") in kept[made[3]]
    assert "the current candidate" in kept[made[6]]
    assert done["deleted_versions"] == listed["deleted_versions"] and done["deleted_runs"] == listed["deleted_runs"]
    assert _versions(client) == set(made.values()) - set(r["gone"])
    assert artifacts_before - _size(root / "mlartifacts") == done["deleted_artifact_bytes"] > 0
    assert not any((root / "mlartifacts" / run_id).exists() for run_id in done["deleted_runs"])
    for run_id in (r["running"], r["sweep"]):
        assert client.get_run(run_id).info.lifecycle_stage == "active"
    for number in (made[5], made[2], made[4], made[6]):  # production, rollback, canary, candidate: still install
        version = client.get_model_version(NAME, number)
        fetched = registry_fetch.download_version(root, version, root.parent / f"fetched-{number}")
        assert fetched == version.tags[registry_fetch.TAG_DIGEST]
    return done


@pytest.mark.slow  # mlflow gc in its own process, 7-19 s on 2 cores: make test stays under 10 min
def test_prune_keeps_production_rollback_the_host_and_the_candidate_and_frees_what_it_says(trained_project_template,
                                                                                           tmp_path, capsys):
    root = _project(trained_project_template[0], tmp_path, with_dvc=False)
    registry = _registry(root, tmp_path)
    _prune_and_check(root, registry)
    again = prune.main(["--root", str(root), "--models", str(registry["host"])])  # nothing left to delete
    assert again == 0 and "deleted 0 model versions" in capsys.readouterr().out


@pytest.mark.slow
def test_dvc_gc_through_prune_keeps_the_bundles_a_bare_dvc_gc_deletes(trained_project_template, tmp_path):
    """Production's and rollback's bundles are in the DVC remote under no .dvc file (promote removes it once the
    version records the entry): `dvc gc --workspace --cloud` deleted them; prune keeps every kept version's."""
    root = _project(trained_project_template[0], tmp_path, with_dvc=True)
    r = _registry(root, tmp_path)
    entry = {number: json.loads(r["client"].get_model_version(NAME, number).tags[registry_fetch.TAG_DVC])["md5"]
             for number in r["made"].values()}
    bare = _dvc(root, "gc", "--workspace", "--cloud", "--force", "--dry").stdout
    assert f"{entry[r['made'][5]][:2]}/{entry[r['made'][5]][2:]}" in bare  # production's, by a bare dvc gc
    remote = tmp_path / "remote"
    dvc_before = _size(root / ".dvc/cache") + _size(remote)
    done = _prune_and_check(root, r)
    assert done["dvc"]["objects"] > 0 and done["dvc"]["remote"]  # freed from the cache and the (local) remote:
    assert _size(root / ".dvc/cache") + _size(remote) == dvc_before - done["dvc"]["bytes_on_local_disks"]
    assert not list(root.glob(prune.KEEP_FILE_PREFIX + "*")), "the keep files are removed"
    for number, md5 in entry.items():
        stored = (remote / "files" / "md5" / md5[:2] / md5[2:]).exists()
        assert stored == (number not in r["gone"]), number
    shutil.rmtree(root / ".dvc/cache")  # a fresh runner: production and rollback install from the DVC remote
    for number in (r["made"][5], r["made"][2]):
        version = r["client"].get_model_version(NAME, number)
        assert registry_fetch.download_version(root, version, tmp_path / f"dvc-{number}", "dvc") == \
            version.tags[registry_fetch.TAG_DIGEST]


def test_prune_refuses_keeps_it_cannot_read(tiny_project):
    params = yaml.safe_load((tiny_project / "params.yaml").read_text(encoding="utf-8"))
    for bad, field in (({"keep_versions": -1, "keep_runs": 3, "dvc_remote": False}, "prune.keep_versions"),
                       ({"keep_versions": 1, "keep_runs": "all", "dvc_remote": False}, "prune.keep_runs"),
                       ({"keep_versions": 1, "keep_runs": 3, "dvc_remote": "yes"}, "prune.dvc_remote"),
                       ({"keep_versions": 1, "keep_runs": 3}, "prune.dvc_remote")):
        with pytest.raises(ParamsError, match=field):
            prune.prune_params({**params, "prune": bad})


def test_a_project_with_no_registered_model_keeps_its_candidate_run(trained_project, capsys):
    """Dry run on the trained project (its store is the session template's: nothing may be deleted there)."""
    root, summary = trained_project
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["prune"] = {"keep_versions": 0, "keep_runs": 0, "dvc_remote": False}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    assert prune.main(["--root", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete 0 model versions" in out and "would delete 0 (0.0 MB" in out
    assert "not a DVC project" in out
    # long work ends with a one-line summary (before, prune ended on its last item)
    assert re.fullmatch(r"prune: dry run done in \d+ s: would delete 0 model versions, 0 MLflow runs \(0\.0 MB on "
                        r"this machine's disks\)", out.splitlines()[-1]), out.splitlines()[-1]
    if promote._dvc(root, "version").returncode != 0:
        pytest.skip("dvc CLI not available")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")  # prune.dvc_remote without a remote: the cache alone, said so (DVC's own: an error)
    params["prune"]["dvc_remote"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    assert prune.main(["--root", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "no DVC remote configured; the cache only" in out and "objects from the DVC cache (" in out


@pytest.mark.slow  # mlflow gc in its own process, 7-19 s on 2 cores: make test stays under 10 min
def test_prune_of_a_renamed_model_leaves_the_other_registered_models_runs(trained_project_template, tmp_path):
    """promote.model_name changed (or a second project's model beside this one, README "Releases"): the registry and
    the experiment still hold the other name's versions, production among them. Prune is this model's: before, every
    training run but the newest and the candidate's was prunable, so it deleted the runs behind the other model's
    versions and `mlflow gc` their bundles, and its production could no longer be fetched."""
    root = _project(trained_project_template[0], tmp_path, with_dvc=False)
    registry = _registry(root, tmp_path)
    client, made = registry["client"], registry["made"]
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["promote"]["model_name"] = "acme-forecaster"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    theirs = {v: client.get_model_version(NAME, v) for v in made.values()}
    behind = {version.run_id for version in theirs.values()}

    done = prune.run(root, models_dir=registry["host"])
    assert done["model"] == "acme-forecaster" and done["deleted_versions"] == []
    assert not behind & set(done["deleted_runs"]), done
    # the old name's unregistered run records the old name: not this prune's (prune under the old name judges it)
    assert registry["refused"] not in done["deleted_runs"]
    assert client.get_run(registry["refused"]).info.lifecycle_stage == "active"
    assert _versions(client) == set(made.values())
    for number, version in theirs.items():  # every version of the other model still installs
        assert client.get_run(version.run_id).info.lifecycle_stage == "active"
        fetched = registry_fetch.download_version(root, version, root.parent / f"theirs-{number}")
        assert fetched == version.tags[registry_fetch.TAG_DIGEST]


def test_a_kept_version_whose_dvc_out_tag_is_no_entry_is_named_in_one_line(trained_project_template, tmp_path,
                                                                          capsys):
    """A ``dvc_out`` tag edited by hand or cut short: before, prune's json.loads of it ended in a traceback. It is
    refused (DVC's gc could not keep that version's bundle) in one line naming the version and the tag."""
    root = _project(trained_project_template[0], tmp_path, with_dvc=False)
    registry = _registry(root, tmp_path)
    production = registry["made"][5]
    registry["client"].set_model_version_tag(NAME, production, registry_fetch.TAG_DVC, '{"md5": "ab')
    capsys.readouterr()  # the registry's download bars
    assert prune.main(["--root", str(root), "--dry-run", "--models", str(registry["host"])]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"version {production}" in err and registry_fetch.TAG_DVC in err and NAME in err


def _plain_mlflow_gc(root: Path) -> None:
    """What an operator runs (or a prune's own gc did): every deleted run of the store, not only prune's."""
    uri = tracking.tracking_uri(root)
    mlflow = Path(sys.executable).with_name("mlflow")
    done = subprocess.run([str(mlflow) if mlflow.exists() else "mlflow", "gc", "--backend-store-uri", uri,
                           "--tracking-uri", uri], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow  # 20-22 s on 2 cores (two `mlflow gc` processes, prune's and an operator's, ~5 s each)
def test_a_kept_versions_run_deleted_by_hand_is_restored_so_no_gc_can_take_productions_bundle(
        trained_project_template, tmp_path, capsys):
    """Production's run deleted in the MLflow UI: its bundle stays only until someone runs `mlflow gc`. Before, prune
    said "keeps version 5" and left the run deleted, so the next plain gc removed production's bundle for good (no
    fetch, no rollback to it). prune restores it, and says so; a dry run says it would."""
    root = _project(trained_project_template[0], tmp_path, with_dvc=False)
    r = _registry(root, tmp_path)
    client, production = r["client"], r["made"][5]
    run_id = client.get_model_version(NAME, production).run_id
    client.delete_run(run_id)

    listed = prune.run(root, dry_run=True, models_dir=r["host"])
    assert run_id in listed["restored_runs"] and "would restore" in prune.report(listed)
    assert client.get_run(run_id).info.lifecycle_stage == "deleted"  # a dry run changes nothing

    assert prune.main(["--root", str(root), "--models", str(r["host"])]) == 0
    out = capsys.readouterr().out
    assert f"restored {len(listed['restored_runs'])} deleted MLflow runs" in out and f"version {production}" in out
    assert client.get_run(run_id).info.lifecycle_stage == "active"
    _plain_mlflow_gc(root)
    version = client.get_model_version(NAME, production)
    fetched = registry_fetch.download_version(root, version, tmp_path / "fetched-production")
    assert fetched == version.tags[registry_fetch.TAG_DIGEST]


@pytest.mark.slow  # two `mlflow gc` runs and a DVC gc: 21 s in a loaded default run
def test_a_pruned_versions_run_deleted_by_hand_earlier_is_freed(trained_project_template, tmp_path):
    """Version 1's run deleted in the UI before its version was pruned: before, prune searched active runs only, so
    that run was never garbage-collected and its bundles stayed on disk for good. Its artifacts now go."""
    root = _project(trained_project_template[0], tmp_path, with_dvc=False)
    r = _registry(root, tmp_path)
    client = r["client"]
    run_id = client.get_model_version(NAME, r["made"][1]).run_id
    folder = prune.local_artifact_dir(client.get_run(run_id).info.artifact_uri)
    size = _size(folder)
    assert size > 0
    client.delete_run(run_id)
    sweep = client.create_run(client.get_run(run_id).info.experiment_id, tags={"stage": "sweep"}).info.run_id
    client.delete_run(sweep)  # a deleted run of another kind: not prune's to free

    listed = prune.run(root, dry_run=True, models_dir=r["host"])
    assert listed["freed_deleted_runs"] == [run_id] and run_id not in listed["deleted_runs"]
    done = prune.run(root, models_dir=r["host"])
    assert done["freed_deleted_runs"] == [run_id] and done["deleted_artifact_bytes"] >= size
    assert not folder.exists()
    assert client.get_run(sweep).info.lifecycle_stage == "deleted"


def _shared_store_project(tmp_path: Path, monkeypatch, folder: str = "ours", model_name: str = NAME) -> Path:
    """A project folder whose params.yaml names ``model_name`` (every prune keep at 0), recording into the store
    shared by every project of the test (MLFLOW_TRACKING_URI: one sqlite store, one ``shelfcast`` experiment)."""
    from tests.delivery.conftest import prepare_registry

    from .conftest import TINY_PARAMS

    uri = tracking.sqlite_uri(tmp_path / "shared.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    if not (tmp_path / "shared.db").exists():
        prepare_registry(uri, tmp_path / "artifacts")
    root = tmp_path / folder
    root.mkdir()
    params = {**TINY_PARAMS, "promote": {**TINY_PARAMS["promote"], "model_name": model_name},
              "prune": {"keep_versions": 0, "keep_runs": 0, "dvc_remote": False}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return root


def _with_a_candidate(root: Path):
    """``root`` as train leaves it for prune (a candidate's folder, results/): its MLflow client and the shelfcast
    experiment's id."""
    (root / "models/candidate").mkdir(parents=True)
    (root / "models/candidate/weights.bin").write_bytes(b"\0" * 64)
    (root / "results").mkdir()
    client = tracking.client(root, create=False)
    return client, tracking.ensure_experiment(client, root)


def _stage_runs(root: Path, digest: str) -> tuple[str, str]:
    """A training run and its evaluation, recorded as train and evaluate record them (TrainingRun, log_evaluation),
    a file as the training run's bundle: (training run, evaluation run)."""
    bundle = root / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "weights.bin").write_bytes(b"\0" * 4096)
    with tracking.TrainingRun(root, "train-mlp", {"stage": "train", tracking.BUNDLE_DIGEST_TAG: digest}) as run:
        run.log_bundle(bundle)
    evaluation = tracking.log_evaluation(root, run.run_id, passed=True, headline={"nwrmsle": 0.5}, windows=[],
                                         params={}, artifacts=[], bundle_digest=digest, evaluation_json="{}")
    return run.run_id, evaluation.run_id


@pytest.mark.slow  # a real mlflow server and two projects trained: 25 s in a loaded default run
def test_prune_of_one_project_leaves_another_projects_runs_on_the_same_tracking_server(tmp_path, monkeypatch):
    """Two projects, two registered models (promote.model_name), one tracking store and one `shelfcast` experiment
    (README "Releases": a second project beside this one). Before, a run recorded no model: prune took every
    unregistered training run of the experiment for its own, deleted the other project's and `mlflow gc` removed
    their artifacts. Runs now record the model they were made for, and prune deletes its own model's only."""
    ours = _shared_store_project(tmp_path, monkeypatch)
    theirs = _shared_store_project(tmp_path, monkeypatch, "theirs", "acme-forecaster")
    their_runs, our_runs = _stage_runs(theirs, f"{1:064x}"), _stage_runs(ours, f"{2:064x}")
    client = tracking.client(ours, create=False)
    for run_id in their_runs + our_runs:
        owner = NAME if run_id in our_runs else "acme-forecaster"
        assert client.get_run(run_id).data.tags[tracking.REGISTERED_MODEL_TAG] == owner

    done = prune.run(ours)
    assert done["deleted_runs"] == sorted(our_runs) and "mlflow gc removed 2 runs" in done["mlflow"]
    for run_id in their_runs:  # still there, artifacts and all
        assert client.get_run(run_id).info.lifecycle_stage == "active"
    assert [a.path for a in client.list_artifacts(their_runs[0], "bundle")] == ["bundle/weights.bin"]
    assert prune.run(theirs, dry_run=True)["deleted_runs"] == sorted(their_runs)  # the other prunes its own


def test_runs_made_before_runs_recorded_their_model_are_pruned_only_when_its_registry_claims_them(
        tmp_path, monkeypatch):
    """A store upgraded from before REGISTERED_MODEL_TAG: its runs say no model. One behind a version of this model
    (and its evaluation) is this project's and goes with its pruned version; one no version of it was registered
    from may be another project's on the same server: left, and the report says how many."""
    ours = _shared_store_project(tmp_path, monkeypatch)
    client, experiment = _with_a_candidate(ours)
    old = _training_run(client, experiment, ours, f"{97:064x}", model=None)
    old_evaluation = client.search_runs([experiment], f"tags.`{tracking.PARENT_RUN_TAG}` = '{old}'")[0].info.run_id
    client.create_registered_model(NAME)
    behind = client.create_model_version(NAME, f"runs:/{old}/bundle", run_id=old).version
    unclaimed = _training_run(client, experiment, ours, f"{96:064x}", model=None)

    planned = prune.run(ours, dry_run=True)
    assert planned["deleted_versions"] == [str(behind)]
    assert planned["deleted_runs"] == sorted([old, old_evaluation]) and unclaimed not in planned["deleted_runs"]
    assert planned["untagged_runs_left"] == 1
    assert "leaves 1 training run that records no registered model" in prune.report(planned)


@pytest.mark.slow  # mlflow gc in its own process, 7-19 s on 2 cores: make test stays under 10 min
def test_an_evaluation_recorded_after_a_rename_goes_with_the_training_run_it_is_nested_under(tmp_path, monkeypatch):
    """promote.model_name renamed between train and evaluate: evaluate finds the candidate's training run by its
    digest and nests under it, so the evaluation records the new name under a run that records the old. Before, prune
    under the new name left both (the training run is the old name's), and prune under the old name deleted the
    training run but not its evaluation (another model's by its tag): an orphan no prune ever judged, kept for good.
    An evaluation is its training run's: pruned with it, under the name the training run records."""
    ours = _shared_store_project(tmp_path, monkeypatch)  # promote.model_name: NAME (the old one)
    with tracking.TrainingRun(ours, "train-mlp", {"stage": "train", tracking.BUNDLE_DIGEST_TAG: f"{5:064x}"}) as run:
        pass
    params = yaml.safe_load((ours / "params.yaml").read_text(encoding="utf-8"))
    params["promote"]["model_name"] = "acme-forecaster"  # the rename, before evaluate runs
    (ours / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    evaluation = tracking.log_evaluation(ours, run.run_id, passed=True, headline={"nwrmsle": 0.5}, windows=[],
                                         params={}, artifacts=[], bundle_digest=f"{5:064x}", evaluation_json="{}")
    client = tracking.client(ours, create=False)
    assert client.get_run(evaluation.run_id).data.tags[tracking.REGISTERED_MODEL_TAG] == "acme-forecaster"

    assert prune.run(ours, dry_run=True)["deleted_runs"] == []  # the new name's prune: both are the old name's
    old_name = _shared_store_project(tmp_path, monkeypatch, "old-checkout")  # promote.model_name set back
    done = prune.run(old_name)
    assert done["deleted_runs"] == sorted([run.run_id, evaluation.run_id])
    assert "mlflow gc removed 2 runs" in done["mlflow"]


def test_a_version_an_alias_names_after_the_plan_is_kept_with_its_runs(tmp_path, monkeypatch):
    """Found by review: prune judged the aliases once, when it planned, and another checkout's `release promote
    --version 2` or `release canary --version 3` (a version older than keep_versions) landing before the deletion lost
    that version, and with it the alias (MLflow deletes a version's aliases with it): the registry named no
    production. Each version is judged again just before it is deleted; one an alias or previous_production names by
    then is kept, with its runs, and said so."""
    root = _shared_store_project(tmp_path, monkeypatch)
    client, experiment = _with_a_candidate(root)
    client.create_registered_model(NAME)
    made = {}
    for n in range(1, 5):
        run = _training_run(client, experiment, root, f"{n:064x}")
        made[n] = (str(client.create_model_version(NAME, f"runs:/{run}/bundle", run_id=run).version), run)
    client.set_registered_model_alias(NAME, "production", made[4][0])
    planned = prune.plan(root, prune.prune_params(yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))),
                         NAME, [root / "models"])
    assert sorted(planned.versions) == [made[n][0] for n in (1, 2, 3)], planned.versions
    client.set_registered_model_alias(NAME, "production", made[2][0])  # another checkout's promote, meanwhile
    client.set_registered_model_alias(NAME, "canary", made[3][0])
    collect = prune.delete_registry(root, planned)
    assert _versions(client) == {made[n][0] for n in (1, 2, 3, 4)} - {made[1][0]}
    aliases = client.get_registered_model(NAME).aliases
    assert (str(aliases["production"]), str(aliases["canary"])) == (made[2][0], made[3][0]), aliases
    for n in (2, 3):
        assert client.get_run(made[n][1]).info.lifecycle_stage == "active" and made[n][1] not in collect
    summary = planned.summary()
    assert summary["deleted_versions"] == [made[1][0]], summary
    assert "named since prune planned: alias production" in summary["kept_versions"][made[2][0]], summary
    assert made[1][1] in summary["deleted_runs"] and made[2][1] not in summary["deleted_runs"], summary


class _PromoteAfterDeletion:
    """The real MlflowClient; after its ``after``-th version deletion, another checkout's promote of ``promoted``
    lands (set_registered_model_alias on the same store)."""

    def __init__(self, inner, after: int, promoted: str):
        self._inner, self._after, self._promoted, self._deleted = inner, after, promoted, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def delete_model_version(self, name, version):
        answer = self._inner.delete_model_version(name, version)
        self._deleted += 1
        if self._deleted == self._after:
            self._inner.set_registered_model_alias(name, "production", self._promoted)
        return answer


def test_a_promote_landing_after_the_previous_deletion_keeps_its_version(tmp_path, monkeypatch):
    """Found by review: judging the named versions once per batch of 10 deletions (to save 1-2 reads per version,
    ~0.4 s of a 50-version prune) let a promote landing after the batch's read lose its version, and with it
    production's alias, for up to 10 deletions. Each version is judged again just before its own deletion: a promote
    landing right after the first deletion still finds the 9th version kept."""
    root = _shared_store_project(tmp_path, monkeypatch)
    client = tracking.client(root, create=False)
    experiment = tracking.ensure_experiment(client, root)
    client.create_registered_model(NAME)
    made = [str(client.create_model_version(NAME, f"runs:/{run}/bundle", run_id=run).version)
            for run in (client.create_run(experiment).info.run_id for _ in range(12))]
    client.set_registered_model_alias(NAME, "production", made[-1])
    planned = prune.plan(root, prune.prune_params(yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))),
                         NAME, [root / "models"])
    assert len(planned.versions) == 11
    promoted = planned.versions[8]
    real = tracking.client
    monkeypatch.setattr(tracking, "client", lambda *a, **k: _PromoteAfterDeletion(real(*a, **k), 1, promoted))
    prune.delete_registry(root, planned)
    assert str(client.get_registered_model(NAME).aliases["production"]) == promoted
    assert _versions(client) == {made[-1], promoted}
    assert planned.versions_named_since == [promoted]


def _prune_command(root: Path) -> subprocess.Popen:
    """``python -m pipeline.prune --json`` of ``root`` as a process of its own (a CI job's), on the shared store."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    return subprocess.Popen([sys.executable, "-m", "pipeline.prune", "--root", str(root), "--quiet", "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # two prune processes at once, up to three rounds: 25-50 s on 2 cores
def test_two_prunes_at_once_take_what_the_other_deleted_as_done_and_say_so(tmp_path, monkeypatch):
    """Two CI jobs, two checkouts, one tracking store: both plan the same deletions, and the second to reach a version
    or run the first already deleted (or `mlflow gc` removed) stopped on MLflow's 'does not exist', its prune half
    done. Deleted by another is done: each prune exits 0, says what it found so, and counts as its own what it
    deleted: every version by one of the two at least (both, when their deletes of it ran at the same instant: MLflow's
    delete is no compare-and-set, and the first CI run of this test saw version 2 counted by both)."""
    first = _shared_store_project(tmp_path, monkeypatch, "ci-job-1")
    second = _shared_store_project(tmp_path, monkeypatch, "ci-job-2")
    client, experiment = _with_a_candidate(first)
    _with_a_candidate(second)
    client.create_registered_model(NAME)
    collided = 0
    for round_number in range(3):
        made = [_training_run(client, experiment, first, f"{round_number * 100 + n:064x}") for n in range(8)]
        runs = set(made) | {r.info.run_id for r in client.search_runs([experiment], "tags.stage = 'evaluate'")}
        versions = {str(client.create_model_version(NAME, f"runs:/{run}/bundle", run_id=run).version) for run in made}
        jobs = [_prune_command(first), _prune_command(second)]
        outputs = [job.communicate(timeout=120) for job in jobs]
        assert [job.returncode for job in jobs] == [0, 0], [err for _, err in outputs]
        summaries = []
        for out, _ in outputs:
            summaries.append(json.loads(out[out.index("\n{") + 1:]))
            assert "prune: found" in out or not (summaries[-1]["versions_deleted_by_another"]
                                                 or summaries[-1]["runs_deleted_by_another"])
        mine = [set(summary["deleted_versions"]) for summary in summaries]
        assert mine[0] | mine[1] == versions
        theirs = [set(summary["deleted_runs"]) | set(summary["freed_deleted_runs"]) for summary in summaries]
        assert theirs[0] | theirs[1] == runs
        for this, other in ((0, 1), (1, 0)):
            assert set(summaries[this]["versions_deleted_by_another"]) <= mine[other]
            assert set(summaries[this]["runs_deleted_by_another"]) <= theirs[other]
        assert _versions(client) == set() and all(prune._lifecycle(client, run) is None for run in runs)
        collided += sum(len(s["versions_deleted_by_another"]) + len(s["runs_deleted_by_another"]) for s in summaries)
        if collided:
            break
    assert collided, "the two prunes never reached the same version or run in three rounds: no race was tested"


class _PromoteDuringPrune:
    """The real MlflowClient; after its first version deletion, another checkout's promote lands on the same store:
    a version of ``name`` registered from ``run_id`` (the run prune planned to delete, older than keep_runs), with
    the DVC entry promote records, made production."""

    def __init__(self, inner, name: str, run_id: str):
        self._inner, self._name, self._run_id, self.registered = inner, name, run_id, None

    def __getattr__(self, attribute):
        return getattr(self._inner, attribute)

    def delete_model_version(self, name, version):
        answer = self._inner.delete_model_version(name, version)
        if self.registered is None:
            if self._name not in {m.name for m in self._inner.search_registered_models()}:
                self._inner.create_registered_model(self._name)
            entry = json.dumps({"md5": "0" * 32 + ".dir", "size": 64, "nfiles": 1, "hash": "md5"})
            self.registered = str(self._inner.create_model_version(
                self._name, f"runs:/{self._run_id}/bundle", run_id=self._run_id,
                tags={registry_fetch.TAG_DVC: entry}).version)
            self._inner.set_registered_model_alias(self._name, "production", self.registered)
        return answer


@pytest.mark.parametrize("model", [NAME, "acme-forecaster"])
def test_a_version_registered_from_a_planned_run_while_prune_runs_keeps_its_runs_and_dvc_entry(
        tmp_path, monkeypatch, model):
    """Found by review: a promote from another checkout (a CI job) landing while prune runs registers a version the
    plan never read, from a training run older than keep_runs: prune deleted that run and its evaluation anyway and
    `mlflow gc` removed the new production's bundle; nor did `dvc gc` keep its DVC entry. The versions are read again
    before the runs are deleted (and before dvc gc): a version registered since keeps its runs and DVC entry. The
    same for a version of another registered model registered from a run with no model tag."""
    root = _shared_store_project(tmp_path, monkeypatch)
    client, experiment = _with_a_candidate(root)
    client.create_registered_model(NAME)
    old = _training_run(client, experiment, root, f"{1:064x}")
    client.create_model_version(NAME, f"runs:/{old}/bundle", run_id=old)
    current = _training_run(client, experiment, root, f"{2:064x}")
    client.set_registered_model_alias(NAME, "production",
                                      client.create_model_version(NAME, f"runs:/{current}/bundle",
                                                                  run_id=current).version)
    fresh = _training_run(client, experiment, root, f"{3:064x}", model=None if model != NAME else NAME)
    evaluation = client.search_runs([experiment], f"tags.`{tracking.PARENT_RUN_TAG}` = '{fresh}'")[0].info.run_id
    planned = prune.plan(root, prune.prune_params(yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))),
                         NAME, [root / "models"])
    if model == NAME:  # an untagged run no version claims is no prune's: only this model's own run is planned
        assert {fresh, evaluation} <= set(planned.runs), planned.runs
    promoting = _PromoteDuringPrune(tracking.client(root, create=False), model, fresh)
    monkeypatch.setattr(tracking, "client", lambda *a, **k: promoting)
    collect = prune.delete_registry(root, planned)
    assert promoting.registered is not None
    for run_id in (fresh, evaluation):
        assert client.get_run(run_id).info.lifecycle_stage == "active" and run_id not in collect
    assert old in collect
    assert any(entry["md5"] == "0" * 32 + ".dir" for entry in planned.dvc_keep.values()), planned.dvc_keep
    summary = planned.summary()
    assert summary["versions_registered_since"] == [f"{model} {promoting.registered}"]
    assert fresh not in summary["deleted_runs"] and old in summary["deleted_runs"]
    if model == NAME:
        assert summary["kept_versions"][promoting.registered] == "registered since prune planned", summary
    assert "registered since it planned" in prune.report({**summary, "mlflow": "", "dvc": {}, "dry_run": False})


@pytest.mark.slow  # mlflow gc and four dvc processes: 35 s on 2 busy cores
def test_a_prune_stopped_by_an_unreachable_dvc_remote_says_what_it_deleted_and_a_rerun_finishes(
        tmp_path, monkeypatch, capsys):
    """Found by probing with the DVC remote unreachable (prune.dvc_remote: true, an http remote on a closed port):
    prune deleted the old model versions and their runs, `mlflow gc` removed them, then `dvc gc --cloud` failed and
    the command printed only that failure: what it had deleted for good was said nowhere. Now a prune that stops
    after deleting anything says what it deleted, and that a rerun finishes (it does, once the remote answers)."""
    root = _shared_store_project(tmp_path, monkeypatch)
    if promote._dvc(root, "version").returncode != 0:
        pytest.skip("dvc CLI not available")
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["prune"]["dvc_remote"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    _dvc(root, "remote", "add", "-d", "shared", "http://127.0.0.1:1/unreachable")
    client, experiment = _with_a_candidate(root)
    client.create_registered_model(NAME)
    runs = [_training_run(client, experiment, root, f"{n:064x}") for n in (1, 2)]
    made = [str(client.create_model_version(NAME, f"runs:/{run}/bundle", run_id=run).version) for run in runs]
    client.set_registered_model_alias(NAME, "production", made[1])

    assert prune.main(["--root", str(root), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert "dvc gc" in err and "failed" in err, err
    assert (f"prune: stopped before the end, after it deleted 1 model versions ({made[0]}) and 2 MLflow runs"
            in out), out
    assert runs[0] in out and "mlflow gc removed 2 runs" in out and "Run prune again to finish" in out, out
    assert _versions(client) == {made[1]}

    _dvc(root, "remote", "modify", "shared", "url", str(tmp_path / "remote"))  # the remote answers again
    assert prune.main(["--root", str(root), "--quiet"]) == 0
    out, _ = capsys.readouterr()
    assert "deleted 0 model versions" in out and "stopped" not in out, out
    assert _versions(client) == {made[1]}


@pytest.mark.slow  # four dvc processes: ~30 s on 2 busy cores
def test_a_dvc_remote_shared_with_another_project_keeps_that_projects_data_it_names(tmp_path, monkeypatch):
    """Found by probing two DVC projects on one remote (as two projects share one tracking server): with
    prune.dvc_remote true, `dvc gc --cloud` deleted every object this project does not use, the other project's
    committed data among them (its `dvc pull` then failed: missing files). prune.dvc_projects names the other
    projects' folders, which `dvc gc --projects` keeps too."""
    root = _shared_store_project(tmp_path, monkeypatch)
    if promote._dvc(root, "version").returncode != 0:
        pytest.skip("dvc CLI not available")
    remote = tmp_path / "remote"
    other = tmp_path / "other-project"
    other.mkdir()
    for folder in (root, other):
        subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
        _dvc(folder, "init", "-q")
        _dvc(folder, "remote", "add", "-d", "shared", str(remote))
    (other / "sales.csv").write_bytes(os.urandom(4096))
    _dvc(other, "add", "-q", "sales.csv")
    subprocess.run(["git", "add", "-A"], cwd=other, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "data"], cwd=other,
                   check=True)
    _dvc(other, "push", "-q")
    stored = sorted(p for p in remote.rglob("*") if p.is_file())
    assert len(stored) == 1
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["prune"].update(dvc_remote=True, dvc_projects=["../other-project"])
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    tracking.ensure_experiment(tracking.client(root, create=False), root)

    done = prune.run(root)
    assert done["dvc"]["objects"] == 0 and done["dvc"]["remote"], done["dvc"]
    assert sorted(p for p in remote.rglob("*") if p.is_file()) == stored

    params["prune"]["dvc_projects"] = "../other-project"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    with pytest.raises(ParamsError, match="prune.dvc_projects: expected a list"):
        prune.run(root)
