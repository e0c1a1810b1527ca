"""A project whose params.yaml names production's registry alias otherwise (``promote.alias: champion``, a common
MLflow naming) has that alias everywhere: promote moves and installs it, ``release`` canary/promote/rollback/sync/
status, ``fetch-model`` and prune read and move it, the rollback record (``previous_production``) follows its moves.
Real tiny bundles, a real sqlite MLflow store.

Found by a probe: promote moved ``champion`` while release, rollback, sync, prune and fetch-model spoke of the literal
alias ``production``: `release promote` made a second alias ``production`` beside ``champion`` (each host then served
whichever it read), `release sync` found no production, and rollback had no record to return to."""

from __future__ import annotations

import copy
import json

import pytest

from pipeline import evaluate, promote, prune, registry_fetch, release, tracking
from pipeline.bundle import verify_bundle
from pipeline.release_store import CANARY, PRODUCTION

from .conftest import MODEL_NAME, prepare_registry, tiny_bundle_module

CHAMPION = "champion"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """(project root, tracking URI): a tiny project with promote.alias champion; version 1 promoted by promote (no
    SHELFCAST_PROMOTE_ALIAS: the configured alias), version 2 trained and evaluated, registered as CI registers a
    candidate (``shadow``)."""
    base = tmp_path_factory.mktemp("champion")
    uri = f"sqlite:///{(base / 'registry.db').as_posix()}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("SHELFCAST_PROMOTE_ALIAS", raising=False)
        prepare_registry(uri, base / "artifacts")
        tiny = tiny_bundle_module()
        params = copy.deepcopy(tiny.TINY_APP_PARAMS)
        params["promote"]["alias"] = CHAMPION
        params["prune"] = {"keep_versions": 0, "keep_runs": 0, "dvc_remote": False}
        root = base / "project"
        tiny.build_tiny_project(root, params)
        assert evaluate.main(["--root", str(root), "--quiet"]) == 0
        first = promote.run(root, quiet=True)
        assert (first["alias"], first["version"], first["installed"]) == (CHAMPION, "1", True)
        tiny.retrain(root, seed=4)
        assert evaluate.main(["--root", str(root), "--quiet"]) == 0
        mp.setenv("SHELFCAST_PROMOTE_ALIAS", "shadow")
        second = promote.run(root, quiet=True)
        assert (second["alias"], second["version"], second["installed"]) == ("shadow", "2", False)
    return root, uri


def registry(root) -> tuple[dict, str | None]:
    model = tracking.client(root).get_registered_model(MODEL_NAME)
    return {k: str(v) for k, v in model.aliases.items()}, (model.tags or {}).get(tracking.PREVIOUS_PRODUCTION_TAG)


def served(store_dir, variant: str) -> str:
    return verify_bundle(store_dir / variant)


def digest_of(root, version: str) -> str:
    return tracking.client(root).get_model_version(MODEL_NAME, version).tags[registry_fetch.TAG_DIGEST]


def test_promote_canary_promote_rollback_sync_prune_follow_promote_alias(project, monkeypatch, tmp_path, capsys):
    root, uri = project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert registry(root) == ({CHAMPION: "1", "shadow": "2"}, None)
    assert verify_bundle(root / "models/production") == digest_of(root, "1")  # promote installed champion here
    assert str(tracking.production_version(root).version) == "1"  # the project's alias, no argument

    host = tmp_path / "host-models"
    cli = ["--root", str(root), "--models", str(host)]  # as `make release-*` runs them
    assert release.main(["sync", *cli]) == 0, capsys.readouterr().err
    assert served(host, PRODUCTION) == digest_of(root, "1")
    assert release.main(["canary", "--alias", "shadow", "--share", "0.5", *cli]) == 0, capsys.readouterr().err
    assert served(host, CANARY) == digest_of(root, "2")
    assert registry(root)[0] == {CHAMPION: "1", "shadow": "2", CANARY: "2"}

    assert release.main(["promote", *cli]) == 0, capsys.readouterr().err
    assert registry(root) == ({CHAMPION: "2"}, "1")  # no alias "production" made beside it; the move recorded
    assert served(host, PRODUCTION) == digest_of(root, "2")

    assert release.main(["rollback", *cli]) == 0, capsys.readouterr().err
    assert "rolled back from version 2 to 1" in capsys.readouterr().out
    assert registry(root) == ({CHAMPION: "1"}, "2")
    assert served(host, PRODUCTION) == digest_of(root, "1")

    fresh = tmp_path / "fresh-host"  # a restarted host: what the aliases name
    assert release.main(["sync", "--root", str(root), "--models", str(fresh)]) == 0, capsys.readouterr().err
    assert served(fresh, PRODUCTION) == digest_of(root, "1")
    capsys.readouterr()
    assert release.main(["status", "--root", str(root), "--models", str(fresh)]) == 0, capsys.readouterr().err
    status = json.loads(capsys.readouterr().out.splitlines()[0])
    assert status["production_alias"] == CHAMPION and status["aliases"] == {CHAMPION: "1"}
    assert status["host"][PRODUCTION]["version"] == "1" and status["in_sync"] is True

    fetched = tmp_path / "fetched"  # `make fetch-model`: no --alias
    assert registry_fetch.main(["--root", str(root), "--to", str(fetched)]) == 0, capsys.readouterr().err
    assert f"models:/{MODEL_NAME}@{CHAMPION} = version 1" in capsys.readouterr().out
    assert verify_bundle(fetched) == digest_of(root, "1")

    planned = prune.run(root, dry_run=True, models_dir=fresh)  # a host that serves version 1 alone
    assert f"alias {CHAMPION}" in planned["kept_versions"]["1"]
    kept = planned["kept_versions"]["2"]  # what a rollback returns to, by the tag and by champion's move record
    assert "previous_production" in kept and f"{CHAMPION}'s {tracking.MOVE_TAG}" in kept, kept
    assert planned["deleted_versions"] == []
    assert registry(root)[0] == {CHAMPION: "1"}  # nothing ever named "production"


def test_a_candidates_alias_is_refused_as_promote_alias(project, monkeypatch):
    """promote.alias: canary would make production and the canary one alias: refused in one line naming the key."""
    from pipeline.model_params import production_alias
    from pipeline.params import ParamsError

    root, uri = project
    params = root / "params.yaml"
    before = params.read_text()
    try:
        params.write_text(before.replace(f"alias: {CHAMPION}", "alias: canary"))
        with pytest.raises(ParamsError, match="promote.alias: 'canary' is a release candidate's alias"):
            production_alias(root)
    finally:
        params.write_text(before)


def test_a_folder_without_params_yaml_has_the_shipped_alias(tmp_path):
    """A command given --name in a folder without params.yaml takes `production`, the repository's own promote.alias."""
    from pipeline.model_params import SHIPPED_ALIAS, production_alias

    from .conftest import REPO

    (tmp_path / "params.yaml").unlink()  # host_checkout's copy
    assert production_alias(tmp_path) == SHIPPED_ALIAS == production_alias(REPO) == "production"
