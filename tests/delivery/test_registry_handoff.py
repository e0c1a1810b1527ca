"""Handoff through the registry: a fresh directory with only the tracking URI fetches the model by alias."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import registry_fetch, tracking
from pipeline.bundle import load_bundle, verify_bundle

from .conftest import REPO, a_clone

MODEL_NAME = "shelfcast-forecaster"  # promote.model_name of the tiny projects' params.yaml


def test_promote_records_where_the_serving_bundle_is(released, registry_env):
    root, _, versions = released
    version = tracking.client(root).get_model_version_by_alias(MODEL_NAME, "production")
    assert str(version.version) == versions["production"] == "1"
    assert version.tags[registry_fetch.TAG_ARTIFACT] == registry_fetch.SERVING_ARTIFACT
    assert len(version.tags[registry_fetch.TAG_DIGEST]) == 64
    canary = tracking.client(root).get_model_version_by_alias(MODEL_NAME, "canary")
    assert str(canary.version) == versions["canary"] == "2"
    assert canary.tags[registry_fetch.TAG_DIGEST] != version.tags[registry_fetch.TAG_DIGEST]


def test_fetch_by_alias_into_an_empty_directory(released, registry_env, tmp_path):
    fresh = a_clone(tmp_path / "host")
    assert registry_fetch.main(["--root", str(fresh), "--alias", "production"]) == 0
    version = tracking.client(fresh).get_model_version_by_alias(MODEL_NAME, "production")
    assert verify_bundle(fresh / "models/production") == version.tags[registry_fetch.TAG_DIGEST]


def test_a_second_fetch_of_the_installed_version_downloads_nothing(released, registry_env, tmp_path, capsys):
    fresh = a_clone(tmp_path / "host")
    args = ["--root", str(fresh), "--alias", "production"]
    assert registry_fetch.main(args) == 0 and "from mlflow" in capsys.readouterr().out
    assert registry_fetch.main(args) == 0 and "already installed at" in capsys.readouterr().out
    damaged = next(p for p in sorted((fresh / "models/production").rglob("*")) if p.is_file())
    damaged.write_bytes(b"damaged")
    assert registry_fetch.main(args) == 0 and "from mlflow" in capsys.readouterr().out  # fetched again
    version = tracking.client(fresh).get_model_version_by_alias(MODEL_NAME, "production")
    assert verify_bundle(fresh / "models/production") == version.tags[registry_fetch.TAG_DIGEST]


def test_a_fetch_refuses_while_a_release_writes_the_models_directory(released, registry_env, tmp_path, capsys):
    """fetch-model holds the models directory's writer lock, as promote and release do: while a `release promote`
    writes models/ it refuses in one line naming it and installs nothing (before, it swapped in the version it had
    resolved, and the host served it while the release made another production), and fetches once it is done."""
    from pipeline.atomic import one_writer

    fresh = a_clone(tmp_path / "host")
    args = ["--root", str(fresh), "--alias", "production"]
    with one_writer(fresh / "models", "release promote"):
        assert registry_fetch.main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "fetch-model: error:" in err and "release promote (pid" in err, err
        assert "run fetch-model again once it has finished" in err, err
        assert sorted(p.name for p in (fresh / "models").iterdir()) == [".writer.lock"]
    assert registry_fetch.main(args) == 0
    version = tracking.client(fresh).get_model_version_by_alias(MODEL_NAME, "production")
    assert verify_bundle(fresh / "models/production") == version.tags[registry_fetch.TAG_DIGEST]


def test_a_stored_bundle_folder_holding_more_than_a_bundle_is_refused_before_any_download(released, registry_env,
                                                                                         tmp_path, capsys):
    """Found by a probe against a real `mlflow server`: MLflow downloads every file and folder under the version's
    serving_bundle/, so a 2 GB file logged there beside the bundle was downloaded whole (15 s, 2 GB on the host's
    disk) before the bundle was refused as holding an unlisted file. The store's listing is checked first: here a
    named pipe (which no download may open: it would wait for a writer) and a folder, refused by name, nothing
    downloaded. A serving_artifact tag naming a folder with no artifacts is refused the same way."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    root, _, versions = released
    client = tracking.client(root)
    version = client.get_model_version(MODEL_NAME, versions["canary"])
    stored = Path(url2pathname(urlparse(client.get_run(version.run_id).info.artifact_uri).path)) / "serving_bundle"
    where = f"runs:/{version.run_id}/serving_bundle"
    target = tmp_path / "models" / "canary"
    args = ["--root", str(tmp_path), "--alias", "canary", "--to", str(target)]
    os.mkfifo(stored / "extra.fifo")
    (stored / "notes").mkdir()
    (stored / "notes" / "readme.txt").write_text("logged by hand\n")
    try:
        assert registry_fetch.main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert (f"version {version.version}: the registry's bundle {where} is damaged: {where}: missing or unlisted "
                "file(s): extra.fifo, notes/ (refused before downloading anything)") in err, err
        assert sorted(p.name for p in target.parent.iterdir()) == [".writer.lock"]  # no scratch copy, no install
    finally:
        (stored / "extra.fifo").unlink()
        (stored / "notes" / "readme.txt").unlink()
        (stored / "notes").rmdir()
    client.set_model_version_tag(MODEL_NAME, version.version, registry_fetch.TAG_ARTIFACT, "no-such-folder")
    try:
        assert registry_fetch.main(args) == 1
        err = capsys.readouterr().err
        assert f"runs:/{version.run_id}/no-such-folder holds no artifacts" in err and err.count("\n") == 1, err
    finally:
        client.set_model_version_tag(MODEL_NAME, version.version, registry_fetch.TAG_ARTIFACT,
                                     registry_fetch.SERVING_ARTIFACT)
    assert registry_fetch.main(args) == 0
    assert verify_bundle(target) == version.tags[registry_fetch.TAG_DIGEST]


