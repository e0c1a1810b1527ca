"""`make fetch-model` and `release sync` refuse a bundle the app would refuse, and leave what was installed.

Found in review: the app refuses a bundle with a NaN weight or an absurd embedding row at load
(pipeline/bundle_checks.py) and keeps serving the previous model, but fetch-model and release sync verified the
checksums only and installed it into models/production: the app refused it, and after a restart nothing served.
The registry here is a real one (tests/delivery/conftest.py); the implausible bundle is registered the way promote
registers one (its serving bundle uploaded to a run, the version tagged with its digest and a passed verdict).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import registry_fetch, release, tracking
from app.predictor import load_model
from pipeline.bundle import BundleError, copy_bundle, verify_bundle
from pipeline.release_store import CANARY, PRODUCTION
from tests.app.tiny_bundle import absurd_item_row, tampered_bundle, tensor_of

from .conftest import a_clone

MODEL_NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml

IMPLAUSIBLE_ALIAS = "implausible"


def nan_weight(source: Path, target: Path) -> Path:
    table = tensor_of(source, "embedding_store_nbr/embeddings")

    def change(weights: dict) -> None:
        weights[table][1, 0] = np.nan
    return tampered_bundle(source, target, change)


CHANGES = {"a NaN weight": (nan_weight, "weights.npz: weight embedding_store_nbr/embeddings.value has non-finite"),
           "an absurd embedding row": (absurd_item_row, "give implausible units")}


@pytest.fixture(params=list(CHANGES))
def implausible(request, released, registry_env, tmp_path):
    """(version, the refusal's words, its bundle): production's serving bundle tampered with, registered as promote
    registers one."""
    root, _, _ = released
    make_change, reason = CHANGES[request.param]
    client = tracking.client(root)
    production = client.get_model_version_by_alias(MODEL_NAME, PRODUCTION)
    good = tmp_path / "registered"
    good.mkdir()
    local = Path(client.download_artifacts(production.run_id, production.tags[registry_fetch.TAG_ARTIFACT], str(good)))
    bad = make_change(local, tmp_path / "implausible")
    with pytest.raises(BundleError, match=reason):
        load_model(bad)  # the app refuses it
    run = client.create_run(client.get_experiment_by_name(tracking.EXPERIMENT_NAME).experiment_id)
    client.log_artifacts(run.info.run_id, str(bad), registry_fetch.SERVING_ARTIFACT)
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(MODEL_NAME, f"runs:/{run.info.run_id}/serving_bundle",
                                          run_id=run.info.run_id)
    tags = {k: v for k, v in production.tags.items() if k != registry_fetch.TAG_DVC}
    tags[registry_fetch.TAG_DIGEST] = verify_bundle(bad)  # passes verification: only the check can refuse it
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, version.version, key, value)
    client.set_registered_model_alias(MODEL_NAME, IMPLAUSIBLE_ALIAS, version.version)
    try:
        yield str(version.version), reason, bad
    finally:
        client.delete_model_version(MODEL_NAME, version.version)
        client.delete_run(run.info.run_id)


def test_fetch_model_refuses_it_and_keeps_what_was_installed(implausible, tmp_path, capsys):
    version, reason, _ = implausible
    fresh = a_clone(tmp_path / "host")
    target = fresh / "models/production"
    assert registry_fetch.main(["--root", str(fresh)]) == 0  # the good production first
    before = verify_bundle(target)
    capsys.readouterr()
    assert registry_fetch.main(["--root", str(fresh), "--alias", IMPLAUSIBLE_ALIAS]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after MLflow's download progress)
    assert err.startswith(f"fetch-model: error: version {version}: "), err
    assert reason in err and "runs:/" in err, err
    assert verify_bundle(target) == before  # what was there stays
    empty = a_clone(tmp_path / "empty")
    assert registry_fetch.main(["--root", str(empty), "--alias", IMPLAUSIBLE_ALIAS, "--to", "models/canary"]) == 1
    assert not (empty / "models/canary").exists()
    # no scratch copy left either; the writer lock's file stays, as promote's and release's (atomic.one_writer)
    assert sorted(p.name for p in (empty / "models").iterdir()) == [".writer.lock"]


def test_release_sync_refuses_it_for_production_and_for_a_candidate(implausible, host, capsys):
    root, store, versions = host
    version, reason, _ = implausible
    served = {variant: store.served_digest(variant) for variant in (PRODUCTION, CANARY)}
    client = tracking.client(root)
    for variant in (PRODUCTION, CANARY):
        client.set_registered_model_alias(MODEL_NAME, variant, version)
        capsys.readouterr()
        assert release.main(["sync", "--root", str(root), "--models", str(store.root)]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]  # (after MLflow's download progress)
        assert err.startswith("release: error: "), err
        assert reason in err and f"version {version}" in err, err
        assert {v: store.served_digest(v) for v in (PRODUCTION, CANARY)} == served  # what was there stays
        assert not store.release_dir(version).exists()  # nor kept among the releases to install later
        client.set_registered_model_alias(MODEL_NAME, variant, versions[variant])


def test_a_release_an_older_sync_kept_on_disk_is_checked_before_it_serves(implausible, host, capsys):
    """Releases on disk were verified by their checksums alone before: one kept there (by the code before this
    check) would be installed by the next sync or release command without a download, so without the check."""
    root, store, versions = host
    version, reason, bad = implausible
    copy_bundle(bad, store.release_dir(version))  # as an older `release sync` left it
    served = store.served_digest(PRODUCTION)
    tracking.client(root).set_registered_model_alias(MODEL_NAME, PRODUCTION, version)
    capsys.readouterr()
    assert release.main(["sync", "--root", str(root), "--models", str(store.root)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"release: error: {store.release_dir(version)}"), err
    assert reason in err, err
    assert store.served_digest(PRODUCTION) == served


def test_a_downloaded_release_is_checked_once_on_its_way_to_serving(host, monkeypatch):
    """download_version checks what it fetched; installing that release as a variant in the same process loaded and
    forecast it a second time (on Favorita's size, a second of each release step). A release found on disk is
    still checked at install (the test above)."""
    from pipeline import bundle_checks, release_store

    root, store, versions = host
    checked: list[str] = []

    def counting(path):
        checked.append(Path(path).name)
        return bundle_checks.load_servable(path)

    monkeypatch.setattr(registry_fetch, "load_servable", counting)
    monkeypatch.setattr(release_store, "load_servable", counting)
    version = versions["production"]
    shutil.rmtree(store.release_dir(version))  # not on disk: downloaded
    release.install(root, store, CANARY, version)
    assert len(checked) == 1, checked  # the download's check only
    assert store.served_digest(CANARY) == verify_bundle(store.release_dir(version))
    fresh = release_store.ReleaseStore(store.root, keep=2)  # another process: the release on disk is checked again
    release.install(root, fresh, release_store.SHADOW, version)
    assert len(checked) == 2, checked
