"""The model bundle: round trip (serving loader == training process), checksums, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from pipeline import models, tracking, train
from pipeline.bundle import (DATA_FILES, GRAPH_FILES, BundleError, copy_bundle, load_bundle, verify_bundle,
                             write_bundle)
from pipeline.history import load_history
from pipeline.model_params import feature_params, train_params
from pipeline.params import load_yaml
from pipeline.versions import bundle_version


def test_the_loader_reproduces_the_training_process(trained_project):
    root, _ = trained_project
    raw = load_yaml(root / "params.yaml")
    fparams, tparams = feature_params(raw), train_params(raw)
    history = load_history([root / train.TRAIN_DATA], days=train.days_needed(fparams))  # as the stage reads it
    data = train.prepare_training(history, fparams, tparams.baseline_weeks)
    config, result = train.fit(tparams, data, fparams.spec)
    in_training = models.predict_weights(config, result.weights, data.inner.matrix)
    expected = models.predict_weights(config, result.weights, data.inner.matrix, result.expected_factor)
    bundle = load_bundle(root / train.CANDIDATE_DIR)  # trained by pipeline.train with the same params and data
    served = bundle.forecast_features(data.inner.matrix)
    np.testing.assert_array_equal(served["prediction"], in_training)
    np.testing.assert_array_equal(served["expected_units"], expected)
    # the backtest's one pass for both outputs (pipeline.models.forecast_weights) gives the same bits
    both = models.forecast_weights(config, result.weights, data.inner.matrix, result.expected_factor, chunk=1000)
    np.testing.assert_array_equal(both["prediction"], in_training)
    np.testing.assert_array_equal(both["expected_units"], expected)


def test_bundle_contents_and_a_request(trained_project):
    root, summary = trained_project
    bundle = load_bundle(root / train.CANDIDATE_DIR)
    meta = bundle.metadata
    for key in ("name", "version", "code_version", "data_version", "params", "metrics",
                "input_schema", "vocabularies", "forecast_origin", "horizon", "closed_stores"):
        assert key in meta, key
    assert meta["closed_stores"] == []  # no synthetic store closes for good (tests/app/test_closed_for_good.py)
    # what the bundle was made from, never when, where or by which run: the same inputs give the same bytes
    assert not {"created", "git_commit", "mlflow_run_id"} & set(meta) and bundle.digest == summary["digest"]
    assert meta["version"] == bundle_version("mlp", meta["code_version"], meta["data_version"], meta["params"])
    assert tracking.run_of_bundle(root, bundle.digest).info.run_id == summary["run_id"]  # the run: MLflow's
    assert set(meta["data_version"]) == {"data/split/train.parquet", "data/prepared/holidays.parquet"}
    origin = np.datetime64(meta["forecast_origin"])
    units = bundle.predict(1, 1007, str(origin + 3), True)
    assert units.shape == (1,) and np.isfinite(units).all() and units[0] >= 0
    stats = bundle.training_stats
    assert set(stats["dense"]) == set(meta["input_schema"]["dense"])
    assert stats["categorical"]["family"]["distinct"] >= 4 and "quantiles" in stats["prediction_units"]


def test_the_bundle_arrays_are_written_with_fixed_zip_headers(trained_project):
    """Their bytes (and so the bundle digest, dvc.lock) must not depend on when or under which CPython 3.11
    patch release they were written (np.savez's headers changed in 3.11.4)."""
    import zipfile

    root, _ = trained_project
    for name in ("history.npz", "calendar.npz", "weights.npz"):
        with zipfile.ZipFile(root / train.CANDIDATE_DIR / name) as archive:
            assert {(i.date_time, i.extract_version) for i in archive.infolist()} == {((1980, 1, 1, 0, 0, 0), 20)}


def test_a_fresh_process_loads_the_bundle_and_predicts_the_same(trained_project):
    root, _ = trained_project
    code = (f"from pipeline.bundle import load_bundle; b = load_bundle({str(root / 'models/candidate')!r}); "
            "import numpy as np, sys; o = np.datetime64(b.metadata['forecast_origin']); "
            "sys.stdout.write(repr(b.predict([1, 2], [1007, 1014], [o + 1, o + 16], [0, 1]).tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    bundle = load_bundle(root / "models/candidate")
    origin = np.datetime64(bundle.metadata["forecast_origin"])
    here = bundle.predict([1, 2], [1007, 1014], [origin + 1, origin + 16], [0, 1]).tolist()
    assert eval(out) == here


@pytest.mark.parametrize("damage", ["flip_weights_byte", "delete_history", "extra_file", "edit_metadata",
                                    "no_manifest", "manifest_nested_too_deep", "manifest_files_a_list"])
def test_a_bundle_that_cannot_be_trusted_is_refused(trained_project, damage):
    root, _ = trained_project
    bundle_dir = root / "models/candidate"
    if damage == "flip_weights_byte":
        data = bytearray((bundle_dir / "weights.npz").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle_dir / "weights.npz").write_bytes(bytes(data))
        match = "weights.npz: checksum mismatch"
    elif damage == "delete_history":
        (bundle_dir / "history.npz").unlink()
        match = "missing or unlisted file"
    elif damage == "extra_file":
        (bundle_dir / "model.pkl").write_bytes(b"\x80\x04")
        match = "missing or unlisted file.*model.pkl"
    elif damage == "edit_metadata":
        meta = json.loads((bundle_dir / "bundle.json").read_text())
        meta["forecast_origin"] = "2030-01-01"
        (bundle_dir / "bundle.json").write_text(json.dumps(meta))
        match = "bundle.json: checksum mismatch"
    elif damage == "manifest_nested_too_deep":  # RecursionError escaped: fetch-model, release sync a traceback
        (bundle_dir / "checksums.json").write_text("[" * 100_000 + "]" * 100_000)
        match = "checksums.json: unreadable manifest .*recursion"
    elif damage == "manifest_files_a_list":  # the right names, as a list: AttributeError escaped
        (bundle_dir / "checksums.json").write_text(json.dumps({"files": sorted(GRAPH_FILES + DATA_FILES)}))
        match = "checksums.json: unreadable manifest .files is a list"
    else:
        (bundle_dir / "checksums.json").unlink()
        match = "checksums.json is missing"
    with pytest.raises(BundleError, match=match):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match=match):  # what fetch-model, release sync and promote check a bundle by
        verify_bundle(bundle_dir)


@pytest.mark.parametrize("kind", ["a symlink to /dev/zero", "a named pipe"])
def test_a_bundle_file_that_is_no_regular_file_is_refused_without_reading_it(trained_project, kind):
    """Found by a probe: verify_bundle hashed history.npz whatever it was: a symlink to /dev/zero was read for ever,
    a named pipe blocked its open() for ever (no checksum needs to match: hashing comes first). The app's reload
    thread then held its lock for good (no bundle loaded again until a restart), a starting worker never booted, and
    fetch-model, release sync and promote's copy hung."""
    root, _ = trained_project
    history = root / "models/candidate/history.npz"
    history.unlink()
    if kind == "a named pipe":
        os.mkfifo(history)
    else:
        history.symlink_to("/dev/zero")
    outcome: dict = {}

    def verify() -> None:
        try:
            verify_bundle(history.parent)
        except BundleError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=verify, daemon=True)  # without the fix it never ends
    worker.start()
    worker.join(10)
    error = outcome.get("error", "still reading after 10 s")
    assert "history.npz: cannot be read (not a regular file" in error, outcome