def test_a_download_that_fails_says_why(released, registry_env, tmp_path, capsys):
    """Found by a probe against a real `mlflow server` answering 500 for weights.npz (and cutting the connection
    mid-file): fetch-model said only "Failed to download artifacts from path 'serving_bundle', please ensure that the
    path is correct": MLflow's runs:/ repository drops the run's download error, tries a logged model's artifacts of
    that path, then blames the path. The run's own artifact repository is read now, and its error is the line's, the
    file named. Here a named pipe stored as weights.npz, which the store's copy refuses."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    root, _, versions = released
    client = tracking.client(root)
    version = client.get_model_version(MODEL_NAME, versions["canary"])
    stored = Path(url2pathname(urlparse(client.get_run(version.run_id).info.artifact_uri).path)) / "serving_bundle"
    target = tmp_path / "models" / "canary"
    args = ["--root", str(tmp_path), "--alias", "canary", "--to", str(target)]
    weights = stored / "weights.npz"
    kept = weights.read_bytes()
    weights.unlink()
    os.mkfifo(weights)
    try:
        assert registry_fetch.main(args) == 1
        err = capsys.readouterr().err
    finally:
        weights.unlink()
        weights.write_bytes(kept)
    [line] = [line for line in err.splitlines() if "fetch-model" in line]  # MLflow's progress bar is the rest
    assert "please ensure that the path is correct" not in line, line
    assert (line.startswith(f"fetch-model: error: version {version.version}: downloading runs:/{version.run_id}/"
                            "serving_bundle: ") and "serving_bundle/weights.npz" in line and "named pipe" in line), line
    assert sorted(p.name for p in target.parent.iterdir()) == [".writer.lock"]  # no scratch copy, no install
    assert registry_fetch.main(args) == 0
    assert verify_bundle(target) == version.tags[registry_fetch.TAG_DIGEST]


def test_a_version_copied_from_another_registered_model_is_refused_naming_it(released, registry_env, tmp_path,
                                                                             capsys):
    """Found by a probe: a version copied into another registered model (MLflow's copy_model_version, a team's way
    from a 'dev' model to a 'prod' one) keeps the source's tags, serving_digest and threshold_test=passed included,
    and its bundle, which names the source model. fetch-model --name installed it (the app then served and logged it
    as the other model), and `release sync --name` failed "…/releases/1: no model bundle here (run the train stage,
    or promote a model)": the store had deleted it at once as another model's release. Both now refuse it, naming
    the model its bundle belongs to."""
    from pipeline import release

    root, _, versions = released
    client = tracking.client(root)
    copy = "shelfcast-copied"
    copied = client.copy_model_version(f"models:/{MODEL_NAME}/{versions['canary']}", copy)
    client.set_registered_model_alias(copy, "production", copied.version)
    target = tmp_path / "models" / "production"
    capsys.readouterr()  # MLflow's words on the copy
    try:
        assert registry_fetch.main(["--root", str(tmp_path), "--name", copy, "--to", str(target)]) == 1
        [err] = [line for line in capsys.readouterr().err.splitlines() if "fetch-model" in line]  # + MLflow's bar
        said = (f"version {copied.version} of {copy} holds a bundle of another model, '{MODEL_NAME}' "
                f"(runs:/{copied.run_id}/serving_bundle's bundle.json name;")
        assert said in err and err.endswith("promote.model_name: shelfcast-copied)"), err
        assert not target.exists()
        host = tmp_path / "host-models"
        assert release.main(["sync", "--root", str(tmp_path), "--models", str(host), "--name", copy]) == 1
        err = capsys.readouterr().err
        assert said in err and "no model bundle here" not in err, err
        assert not (host / "production").exists()
    finally:
        client.delete_registered_model(copy)


def test_a_version_stored_where_this_host_has_no_client_says_what_to_install(released, registry_env, tmp_path,
                                                                             capsys):
    """Found by a probe: a version whose run stores its artifacts on S3 (the experiment's artifact location), fetched
    where boto3 is not installed (it is no dependency of the project), failed "listing runs:/…/serving_bundle: No
    module named 'botocore'": neither where the bundle is nor what to install. The line names both, and DVC."""
    if importlib.util.find_spec("botocore") is not None:
        pytest.skip("botocore is installed here: MLflow would reach for S3")
    root, _, versions = released
    client = tracking.client(root)
    canary = client.get_model_version(MODEL_NAME, versions["canary"])
    experiment = client.create_experiment(f"s3-stored-{tmp_path.name}", artifact_location="s3://team-bucket/mlflow")
    run = client.create_run(experiment).info.run_id
    client.set_terminated(run)
    version = client.create_model_version(MODEL_NAME, f"runs:/{run}/serving_bundle", run_id=run, tags=canary.tags)
    client.set_registered_model_alias(MODEL_NAME, "probe-s3", version.version)
    capsys.readouterr()
    try:
        assert registry_fetch.main(["--root", str(tmp_path), "--alias", "probe-s3", "--to",
                                    str(tmp_path / "models/canary")]) == 1
        err = capsys.readouterr().err
    finally:
        client.delete_registered_model_alias(MODEL_NAME, "probe-s3")
        client.delete_model_version(MODEL_NAME, version.version)
    assert err.count("\n") == 1, err
    assert (f"version {version.version}: runs:/{run}/serving_bundle is stored at s3://team-bucket/mlflow/{run}/"
            "artifacts, whose client library MLflow imports, 'botocore', is not installed here" in err), err
    assert "s3:// needs boto3" in err and "--from dvc" in err, err
    assert not (tmp_path / "models/canary").exists()


def _limited_file_size():  # in the child: a write past 64 MiB fails (EFBIG) instead of filling the disk
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))


