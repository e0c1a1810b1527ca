"""A bundle whose checksums are right but whose weights or forecasts are absurd is refused at load.

Such a bundle (a diverged training run, a bad export) would otherwise serve NaN-driven or
astronomically large forecasts; the previous good model must keep serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.atomic import file_digest
from pipeline.bundle import copy_bundle
from tests.app.tiny_bundle import tampered_bundle, tensor_of


def largest_matrix(weights: dict) -> str:
    """The name of an embedding-like table (2-D, most rows)."""
    return max((name for name, w in weights.items() if w.ndim == 2), key=lambda name: weights[name].shape[0])


def set_row(value: float):
    def change(weights: dict) -> None:
        weights[largest_matrix(weights)][0, :] = value
    return change


def inflate_output_bias(weights: dict) -> None:
    """Moderate weights (|w| = 40) whose forecasts explode: the last layer's bias, in log units."""
    last_bias = [name for name, w in weights.items() if w.shape == (1,)][-1]
    weights[last_bias][:] = 40.0


@pytest.mark.parametrize(("change", "reason"), [
    (set_row(np.nan), "non-finite"),
    (set_row(1e30), "|value| 1e+30"),
    (inflate_output_bias, "implausible units"),
])
def test_an_implausible_bundle_is_refused_and_the_old_model_keeps_serving(served, production_dir, app_bundles,
                                                                          tmp_path, change, reason):
    old = served.model
    bad = tampered_bundle(app_bundles[1], tmp_path / "bad", change)
    copy_bundle(bad, production_dir)  # passes checksum verification
    assert served.state.predictor.check_now() is False
    assert served.model is old
    assert reason in served.state.predictor.last_error
    body = {"instances": [{"store_nbr": next(iter(old.catalog.stores)), "item_nbr": next(iter(old.catalog.items)),
                           "date": old.first_date.isoformat(), "onpromotion": False}]}
    response = served.client.post("/api/v1/predict", json=body)
    assert response.status_code == 200 and response.json["model"]["version"] == old.version


def test_an_app_started_on_an_implausible_bundle_is_not_ready(make_app, production_dir, app_bundles, tmp_path):
    copy_bundle(tampered_bundle(app_bundles[0], tmp_path / "bad", set_row(np.inf)), production_dir)
    response = make_app(production_dir).client.get("/readyz")
    assert response.status_code == 503 and "non-finite" in response.json["reason"]


def test_one_item_with_absurd_forecasts_is_refused_however_many_items_there_are(served, production_dir, app_bundles,
                                                                                tmp_path, monkeypatch):
    """Found by a probe: the check forecast a sample of at most 256 items, so with more items than that (Favorita's
    4,100: the bundle `dvc repro` trains) one item's embedding row at 1e3, well within the weight limit, loaded
    and that item was forecast 7.2e10 units. A sample of 4 rows stands in for 256 here (the tiny bundle has 37)."""
    import pipeline.bundle_checks

    monkeypatch.setattr(pipeline.bundle_checks, "PLAUSIBILITY_ROWS", 4)
    items = sorted(served.model.catalog.items)
    victim = items[1]  # not among the 4 a sample spread over the items would take (items 0, 9, 18, 27)
    row = served.model.bundle.vocab.ids("item_nbr")[str(victim)]
    table = tensor_of(app_bundles[1], "embedding_item_nbr/embeddings")

    def inflate(weights: dict) -> None:
        weights[table][row] = np.where(weights[table][row] >= 0, 1e3, -1e3)

    copy_bundle(tampered_bundle(app_bundles[1], tmp_path / "bad", inflate), production_dir)
    assert served.state.predictor.check_now() is False
    assert "implausible units" in served.state.predictor.last_error
    assert f"item {victim}" in served.state.predictor.last_error, served.state.predictor.last_error