def test_a_release_installs_over_a_production_whose_checksums_file_is_a_named_pipe(trained_project, tmp_path):
    """Found by a probe: ReleaseStore.install reads the digest models/production's checksums.json claims before
    anything else (file_digest); a named pipe there blocked its open() for ever and `release install` hung. Any
    path that is no regular file is an OSError at once now: treated as no claim, and the release is installed."""
    from pipeline.release_store import ReleaseStore

    root, _ = trained_project
    store = ReleaseStore(tmp_path / "models")
    digest = store.add_release("1", root / "models/candidate")
    production = store.variant_dir("production")
    production.mkdir(parents=True)
    os.mkfifo(production / "checksums.json")
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(digest=store.install("production", "1")), daemon=True)
    worker.start()
    worker.join(20)  # without the fix it never ends
    assert done.get("digest") == digest and verify_bundle(production) == digest


def test_writing_is_atomic(trained_project):
    root, _ = trained_project
    target = root / "models/candidate"
    before = verify_bundle(target)
    bundle = load_bundle(target)

    def failing_export(directory):
        (directory / "graph.json").write_text("{half")
        raise RuntimeError("export interrupted")

    with pytest.raises(RuntimeError, match="export interrupted"):
        write_bundle(target, write_graph=failing_export, metadata=bundle.metadata, snapshot=bundle.snapshot,
                     training_stats=bundle.training_stats)
    assert verify_bundle(target) == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["candidate"]