def test_a_stored_bundle_larger_than_the_room_left_is_refused_before_any_download(released, registry_env, tmp_path):
    """Found by a probe: a stored bundle file far larger than any real one was downloaded whole, or until the disk was
    full (a 2 GiB file: 15 s, 2 GiB written). Its listed size is weighed against the room where it lands first:
    twice the bundle (the downloaded copy and the installed one). Here a sparse weights.npz as large as the free
    space; the fetch runs with a 64 MiB file-size limit, so code that downloads it fails early (EFBIG), not the disk."""
    import shutil
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    root, _, versions = released
    client = tracking.client(root)
    version = client.get_model_version(MODEL_NAME, versions["canary"])
    stored = Path(url2pathname(urlparse(client.get_run(version.run_id).info.artifact_uri).path)) / "serving_bundle"
    host = a_clone(tmp_path / "host")
    weights = stored / "weights.npz"
    kept = weights.read_bytes()
    huge = shutil.disk_usage(tmp_path).free
    os.truncate(weights, huge)  # sparse: nothing written
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run([sys.executable, "-m", "pipeline.registry_fetch", "--root", str(host), "--alias",
                               "canary"], cwd=host, env=env, capture_output=True, text=True, timeout=120,
                              preexec_fn=_limited_file_size)
    finally:
        weights.unlink()
        weights.write_bytes(kept)
    [line] = [line for line in done.stderr.splitlines() if "fetch-model" in line]
    assert done.returncode == 1, done.stderr
    assert line.startswith(f"fetch-model: error: version {version.version}: the registry's bundle "
                           f"runs:/{version.run_id}/serving_bundle is "), line
    assert f"(weights.npz: {huge:,}); {host / 'models'} has " in line and "nothing downloaded" in line, line
    assert sorted(p.name for p in (host / "models").iterdir()) == [".writer.lock"]