@pytest.mark.parametrize("field", ["store_nbr", "item_nbr", "family", "city"])
def test_a_bundle_absurd_only_for_values_unseen_in_training_is_refused(served, production_dir, app_bundles, tmp_path,
                                                                       field):
    """Found by a probe: each embedding keeps row 0 for values training did not see (a store or an item that first
    sold after the model was trained, which the API forecasts), and no store or item of the check's sample uses
    it: a store table with 1e5 in that row loaded, and a new store was forecast 7.2e10 units."""
    table = tensor_of(app_bundles[1], f"embedding_{field}/embeddings")

    def inflate(weights: dict) -> None:
        weights[table][0] = 1e5

    copy_bundle(tampered_bundle(app_bundles[1], tmp_path / "bad", inflate), production_dir)
    assert served.state.predictor.check_now() is False
    assert f"a {field} unseen in training" in served.state.predictor.last_error, served.state.predictor.last_error


def tampered_history(source: Path, target: Path, series: int, value: float) -> tuple[int, int]:
    """A copy of ``source`` whose history.npz has ``value`` on one day of ``series`` (checksums made to match);
    that series' (store, item)."""
    copy_bundle(source, target)
    with np.load(target / "history.npz", allow_pickle=False) as data:
        arrays = {name: data[name].copy() for name in data.files}
    arrays["sales"][series, 10] = value
    np.savez(target / "history.npz", **arrays)
    manifest = json.loads((target / "checksums.json").read_text())
    manifest["files"]["history.npz"] = file_digest(target / "history.npz")
    (target / "checksums.json").write_text(json.dumps(manifest))
    return int(arrays["store_nbr"][series]), int(arrays["item_nbr"][series])


@pytest.mark.parametrize("value", [np.nan, np.inf, -5.0, 1e30, 1.5e6])
@pytest.mark.parametrize("series", [40, -1], ids=["a series the check's sample misses", "the last series"])
def test_a_bundle_with_an_impossible_sales_figure_in_its_history_is_refused(served, production_dir, app_bundles,
                                                                             tmp_path, value, series):
    """Found by a probe: the history a bundle ships is its forecasts' input, and one NaN (or inf, or negative) day in
    one store×item's history either loaded, and every forecast of that series was a 500 (API and form), or raised
    from the plausibility check a FeatureInputError, not a BundleError: gunicorn stopped ("Worker failed to boot")
    instead of answering /readyz 503, and a hot reload logged a traceback at every check. A finite absurd day (1e30
    units, or above the 10^6 a forecast may be) loaded, and that series was forecast from it (78 units from 1e30)."""
    old = served.model
    store, item = tampered_history(app_bundles[1], tmp_path / "bad", series, value)
    copy_bundle(tmp_path / "bad", production_dir)
    assert served.state.predictor.check_now() is False  # refused (a BundleError), the old model serving
    assert served.model is old
    reason = served.state.predictor.last_error
    assert "history.npz" in reason and f"store {store} item {item}" in reason, reason
    assert served.state.predictor.check_now() is False and served.state.predictor.last_error == reason  # not retried