def test_before_swap_sees_the_complete_bundle_and_a_failure_there_installs_nothing(trained_project):
    """train records the candidate in MLflow in ``before_swap`` (the run FINISHED, tagged with the digest): the
    staged bundle it gets is the complete, readable one the swap installs, and if recording fails the target stays
    as it was (a candidate is never in place without its run)."""
    import stat

    root, _ = trained_project
    target = root / "models/candidate"
    before = verify_bundle(target)
    bundle = load_bundle(target)
    graph = {name: (target / name).read_bytes() for name in ("graph.json", "weights.npz")}

    def copy_graph(directory):
        for name, data in graph.items():
            (directory / name).write_bytes(data)

    seen = []

    def failing_record(staged, digest):
        seen.append((staged != target, verify_bundle(staged) == digest,
                     all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in staged.iterdir())))
        raise RuntimeError("MLflow refused")

    args = {"write_graph": copy_graph, "metadata": bundle.metadata, "snapshot": bundle.snapshot,
            "training_stats": bundle.training_stats}
    with pytest.raises(RuntimeError, match="MLflow refused"):
        write_bundle(target, before_swap=failing_record, **args)
    assert seen == [(True, True, True)]
    assert verify_bundle(target) == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["candidate"]
    staged_digests = []
    digest = write_bundle(target, before_swap=lambda staged, d: staged_digests.append(d), **args)
    assert staged_digests == [digest] == [verify_bundle(target)]


def test_copy_installs_a_verified_identical_bundle(trained_project):
    root, _ = trained_project
    digest = copy_bundle(root / "models/candidate", root / "models/production")
    assert verify_bundle(root / "models/production") == digest == verify_bundle(root / "models/candidate")


def test_every_file_of_a_written_or_installed_bundle_is_world_readable(trained_project):
    """The serving container runs as another user (uid 10001): the engine's export (mkstemp: 0600), a copy that
    keeps its source's mode and a private umask must not leave a bundle file it cannot read."""
    import os

    from pipeline.bundle import GRAPH_FILES
    from pipeline.serving_bundle import roll_forward

    def modes(directory):
        return {p.name: oct(p.stat().st_mode & 0o777) for p in [directory, *directory.iterdir()]}

    def all_readable(directory):
        return {name: "0o644" for name in modes(directory)} | {directory.name: "0o755"}

    root, summary = trained_project
    candidate = root / "models/candidate"
    assert modes(candidate) == all_readable(candidate)  # written by train: the engine's export inside
    for name in GRAPH_FILES:
        (candidate / name).chmod(0o600)  # as candidates written before, or by a private umask, have them
    umask = os.umask(0o077)
    try:
        roll_forward(root, candidate, root / "models/production", summary["digest"])  # what promote installs
        copy_bundle(root / "models/production", root / "models/releases/1")  # what release installs
    finally:
        os.umask(umask)
    for installed in (root / "models/production", root / "models/releases/1"):
        assert modes(installed) == all_readable(installed)


@pytest.mark.parametrize("change", ["format", "dense", "categorical"])
def test_a_bundle_of_other_code_is_refused_saying_what_to_do(trained_project, change):
    """A bundle another version of Shelfcast wrote (an upgrade left models/ as the older code wrote it), intact but
    of another format or features, is refused naming the file, the code that made it and what to run: before, the
    line named the mismatch only (`bundle.json: dense feature names differ from this code's features`)."""
    from pipeline.atomic import file_digest

    root, _ = trained_project
    bundle_dir = root / "models/candidate"
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    meta["git_commit"] = "907d910705a9030be11db4d3cc20097d5b5cdcb1"
    if change == "format":
        meta["format"] = 2
    elif change == "dense":
        meta["input_schema"]["dense"] = meta["input_schema"]["dense"][:-1]
    else:
        meta["input_schema"]["categorical"] = meta["input_schema"]["categorical"][:-1]
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))
    checksums = json.loads((bundle_dir / "checksums.json").read_text())
    checksums["files"]["bundle.json"] = file_digest(bundle_dir / "bundle.json")  # intact, as that code wrote it
    (bundle_dir / "checksums.json").write_text(json.dumps(checksums))
    with pytest.raises(BundleError) as refused:
        load_bundle(bundle_dir)
    message = str(refused.value)
    assert message.startswith(f"{bundle_dir / 'bundle.json'}: ")
    assert "made by other code (git_commit 907d910705a9)" in message
    assert "`dvc repro`, then `make promote`" in message


def test_a_data_file_that_is_no_archive_under_rewritten_checksums_is_one_bundle_error(trained_project, tmp_path):
    """Found by a probe: history.npz replaced by bytes that are no zip archive, its digest rewritten in checksums.json
    (a hand edit, or a bundle planted in a shared registry): the load raised zipfile.BadZipFile, a traceback where
    every other damage is one BundleError naming the file (engine/saver.py read_npz: ValueError naming it)."""
    import hashlib
    import shutil

    root, _ = trained_project
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(root / "models/candidate", bundle_dir)
    damaged = b"PK\x03\x04" + bytes(300)
    (bundle_dir / "history.npz").write_bytes(damaged)
    manifest = json.loads((bundle_dir / "checksums.json").read_text())
    manifest["files"]["history.npz"] = hashlib.sha256(damaged).hexdigest()
    (bundle_dir / "checksums.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"history.npz: unreadable \(.*history.npz is not a readable .npz archive"):
        load_bundle(bundle_dir)