@pytest.mark.slow  # a real `mlflow server`: ~15 s
def test_a_fetch_stopped_mid_download_ends_at_once(released, registry_env, tmp_path):
    """Found by a probe: SIGTERM (or Ctrl-C) while a file's download stalls (a server that stops sending, a file that
    never ends) printed fetch-model's line, then the process waited in Python's exit for MLflow's download thread
    until the read timed out (20.5 s after the signal there; a never-ending file, for good), still writing into the
    deleted scratch copy, as it downloaded a large file to its end. It ends at once now, 143 and the line, nothing
    left in models/. Here a real `mlflow server` sends a stored weights.npz of 2 GiB."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from mlflow import MlflowClient

    from tests.mlflow_server import mlflow_server

    root, _, versions = released
    canary = tracking.client(root).get_model_version(MODEL_NAME, versions["canary"])
    bundle = Path(url2pathname(urlparse(tracking.client(root).get_run(canary.run_id).info.artifact_uri).path))
    host = a_clone(tmp_path / "host")
    with mlflow_server(f"sqlite:///{(tmp_path / 'server.db').as_posix()}", "--artifacts-destination",
                       str(tmp_path / "artifacts")) as (address, _):
        client = MlflowClient(tracking_uri=address, registry_uri=address)
        run = client.create_run("0").info.run_id
        client.log_artifacts(run, str(bundle / "serving_bundle"), "serving_bundle")
        client.set_terminated(run)
        client.create_registered_model(MODEL_NAME)
        version = client.create_model_version(MODEL_NAME, f"runs:/{run}/serving_bundle", run_id=run,
                                              tags=canary.tags).version
        client.set_registered_model_alias(MODEL_NAME, "canary", version)
        [weights] = (tmp_path / "artifacts").rglob("serving_bundle/weights.npz")
        os.truncate(weights, 2 * 1024 ** 3)  # sparse: 2 GiB to send, 15 s here, none of it on the server's disk
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
            "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": address, "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        fetching = subprocess.Popen([sys.executable, "-m", "pipeline.registry_fetch", "--root", str(host),
                                     "--alias", "canary"], cwd=host, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not list((host / "models").glob(".fetch.*")):  # downloading
                assert fetching.poll() is None and time.monotonic() < deadline, fetching.communicate()
                time.sleep(0.1)
            time.sleep(1.0)  # the other files in, weights.npz's on its way
            assert fetching.poll() is None
            fetching.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            out, err = fetching.communicate(timeout=30)
            seconds = time.monotonic() - signalled
        finally:
            if fetching.poll() is None:
                fetching.kill()
                fetching.communicate()
    assert fetching.returncode == 143, err
    assert "fetch-model: terminated (SIGTERM); " in err and seconds < 10, (seconds, err)
    assert sorted(p.name for p in (host / "models").iterdir()) == [".writer.lock"]


@pytest.mark.slow
def test_a_fresh_clone_with_only_the_tracking_uri_fetches_and_can_serve(released, registry_env, tmp_path):
    from app.predictor import load_model

    fresh = a_clone(tmp_path / "app-runner")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.registry_fetch", "--root", str(fresh), "--alias", "canary",
                           "--to", "models/canary"], cwd=fresh, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "version 2" in done.stdout, done.stdout
    version = tracking.client(fresh).get_model_version_by_alias(MODEL_NAME, "canary")
    assert verify_bundle(fresh / "models/canary") == version.tags[registry_fetch.TAG_DIGEST]
    model = load_model(fresh / "models/canary")  # verified, warmed up, plausible: it can serve
    # the rolled-forward bundle (forecasts the days after the data), not the evaluated candidate
    assert load_bundle(fresh / "models/canary").metadata.get("source_bundle_digest")
    assert model.version and seconds < 120
    assert not (fresh / "mlruns").exists()


def test_an_unknown_alias_is_a_clear_error(registry_env, tmp_path):
    done = registry_fetch.main(["--root", str(tmp_path), "--alias", "nosuchalias", "--to", str(tmp_path / "x")])
    assert done == 1 and not (tmp_path / "x").exists()


def test_a_new_registry_without_production_says_how_the_first_one_is_made(tmp_path, capsys, monkeypatch):
    """CI registers every candidate as @shadow; the app pipeline's first fetch of @production needs one made by hand."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'new-registry.db'}")
    tracking.client(tmp_path)  # the team's new registry: a store that CI's candidates may already be in
    done = registry_fetch.main(["--root", str(tmp_path), "--alias", "production", "--to", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert done == 1 and "promoted by hand, once" in err and "SHELFCAST_PROMOTE_ALIAS unset" in err


def test_a_bundle_that_is_not_the_registered_one_is_refused(released, registry_env, tmp_path):
    root, _, _ = released
    mlflow_client = tracking.client(root)
    version = mlflow_client.get_model_version_by_alias(MODEL_NAME, "production")
    recorded = version.tags[registry_fetch.TAG_DIGEST]
    mlflow_client.set_model_version_tag(MODEL_NAME, version.version, registry_fetch.TAG_DIGEST, "0" * 64)
    try:
        assert registry_fetch.main(["--root", str(tmp_path), "--to", str(tmp_path / "models/production")]) == 1
        assert not (tmp_path / "models/production").exists()
    finally:
        mlflow_client.set_model_version_tag(MODEL_NAME, version.version, registry_fetch.TAG_DIGEST,
                                            recorded)


@pytest.mark.parametrize("recorded", ["{not json", "[1, 2]", '{"size": 3}'])
def test_a_damaged_dvc_tag_is_a_clear_error(released, registry_env, tmp_path, capsys, recorded):
    """Found by a probe: a dvc_out tag that is no JSON object with an md5 (edited by hand in the UI, cut short) made
    `fetch-model --from dvc` (and release sync) end in a JSONDecodeError or TypeError traceback."""
    root, _, _ = released
    mlflow_client = tracking.client(root)
    version = mlflow_client.get_model_version_by_alias(MODEL_NAME, "production")
    before = (version.tags or {}).get(registry_fetch.TAG_DVC)
    mlflow_client.set_model_version_tag(MODEL_NAME, version.version, registry_fetch.TAG_DVC, recorded)
    (tmp_path / ".dvc").mkdir()  # a DVC project: the entry is read before DVC runs
    try:
        assert registry_fetch.main(["--root", str(tmp_path), "--from", "dvc"]) == 1
        err = capsys.readouterr().err
        assert f"version {version.version}: its dvc_out tag is no DVC output entry with an md5" in err, err
        assert not (tmp_path / "models/production").exists()
    finally:
        if before is None:
            mlflow_client.delete_model_version_tag(MODEL_NAME, version.version, registry_fetch.TAG_DVC)
        else:
            mlflow_client.set_model_version_tag(MODEL_NAME, version.version, registry_fetch.TAG_DVC,
                                                before)


def test_a_version_registered_by_hand_is_refused(released, registry_env, tmp_path, capsys):
    """A version made in the UI or by a script from a training run (its candidate bundle: never judged by the threshold
    test, never rolled forward) was installed as production with nothing verified."""
    root, _, _ = released
    mlflow_client = tracking.client(root)
    production = mlflow_client.get_model_version_by_alias(MODEL_NAME, "production")
    by_hand = mlflow_client.create_model_version(MODEL_NAME, f"runs:/{production.run_id}/bundle",
                                                 run_id=production.run_id)
    mlflow_client.set_registered_model_alias(MODEL_NAME, "by-hand", by_hand.version)
    try:
        assert registry_fetch.main(["--root", str(tmp_path), "--alias", "by-hand",
                                    "--to", str(tmp_path / "models/production")]) == 1
        assert f"version {by_hand.version} was not registered by `pipeline.promote`" in capsys.readouterr().err
        assert not (tmp_path / "models/production").exists()
        # nor when the bundle is already installed where it would go: the tags are asked first
        assert registry_fetch.main(["--root", str(tmp_path), "--to", str(tmp_path / "models/production")]) == 0
        for key, value in production.tags.items():
            mlflow_client.set_model_version_tag(MODEL_NAME, by_hand.version, key, value)
        mlflow_client.set_model_version_tag(MODEL_NAME, by_hand.version, "threshold_test", "failed")
        capsys.readouterr()
        assert registry_fetch.main(["--root", str(tmp_path), "--alias", "by-hand",
                                    "--to", str(tmp_path / "models/production")]) == 1
        assert "was not registered by `pipeline.promote`" in capsys.readouterr().err
    finally:
        mlflow_client.delete_model_version(MODEL_NAME, by_hand.version)


@pytest.mark.slow
def test_from_the_dvc_remote_by_the_recorded_entry(released, tmp_path, monkeypatch):
    """A DVC project with a local remote: promote pushes; another clone pulls by the registry's record."""
    import shutil

    from pipeline import evaluate, promote, train

    from .conftest import prepare_registry

    source, _, _ = released
    ml = tmp_path / "ml"
    shutil.copytree(source, ml, ignore=shutil.ignore_patterns("models", "results", "mlflow.db", "mlartifacts"))
    if promote._dvc(ml, "version").returncode != 0:
        pytest.skip("dvc CLI not available")
    uri = f"sqlite:///{(tmp_path / 'registry.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    prepare_registry(uri, tmp_path / "artifacts")
    remote = tmp_path / "dvc-remote"
    for clone in (ml, tmp_path / "app"):
        clone.mkdir(exist_ok=True)
        subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
        assert promote._dvc(clone, "init", "-q").returncode == 0
        assert promote._dvc(clone, "remote", "add", "-d", "shared", str(remote)).returncode == 0
    train.run(ml, quiet=True)
    assert evaluate.main(["--root", str(ml), "--quiet"]) == 0
    assert "push" in promote.run(ml, quiet=True)["dvc"]
    version = tracking.client(ml).get_model_version_by_alias(MODEL_NAME, "production")
    assert registry_fetch.TAG_DVC in version.tags
    app = a_clone(tmp_path / "app")  # a serving host's checkout: the model's name is its params.yaml's
    assert registry_fetch.main(["--root", str(app), "--from", "dvc"]) == 0
    assert verify_bundle(app / "models/production") == version.tags[registry_fetch.TAG_DIGEST]