def tampered_flag(source: Path, target: Path, file: str, array: str, at: tuple, value, dtype=None) -> None:
    """A copy of ``source`` whose ``file`` has ``value`` at ``at`` of ``array`` (cast to ``dtype`` first, if given),
    checksums made to match."""
    copy_bundle(source, target)
    with np.load(target / file, allow_pickle=False) as data:
        arrays = {name: data[name].copy() for name in data.files}
    if dtype is not None:
        arrays[array] = arrays[array].astype(dtype)
    arrays[array][at] = value
    np.savez(target / file, **arrays)
    manifest = json.loads((target / "checksums.json").read_text())
    manifest["files"][file] = file_digest(target / file)
    (target / "checksums.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("file, array, at, value, dtype, named", [
    ("history.npz", "promo", (40, slice(None)), 255, None, "promo holds 56 value(s) that are no flag"),
    ("history.npz", "promo", (-1, 3), -1, np.int8, "promo holds 1 value(s) that are no flag"),
    ("history.npz", "promo", (0, 0), 2 ** 40, np.int64, "promo holds 1 value(s) that are no flag"),
    ("calendar.npz", "holidays", (slice(None),), 255, None, "holidays holds 160 value(s) that are no flag"),
    ("calendar.npz", "holidays", (-1, -1, 0), -5, np.int64, "holidays holds 1 value(s) that are no flag"),
], ids=["promo 255", "promo -1", "promo 2**40", "holidays 255", "holidays -5"])
def test_a_bundle_with_a_promotion_or_holiday_flag_that_is_no_flag_is_refused(served, production_dir, app_bundles,
                                                                              tmp_path, file, array, at, value, dtype,
                                                                              named):
    """Found by a probe: a promotion flag of 255 in a store×item's history (the share of promotion days fed to the
    model as 255) or a holiday flag of 255 or -5 loaded, the one series' or store's forecasts made from it."""
    old = served.model
    tampered_flag(app_bundles[1], tmp_path / "bad", file, array, at, value, dtype)
    copy_bundle(tmp_path / "bad", production_dir)
    assert served.state.predictor.check_now() is False  # refused, the old model serving
    assert served.model is old
    reason = served.state.predictor.last_error
    assert f"{file}: {named}" in reason and "expected 0 or 1" in reason, reason


def test_an_app_started_on_a_bundle_with_a_nan_in_its_history_is_not_ready(make_app, production_dir, app_bundles,
                                                                           tmp_path):
    tampered_history(app_bundles[0], tmp_path / "bad", -1, np.nan)
    copy_bundle(tmp_path / "bad", production_dir)
    response = make_app(production_dir).client.get("/readyz")
    assert response.status_code == 503 and "history.npz" in response.json["reason"]


@pytest.fixture(scope="module")
def foreign_bundle(tmp_path_factory) -> Path:
    """A real bundle trained on another data set: 4 stores and ~90 items where the app's bundles have 2 and ~40."""
    import copy

    from tests.app.tiny_bundle import TINY_APP_PARAMS, build_tiny_project

    params = copy.deepcopy(TINY_APP_PARAMS)
    params["data"]["synthetic"].update(stores=4, items=90, seed=12)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return build_tiny_project(tmp_path_factory.mktemp("foreign"), params)


def with_model_of(data_from: Path, model_from: Path, target: Path) -> Path:
    """``data_from``'s bundle (vocabularies, history, calendar) with ``model_from``'s graph and weights, every
    checksum made to match: a model installed beside another data set's vocabularies."""
    copy_bundle(data_from, target)
    for name in ("weights.npz", "graph.json"):
        (target / name).write_bytes((model_from / name).read_bytes())
    manifest = json.loads((target / "checksums.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = file_digest(target / name)
    (target / "checksums.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize("model_of", ["foreign", "ours"], ids=["a foreign model, ours the vocabularies",
                                                              "our model, foreign vocabularies"])
def test_a_model_whose_embeddings_do_not_fit_the_bundles_vocabularies_is_refused(served, production_dir, app_bundles,
                                                                                  foreign_bundle, tmp_path, model_of):
    """Found by a probe: the weights of a model trained on another data set (4 stores, 90 items) with this data set's
    vocabularies (2 stores, 37 items) loaded and served: store 1 was looked up in row 1 of a 5-row table that the
    other data set's store 1 had trained. Every forecast was finite and moderate, so no plausibility check could
    tell; the reverse (more ids than rows) was refused only by a warm-up's GatherV2 error that named no field."""
    old = served.model
    data, model = (app_bundles[1], foreign_bundle) if model_of == "foreign" else (foreign_bundle, app_bundles[1])
    copy_bundle(with_model_of(data, model, tmp_path / "mixed"), production_dir)
    assert served.state.predictor.check_now() is False
    assert served.model is old
    reason = served.state.predictor.last_error
    assert "graph.json" in reason and "embedding_store_nbr" in reason and "vocabulary store_nbr" in reason, reason
