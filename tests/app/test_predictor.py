"""Hot reload: a newly promoted bundle is served without a restart or a failed request; a corrupt one is refused."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import threading
import time
import zipfile

import numpy as np
import pytest

from engine.saver import npz_bytes
from pipeline.atomic import file_digest
from pipeline.bundle import copy_bundle, verify_bundle


def assert_documented_status(answer: dict) -> None:
    """A /readyz answer holds only what the OpenAPI document's Status schema describes, each field of its type: the
    route's fallback, missing and refused were answered, and documented nowhere."""
    import copy

    import jsonschema

    from app.openapi import openapi_document

    schema = copy.deepcopy(openapi_document(1000, 1 << 20)["components"]["schemas"]["Status"])
    for node in [schema, *schema["properties"].values()]:
        if node.get("type") == "object":
            node["additionalProperties"] = False
    jsonschema.validate(answer, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def predict_body(model) -> dict:
    return {"instances": [{"store_nbr": next(iter(model.catalog.stores)), "item_nbr": next(iter(model.catalog.items)),
                           "date": model.first_date.isoformat(), "onpromotion": False}]}


def test_a_newly_promoted_bundle_is_served_without_a_restart(served, production_dir, app_bundles):
    old = served.model
    assert served.state.predictor.check_now() is False  # nothing changed yet
    copy_bundle(app_bundles[1], production_dir)
    assert served.state.predictor.check_now() is True
    new = served.model
    assert new.version != old.version and new.bundle.digest != old.bundle.digest
    response = served.client.post("/api/v1/predict", json=predict_body(new))
    assert response.json["model"]["version"] == new.version
    assert served.client.get("/api/v1/model").json["version"] == new.version


def test_requests_notice_a_new_bundle_by_themselves(make_app, production_dir, app_bundles):
    served = make_app(production_dir, reload_interval_s=0.05)
    old_version = served.model.version
    copy_bundle(app_bundles[1], production_dir)
    deadline = time.monotonic() + 30
    while served.client.get("/api/v1/model").json["version"] == old_version:
        assert time.monotonic() < deadline, "the new bundle was not picked up within 30 s"
        time.sleep(0.05)


def corrupt_weights(bundle_dir) -> None:
    path = bundle_dir / "weights.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_bundle_is_refused_and_the_old_model_keeps_serving(served, production_dir, caplog):
    old = served.model
    corrupt_weights(production_dir)
    with caplog.at_level(logging.ERROR, logger="app.predictor"):
        assert served.state.predictor.check_now() is False
        assert served.state.predictor.check_now() is False  # the same broken state is not retried
    assert served.model is old
    refusals = [r for r in caplog.records if "refusing model bundle" in r.getMessage()]
    assert len(refusals) == 1 and "checksum mismatch" in refusals[0].getMessage()
    assert old.version in refusals[0].getMessage()
    response = served.client.post("/api/v1/predict", json=predict_body(old))
    assert response.status_code == 200 and response.json["model"]["version"] == old.version
    assert served.client.get("/readyz").status_code == 200


def test_a_bundle_with_valid_checksums_but_a_broken_graph_is_refused(served, production_dir, app_bundles, tmp_path):
    old = served.model
    broken = tmp_path / "broken"
    copy_bundle(app_bundles[1], broken)
    graph = json.loads((broken / "graph.json").read_text())
    graph["ops"] = graph["ops"][: len(graph["ops"]) // 2]  # outputs now name tensors that do not exist
    (broken / "graph.json").write_text(json.dumps(graph))
    manifest = json.loads((broken / "checksums.json").read_text())
    manifest["files"]["graph.json"] = file_digest(broken / "graph.json")
    (broken / "checksums.json").write_text(json.dumps(manifest))
    copy_bundle(broken, production_dir)  # passes verification: the checksums match
    assert served.state.predictor.check_now() is False
    assert served.model is old
    assert "graph" in served.state.predictor.last_error
    copy_bundle(app_bundles[1], production_dir)  # a good bundle afterwards is taken
    assert served.state.predictor.check_now() is True
    assert served.state.predictor.last_error is None



def rewritten(source, target, name: str, content: bytes):
    """A copy of bundle ``source`` with file ``name`` replaced by ``content``, its checksum made to match."""
    copy_bundle(source, target)
    (target / name).write_bytes(content)
    manifest = json.loads((target / "checksums.json").read_text())
    manifest["files"][name] = file_digest(target / name)
    (target / "checksums.json").write_text(json.dumps(manifest))
    return target


def npz_changed(change):
    """A damage: the .npz's arrays with ``change`` applied to them (a dict, in place), written as a bundle writes."""
    def damage(data: bytes) -> bytes:
        with np.load(io.BytesIO(data)) as archive:
            arrays = {k: archive[k] for k in archive.files}
        change(arrays)
        return npz_bytes(arrays)
    return damage


@pytest.mark.parametrize(("name", "damage", "named"), [
    ("history.npz", lambda data: data[: len(data) // 2], "history.npz"),
    ("calendar.npz", lambda data: b"", "calendar.npz"),
    ("bundle.json", lambda data: b"[1, 2]", "bundle.json"),
    ("training_stats.json", lambda data: b"[1, 2]", "training_stats.json"),
    ("bundle.json", lambda data: json.dumps({**json.loads(data), "metrics": [1]}).encode(), "bundle.json"),
    ("bundle.json", lambda data: b"[" * 100_000 + b"]" * 100_000, "bundle.json"),  # RecursionError escaped
    ("training_stats.json", lambda data: b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "training_stats.json"),
    # named 'bundle.json/training_stats.json is not valid JSON' before, whichever of the two it was
    ("bundle.json", lambda data: data[: len(data) // 2], "/bundle.json: is not valid JSON"),
    ("training_stats.json", lambda data: data[: len(data) // 2], "/training_stats.json: is not valid JSON"),
    ("training_stats.json", lambda data: b"\xff" + data, "/training_stats.json: is not valid JSON"),
    ("history.npz", npz_changed(lambda a: a.update({"items.family": a["items.family"][:-1]})),
     "history.npz: items.family has shape"),  # loaded: its last item was left out of the catalog without a word
    ("history.npz", npz_changed(lambda a: a.update({k: a[k][::-1].copy() for k in ("store_nbr", "item_nbr")})),
     "history.npz: store_nbr, item_nbr are not in strictly increasing order"),  # loaded: lookups found other rows
    ("history.npz", npz_changed(lambda a: a.update({"store_nbr": a["store_nbr"].astype(np.float64)})),
     "history.npz: store_nbr must be whole numbers"),
    ("calendar.npz", npz_changed(lambda a: a.update({"days": a["days"][:3]})),
     "calendar.npz: days must be the"),  # loaded: 3 forecastable days, holidays of 16
    # refused naming the directory alone ("cannot be loaded (ValueError: cannot convert float NaN to integer)"):
    # the catalog, built before the check that names the column, failed on it first
    ("history.npz", npz_changed(lambda a: a.update({"items.class": np.where(np.arange(a["items.class"].size) == 0,
                                                                            np.nan, a["items.class"])})),
     "history.npz: items.class must be whole numbers"),
    ("history.npz", npz_changed(lambda a: a.update({"stores.cluster": np.where(
        np.arange(a["stores.cluster"].size) == 0, np.inf, a["stores.cluster"])})),
     "history.npz: stores.cluster must be whole numbers"),
], ids=["history.npz cut short", "calendar.npz empty", "bundle.json a list", "training_stats.json a list",
        "metrics a list", "bundle.json nested too deep", "training_stats.json nested too deep",
        "bundle.json cut short", "training_stats.json cut short", "training_stats.json not UTF-8",
        "an item column cut short", "series out of order", "store numbers not whole", "calendar days cut short",
        "an item class NaN", "a store cluster infinite"])
def test_a_damaged_file_with_a_matching_checksum_is_a_refusal_naming_it_never_a_crash(served, production_dir,
                                                                                      app_bundles, tmp_path, name,
                                                                                      damage, named):
    """Found by a probe: a bundle file damaged before its checksum was taken (cut short, empty, a JSON value of
    another shape) raised BadZipFile, EOFError or AttributeError from the load, not a BundleError: gunicorn stopped
    ("Worker failed to boot") instead of answering /readyz 503 and falling back to the last good release, a hot
    reload logged a traceback at every check; or it loaded (training_stats.json or metrics a list) and every
    GET /api/v1/model was a 500."""
    old = served.model
    bad = rewritten(app_bundles[1], tmp_path / "bad", name, damage((app_bundles[1] / name).read_bytes()))
    copy_bundle(bad, production_dir)
    assert served.state.predictor.check_now() is False
    assert served.model is old
    assert named in served.state.predictor.last_error, served.state.predictor.last_error
    assert served.client.get("/api/v1/model").status_code == 200

def test_a_zip_bomb_in_the_history_is_refused_before_it_is_inflated(app_bundles, tmp_path):
    """Found by a probe: a history.npz rewritten with deflated members (its checksum made to match) was inflated in
    full before anything was checked: a 2.2 MB file took the load to a 2.2 GB peak RSS, a larger one kills the
    worker (the OOM killer) at every start instead of /readyz naming the file. Refused now from the zip headers."""
    from app.predictor import load_model
    from pipeline.bundle import BundleError

    with np.load(app_bundles[1] / "history.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["sales"] = np.zeros((1 << 18, 56), np.float32)  # 56 MiB of zeros, 56 KiB deflated
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            archive.writestr(f"{name}.npy", member.getvalue())
    bad = rewritten(app_bundles[1], tmp_path / "bad", "history.npz", buf.getvalue())
    with pytest.raises(BundleError, match=r"bad/history.npz: unreadable \(member \S+\.npy is compressed"):
        load_model(bad)


def test_an_app_started_on_a_corrupt_bundle_is_not_ready_and_says_why(make_app, production_dir):
    corrupt_weights(production_dir)
    served = make_app(production_dir)
    response = served.client.get("/readyz")
    assert response.status_code == 503 and "checksum mismatch" in response.json["reason"]


def test_reinstalling_the_same_bundle_keeps_the_loaded_model(served, production_dir, app_bundles):
    old = served.model
    copy_bundle(app_bundles[0], production_dir)  # a new directory, the same bundle
    assert served.state.predictor.check_now() is False
    assert served.model is old


def test_no_request_fails_while_bundles_are_swapped_under_load(make_app, production_dir, app_bundles):
    served = make_app(production_dir, reload_interval_s=0.0)
    versions_seen: set[str] = set()
    failures: list[str] = []
    stop = threading.Event()
    body = predict_body(served.model)

    def hammer() -> None:
        client = served.app.test_client()
        while not stop.is_set():
            response = client.post("/api/v1/predict", json=body)
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.get_data(as_text=True)[:200]}")
            else:
                versions_seen.add(response.json["model"]["version"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for swap in range(6):
            copy_bundle(app_bundles[(swap + 1) % 2], production_dir)
            time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == []
    assert len(versions_seen) == 2, versions_seen


def test_a_new_bundle_is_looked_for_only_once_the_interval_has_passed(production_dir, app_bundles):
    from app.predictor import Predictor

    now = [100.0]
    predictor = Predictor(production_dir, reload_interval_s=60.0, clock=lambda: now[0])
    assert predictor.check_now() is True
    old = predictor.model
    copy_bundle(app_bundles[1], production_dir)
    now[0] += 59.0
    for _ in range(20):
        assert predictor.model is old  # not due yet: no check, the old model
        time.sleep(0.01)
    now[0] += 1.0
    deadline = time.monotonic() + 30
    while predictor.model is old:  # due: the next request starts a background check
        assert time.monotonic() < deadline, "no reload within 30 s of the interval passing"
        time.sleep(0.02)
    assert predictor.model.version != old.version


def test_served_forecasts_equal_the_bundles_own_for_every_store_and_item(served):
    """The app's faster row gathering (item table cut to the request) changes no feature and no prediction."""
    import numpy as np

    from pipeline.features import rows_from_snapshot

    model = served.model
    stores, items = np.meshgrid(sorted(model.catalog.stores), sorted(model.catalog.items), indexing="ij")
    stores, items = stores.ravel(), items.ravel()
    days = model.horizon_days[np.arange(stores.size) % model.horizon_days.size]
    promo = (np.arange(stores.size) % 3 == 0).astype(np.uint8)
    ours = model.forecast(stores, items, days, promo)
    full = model.bundle.features(rows_from_snapshot(model.bundle.snapshot, stores, items,
                                                    days.astype("datetime64[D]"), promo))
    np.testing.assert_array_equal(ours.features.dense, full.dense)
    np.testing.assert_array_equal(ours.features.categorical, full.categorical)
    np.testing.assert_array_equal(ours.units, model.bundle.predict_features(full))
    one = model.forecast(stores[-1:], items[-1:], days[-1:], promo[-1:])
    np.testing.assert_allclose(one.units, ours.units[-1:], rtol=1e-5)  # one row runs the engine's compiled path


def test_a_replaced_model_is_collected_even_when_the_heap_was_frozen(production_dir, app_bundles):
    """gunicorn workers freeze their start-up heap (app/gunicorn_conf.py); a model swapped out later
    must still be freed, reference cycles and all."""
    import gc
    import weakref

    from app.predictor import Predictor

    predictor = Predictor(production_dir, reload_interval_s=60.0)
    assert predictor.check_now() is True
    gc.collect()
    gc.freeze()
    try:
        old = weakref.ref(predictor.model.bundle.model.graph)  # the graph sits in reference cycles
        copy_bundle(app_bundles[1], production_dir)
        assert predictor.check_now() is True
        gc.collect()
        assert old() is not None  # frozen: a plain collection leaves it
        predictor.check_now()  # the next check collects what the swap dropped
        assert old() is None
    finally:
        gc.unfreeze()


def make_unreadable(path, how: str) -> None:
    """A bundle file the server's user cannot read: mode 000 (not for root, who reads anything), or a directory
    in the file's place (open() fails with an OSError for root too, so this runs in CI as root)."""
    if how == "mode 000":
        if os.geteuid() == 0:
            pytest.skip("root reads a file of mode 000; the directory case covers root")
        path.chmod(0)
    else:
        path.unlink()
        path.mkdir()


@pytest.mark.parametrize("how", ["a directory in its place", "mode 000"])
def test_a_worker_starting_on_an_unreadable_bundle_serves_the_last_good_release(make_app, production_dir, how):
    """An OSError while loading (PermissionError from the checksums) is a refusal like a corrupt bundle: the
    worker serves the newest good release instead of failing to start, and /readyz says why."""
    from pipeline.release_store import ReleaseStore

    store = ReleaseStore(production_dir.parent)
    store.add_release("1", production_dir)
    (store.release_dir("1") / ".good").touch()
    make_unreadable(production_dir / "weights.npz", how)
    served = make_app(production_dir)  # before: the OSError escaped create_app, and gunicorn's workers died
    assert served.model is not None and served.state.predictor.serving_fallback
    ready = served.client.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"
    assert ready.json["fallback"]["serving"] == "models/releases/1"  # named from the store (a public probe)
    reason = ready.json["refused"]["reason"]
    assert "models/production/weights.npz" in reason and "cannot be read" in reason, reason
    assert_documented_status(ready.json)


def test_a_release_that_stood_in_for_production_is_let_go_once_production_serves(make_app, production_dir,
                                                                                 app_bundles):
    """Found by a probe: a worker that started while production could not be loaded served the last good
    release, and once production loaded it kept that release's whole model in memory for its life, beside
    production's (a second bundle per worker: 414 MB on disk at P3's size). Now it is collected, frozen heap
    and all (gunicorn workers freeze the heap they start with, the fallback included)."""
    import gc
    import weakref

    from pipeline.release_store import ReleaseStore

    store = ReleaseStore(production_dir.parent)
    store.add_release("1", production_dir)
    (store.release_dir("1") / ".good").touch()
    corrupt_weights(production_dir)
    served = make_app(production_dir)
    assert served.state.predictor.serving_fallback
    fallback = weakref.ref(served.model.bundle.model.graph)  # the graph sits in reference cycles
    gc.collect()
    gc.freeze()  # as gunicorn_conf.post_worker_init
    try:
        copy_bundle(app_bundles[1], production_dir)
        assert served.state.predictor.check_now() is True
        assert served.client.get("/healthz").status_code == 200
        assert not served.state.predictor.serving_fallback
        deadline = time.monotonic() + 10
        while fallback() is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # collected by a thread of its own (Predictor.forget)
        assert fallback() is None, "the release's model is still in memory while production serves"
        assert "fallback" not in served.client.get("/readyz").json
    finally:
        gc.unfreeze()


def test_two_threads_asking_for_the_model_as_production_returns_let_the_release_go_once(make_app, production_dir,
                                                                                       app_bundles, monkeypatch):
    """A health probe asks for the model beside the request whose turn it is (app/request_buffer.py), so two threads
    may ask at once just as production loads again: the release that stood in for it is let go by one of them, once,
    and neither fails (before, each let it go: the check and the use of the fallback were two reads of it)."""
    from pipeline.release_store import ReleaseStore

    store = ReleaseStore(production_dir.parent)
    store.add_release("1", production_dir)
    (store.release_dir("1") / ".good").touch()
    corrupt_weights(production_dir)
    served = make_app(production_dir)
    predictor = served.state.predictor
    assert predictor.serving_fallback
    copy_bundle(app_bundles[1], production_dir)
    assert predictor.primary.check_now() is True
    fallback, let_go = predictor._fallback, []
    forget = fallback.forget

    def slow_forget() -> bool:
        let_go.append(threading.get_ident())
        time.sleep(0.3)  # both threads are past their look at the fallback by now
        return forget()

    monkeypatch.setattr(fallback, "forget", slow_forget)
    models, failures = [], []

    def ask() -> None:
        try:
            models.append(predictor.model)
        except Exception as exc:  # noqa: BLE001 - any failure of either thread is the finding
            failures.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not failures and len(models) == 2 and all(m is predictor.primary.model for m in models)
    assert len(let_go) == 1 and not predictor.serving_fallback and predictor.fallback_path is None


def test_readyz_says_why_a_bundle_was_refused_while_the_old_model_serves(served, production_dir, app_bundles):
    import datetime as dt

    old = served.model
    corrupt_weights(production_dir)
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    assert served.state.predictor.check_now() is False and served.model is old
    ready = served.client.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"
    assert ready.json["model"]["version"] == old.version
    refused = ready.json["refused"]
    assert refused["bundle"] == "models/production" and "weights.npz: checksum mismatch" in refused["reason"]
    assert dt.datetime.fromisoformat(refused["at"]) >= before
    assert_documented_status(ready.json)
    copy_bundle(app_bundles[1], production_dir)  # a good bundle: the refusal is over
    assert served.state.predictor.check_now() is True
    assert "refused" not in served.client.get("/readyz").json


def test_a_bundle_refused_as_unreadable_is_tried_again_once_its_modes_are_fixed(production_dir):
    """A refused directory is not retried until its signature changes; fixing modes changes no size or mtime."""
    from app.predictor import directory_signature

    refused = directory_signature(production_dir)
    (production_dir / "graph.json").chmod(0o600)
    private = directory_signature(production_dir)
    (production_dir / "graph.json").chmod(0o644)
    assert refused != private != directory_signature(production_dir)


def test_a_bundle_whose_folder_cannot_be_reached_has_a_signature_and_its_check_does_not_raise(production_dir,
                                                                                              monkeypatch):
    """A folder above the bundle that may not be searched makes stat() itself fail: the check refuses or
    loads, it never raises out of the worker's start (it did: UnboundLocalError)."""
    from pathlib import Path

    from app.predictor import Predictor, directory_signature

    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if self == production_dir:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    assert directory_signature(production_dir) == ("unreachable",)
    Predictor(production_dir).check_now()


def test_a_bundle_removed_while_it_loads_is_no_refusal(tmp_path, app_bundles, monkeypatch, caplog):
    """A release ending a candidate while a worker loaded it: the files went mid-load and the worker logged
    'refusing model bundle ... unreadable' (and remembered the refusal), as for a broken bundle."""
    import shutil

    from app import predictor as predictor_module
    from pipeline.bundle import BundleError

    candidate = tmp_path / "canary"
    copy_bundle(app_bundles[0], candidate)
    real = predictor_module.load_model

    def removed_mid_load(path, series_cache_entries):
        shutil.rmtree(path)
        raise BundleError(f"{path}/calendar.npz: unreadable ([Errno 2] No such file or directory)")

    monkeypatch.setattr(predictor_module, "load_model", removed_mid_load)
    predictor = predictor_module.Predictor(candidate)
    with caplog.at_level(logging.INFO, logger="app.predictor"):
        assert predictor.check_now() is False
    assert predictor.last_error is None and predictor._refused is None and predictor.model is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "was removed while it was being loaded" in caplog.text
    monkeypatch.setattr(predictor_module, "load_model", real)
    copy_bundle(app_bundles[0], candidate)  # installed again: loads
    assert predictor.check_now() is True


def _replaced_during(function_name: str, directory, source):
    """A profile hook that replaces ``directory`` by a copy of ``source`` (promote's atomic install) as the loader's
    first call of ``function_name`` returns: a promote, or a deploy tool's swap, landing in the middle of a load."""
    import sys

    swapped = []

    def hook(frame, event, arg):
        if event == "return" and frame.f_code.co_name == function_name and not swapped:
            swapped.append(True)
            sys.setprofile(None)
            copy_bundle(source, directory)

    return hook, swapped


@pytest.mark.parametrize("when", ["file_digest", "_verify_bundle"])
def test_a_bundle_replaced_while_it_loads_is_loaded_again_never_refused(tmp_path, app_bundles, caplog, when):
    """A promote racing a hot reload: the worker read part of one bundle and part of the other. Found by a probe
    (15 s of installs back to back under a reloading Predictor): 76 'refusing model bundle' errors, 3 claiming a
    'checksum mismatch ...; the bundle was modified or corrupted' or a corrupt weights file, for two good bundles;
    /readyz reported the refusal, and a worker starting then served the fallback release or nothing."""
    import sys

    from app.predictor import Predictor

    production = tmp_path / "models" / "production"
    copy_bundle(app_bundles[0], production)
    predictor = Predictor(production)
    hook, swapped = _replaced_during(when, production, app_bundles[1])  # mid-verify, or between verify and load
    sys.setprofile(hook)
    try:
        with caplog.at_level(logging.INFO, logger="app.predictor"):
            assert predictor.check_now() is True
    finally:
        sys.setprofile(None)
    assert swapped, "the directory was not replaced during the load: the test shows nothing"
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert predictor.last_error is None and predictor._refused is None
    assert predictor.model.bundle.digest == verify_bundle(app_bundles[1])  # the bundle there now, read whole
    assert "was replaced while it was being loaded" in caplog.text


def test_a_production_folder_deleted_while_serving_is_reported_and_its_model_keeps_serving(served, production_dir,
                                                                                           app_bundles, caplog):
    """Found by a probe under gunicorn: models/production deleted while serving, the workers kept serving the model
    loaded from it (right) but said nothing anywhere: no log line, /readyz plain 'ready', though a worker started
    then (a SIGHUP, a crash's replacement) would serve the newest good release or nothing. Now /readyz adds
    ``missing`` and the log says so once, until a bundle is there again."""
    import shutil

    old = served.model
    shutil.rmtree(production_dir)
    with caplog.at_level(logging.INFO, logger="app.predictor"):
        for _ in range(2):
            assert served.state.predictor.check_now() is False
    assert served.model is old
    assert served.client.post("/api/v1/predict", json=predict_body(old)).status_code == 200
    assert served.client.get("/api/v1/model").json["version"] == old.version
    ready = served.client.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready", ready.json
    assert ready.json["missing"]["bundle"] == "models/production" and ready.json["missing"]["since"], ready.json
    assert_documented_status(ready.json)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is gone; still serving" in warnings[0], warnings
    copy_bundle(app_bundles[1], production_dir)  # restored: loaded, nothing missing
    assert served.state.predictor.check_now() is True
    assert "missing" not in served.client.get("/readyz").json


def test_a_good_release_this_code_refuses_is_not_loaded_again_at_every_request(make_app, tmp_path, app_bundles,
                                                                               caplog):
    """Found by a probe: models/production absent (a fresh host mid-install, a folder deleted before a restart) and
    the only good release one this code refuses (another code's bundle format, after an upgrade): every request
    verified (hashed) that release and loaded it again, each GET /readyz 17 ms for the tiny bundle and two ERROR
    lines (50 requests: 103 lines); at Favorita's size, a full bundle load a request. Now a release refused stays
    refused until its folder changes, and a fallback is looked for at most once per reload interval."""
    from pipeline.release_store import ReleaseStore

    production = tmp_path / "models" / "production"
    store = ReleaseStore(production.parent)
    store.add_release("1", app_bundles[0])
    metadata = json.loads((store.release_dir("1") / "bundle.json").read_text())
    rewritten(app_bundles[0], tmp_path / "other-code", "bundle.json", json.dumps({**metadata, "format": 2}).encode())
    shutil.rmtree(store.release_dir("1"))
    shutil.copytree(tmp_path / "other-code", store.release_dir("1"))
    (store.release_dir("1") / ".good").touch()
    with caplog.at_level(logging.INFO):
        served = make_app(production, reload_interval_s=0.5)
        for _ in range(20):
            assert served.client.get("/readyz").status_code == 503
    refusals = [r for r in caplog.records
                if "refusing model bundle" in r.getMessage() and "releases/1" in r.getMessage()]
    assert len(refusals) == 1, len(refusals)
    shutil.rmtree(store.release_dir("1"))  # mended: a good release the app can serve
    store.add_release("1", app_bundles[1])
    (store.release_dir("1") / ".good").touch()
    deadline = time.monotonic() + 10
    while served.client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served.state.predictor.serving_fallback and served.model.bundle.digest == verify_bundle(app_bundles[1])
