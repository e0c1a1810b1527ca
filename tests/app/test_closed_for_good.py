"""A store closed for good (prepare.closed_after_days) is answered closed by the app, not forecast.

Prepare ended the grid of a store with no row on train.csv's last 16 sales days at its last row, but the bundle did
not know: the app served such a store an ordinary forecast (from its last days' zeros, or from days before it shut),
the form offered it as any other, and the canary check's replay of production forecast it too. Now train and
promote's roll-forward record each store closed for good and its last sales date in bundle.json (closed_stores),
and every later day is answered 0 units with store_closed and a closed_reason naming that date.

A real tiny project (tests/app/tiny_bundle.py's params, 3 stores): store 2 sells nothing after 2017-07-01 (45 sales
days before the data's end: closed), store 3 nothing after 2017-08-05 (10 sales days: not closed, shut or late).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.bundle import BundleError, load_bundle
from pipeline.bundle_checks import load_servable

CLOSED, STOPPED_LATE, OPEN = 2, 3, 1
CLOSED_AFTER, STOPPED_AFTER = "2017-07-01", "2017-08-05"
REASON = f"the store has closed for good: no sales since {CLOSED_AFTER}"


def _tiny_params() -> dict:
    spec = importlib.util.spec_from_file_location("shelfcast_tests_tiny_bundle",
                                                  Path(__file__).with_name("tiny_bundle.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return copy.deepcopy(module.TINY_APP_PARAMS)


@pytest.fixture(scope="module")
def closing_project(tmp_path_factory) -> Path:
    """download -> (stores 2 and 3 stop) -> prepare -> split -> train -> promote's roll-forward, as `dvc repro`."""
    from pipeline import download, prepare, split, train
    from pipeline.params import data_params, prepare_params, split_params
    from pipeline.serving_bundle import roll_forward

    root = tmp_path_factory.mktemp("closing")
    params = _tiny_params()
    params["data"]["synthetic"]["stores"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    data = root / "data"
    download.download(data_params(params), raw_dir=data / "raw", partial_dir=data / ".downloads", progress=False)
    rows = pd.read_csv(data / "raw" / "train.csv", dtype=str)
    stopped = ((rows["store_nbr"] == str(CLOSED)) & (rows["date"] > CLOSED_AFTER)) | \
              ((rows["store_nbr"] == str(STOPPED_LATE)) & (rows["date"] > STOPPED_AFTER))
    rows[~stopped].to_csv(data / "raw" / "train.csv", index=False)
    prepare.prepare(data / "raw", data / "prepared", prepare_params(params), progress=False)
    split.split(data / "prepared" / "sales.parquet", data / "split", split_params(params), progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        train.run(root, quiet=True)
    roll_forward(root, root / "models/candidate", root / "models/production", candidate_digest="test")
    return root


def _request(model, store: int, date: str) -> dict:
    snapshot = model.bundle.snapshot
    item = int(snapshot.item_nbr[list(snapshot.store_nbr).index(store)])
    return {"store_nbr": store, "item_nbr": item, "date": date, "onpromotion": False}


def test_the_bundles_list_the_store_closed_for_good_and_not_the_one_that_stopped_lately(closing_project):
    for name in ("candidate", "production"):
        metadata = json.loads((closing_project / "models" / name / "bundle.json").read_text())
        assert metadata["closed_stores"] == [{"store_nbr": CLOSED, "last_sales_date": CLOSED_AFTER}], name
    production = load_bundle(closing_project / "models/production")
    assert production.snapshot.closed_stores == {CLOSED: (pd.Timestamp(CLOSED_AFTER) - pd.Timestamp(0)).days}
    assert {CLOSED, STOPPED_LATE, OPEN} <= set(production.snapshot.stores["store_nbr"].tolist())
    # drift's reference forecasts are the model's: the closed store's requests are answered by the rule (drift
    # leaves those answers out of the live side); their features stay, as requests all the same
    for bundle in (load_bundle(closing_project / "models/candidate"), production):
        served = bundle.training_stats["served"]
        closed_rows = round(served["categorical"]["store_nbr"]["top"][str(CLOSED)] * served["rows"])
        assert closed_rows > 0 and served["prediction_units"]["count"] == served["rows"] - closed_rows


def test_the_api_and_the_form_answer_it_closed_and_forecast_the_others(closing_project, make_app):
    jsonschema = pytest.importorskip("jsonschema")
    served = make_app(closing_project / "models/production")
    first = served.model.first_date.isoformat()
    instances = [_request(served.model, store, first) for store in (OPEN, CLOSED, STOPPED_LATE)]
    response = served.client.post("/api/v1/predict", json={"instances": instances})
    assert response.status_code == 200, response.get_data(as_text=True)
    document = served.client.get("/api/v1/openapi.json").get_json()
    jsonschema.validate(response.get_json(), {**document["components"]["schemas"]["PredictResponse"],
                                              "components": document["components"]})
    open_store, closed, stopped_late = response.get_json()["predictions"]
    assert closed["unit_sales"] == 0 and closed["expected_units"] == 0, closed
    assert closed["store_closed"] is True and closed["closed_reason"] == REASON, closed
    for answer in (open_store, stopped_late):
        assert "store_closed" not in answer and "closed_reason" not in answer and answer["unit_sales"] > 0, answer
    assert "closed_reason" in document["components"]["schemas"]["Prediction"]["properties"]
    model = served.client.get("/api/v1/model").get_json()
    for store in model["stores"]:  # (the Model schema's "nullable" is OpenAPI's, not JSON Schema's)
        jsonschema.validate(store, {**document["components"]["schemas"]["Store"], "additionalProperties": False})
    closed_since = {store["store_nbr"]: store.get("closed_since") for store in model["stores"]}
    assert closed_since == {OPEN: None, CLOSED: CLOSED_AFTER, STOPPED_LATE: None}
    page = served.client.get("/").get_data(as_text=True)
    options = dict(re.findall(r'<option value="(\d+)">(.*?)</option>', page))
    assert options[str(CLOSED)].endswith(f"closed for good, no sales since {CLOSED_AFTER}"), options
    assert "closed" not in options[str(OPEN)] + options[str(STOPPED_LATE)]
    item = instances[1]["item_nbr"]
    page = served.client.get(f"/?store={CLOSED}&item={item}&date={first}").get_data(as_text=True)
    [closed_text] = re.findall(r'<p id="forecast-closed">(.*?)</p>', page, re.S)
    assert REASON in closed_text
    example = document["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert example["instances"][0]["store_nbr"] != CLOSED  # the example request is for a store that is open
    events = {e["inputs"]["store_nbr"]: e["output"] for e in served.events() if e["inputs"]["date"] == first}
    # drift and release read store_closed; the reason tells a dashboard a store closed for good from a holiday
    assert events[CLOSED] == {"unit_sales": 0.0, "expected_units": 0.0, "store_closed": True, "closed_reason": REASON}


def test_the_canary_replay_of_production_knows_it_closed(closing_project):
    """The release check pairs a canary's forecasts with production's replayed ones: production answers the closed
    store 0 by the rule, so its requests are closed ones, never paired with a forecast."""
    from pipeline.release_replay import ProductionReplay

    bundle = load_bundle(closing_project / "models/production")
    first = str(pd.Timestamp(int(bundle.snapshot.calendar_days[0]), unit="D").date())
    item = int(bundle.snapshot.item_nbr[list(bundle.snapshot.store_nbr).index(CLOSED)])
    closed, opened = (CLOSED, item, first, False), (OPEN, item, first, False)
    replay = ProductionReplay(closing_project / "models/production")
    units = replay.forecasts([closed, opened])
    assert closed not in units and closed in replay.closed
    assert opened in units and opened not in replay.closed


def _rewrite_bundle_json(bundle_dir: Path, change) -> None:
    from pipeline.atomic import file_digest

    metadata = json.loads((bundle_dir / "bundle.json").read_text())
    change(metadata)
    (bundle_dir / "bundle.json").write_text(json.dumps(metadata))
    checksums = json.loads((bundle_dir / "checksums.json").read_text())
    checksums["files"]["bundle.json"] = file_digest(bundle_dir / "bundle.json")
    (bundle_dir / "checksums.json").write_text(json.dumps(checksums))


def test_a_bundle_written_before_the_field_loads_with_no_store_closed(closing_project, tmp_path, make_app):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(closing_project / "models/production", old)
    _rewrite_bundle_json(old, lambda metadata: metadata.pop("closed_stores"))
    assert load_servable(old).snapshot.closed_stores == {}
    served = make_app(old)
    answer = served.client.post("/api/v1/predict", json={"instances": [
        _request(served.model, CLOSED, served.model.first_date.isoformat())]}).get_json()["predictions"][0]
    assert "store_closed" not in answer  # what it knew: forecast as before


@pytest.mark.parametrize("value, match", [
    ({"2": "2017-07-01"}, "closed_stores is a dict, expected a list of"),
    ([{"store_nbr": "2", "last_sales_date": "2017-07-01"}], "closed_stores entry .* is not a list of"),
    ([{"store_nbr": 2, "last_sales_date": "July"}], "closed_stores entry .* is not a list of"),
    ([{"store_nbr": 2, "last_sales_date": "2017-07-01"}] * 2, "closed_stores names store 2 twice"),
    ([{"store_nbr": 2, "last_sales_date": "2017-09-01"}], "closed_stores: store 2 has its last sales date after"),
    # found by a probe: loaded, and every forecast of a store that sold until the origin was 0, "closed for good"
    ([{"store_nbr": OPEN, "last_sales_date": "0001-01-01"}],
     f"closed_stores: store {OPEN}'s last sales date 0001-01-01 is before sales in its history"),
    ([{"store_nbr": STOPPED_LATE, "last_sales_date": "2017-08-01"}],
     f"closed_stores: store {STOPPED_LATE}'s last sales date 2017-08-01 is before sales in its history"),
])
def test_a_malformed_closed_stores_field_is_refused_naming_it(closing_project, tmp_path, value, match):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(closing_project / "models/production", damaged)
    _rewrite_bundle_json(damaged, lambda metadata: metadata.update(closed_stores=value))
    with pytest.raises(BundleError, match=f"bundle.json: {match}"):
        load_bundle(damaged)


def test_every_request_has_the_features_and_answer_of_the_path_before_the_kept_series_columns(closing_project):
    """The app's features of a request (pipeline/served_features.py: each store×item's window columns kept) against
    the batch build of the same rows, and its answers against the row-by-row path's, for every store×item of the
    bundle and some without history, on each horizon day with and without promotion: the store closed for good,
    the one that stopped lately and the closed days (Christmas in the tiny data's horizon or not) alike."""
    from app.predictor import load_model
    from pipeline.bundle_checks import served_forecast

    model = load_model(closing_project / "models/production")
    snapshot, bundle = model.bundle.snapshot, model.bundle
    series = list(zip(snapshot.store_nbr.tolist(), snapshot.item_nbr.tolist()))
    series += [(store, int(snapshot.items["item_nbr"][k])) for k, store in enumerate((OPEN, CLOSED, STOPPED_LATE))
               if (store, int(snapshot.items["item_nbr"][k])) not in series]
    days = snapshot.calendar_days.tolist()
    rows = [(store, item, day, (j + k) % 2) for j, (store, item) in enumerate(series) for k, day in enumerate(days)]
    stores, items, row_days, flags = (list(column) for column in zip(*rows))
    _, batch, _ = served_forecast(bundle, model.closed_days, stores, items, row_days, flags)  # the batch build
    for round_, step in ((0, 1), (1, 5)):  # a miss, then a hit
        for k, (store, item, day, flag) in list(enumerate(rows))[::step]:
            got = model.forecast([store], np.asarray([item]), np.asarray([day]), [flag])
            want, _, closed = served_forecast(bundle, model.closed_days, [store], [item], [day], [flag])
            assert got.features.dense.tobytes() == batch.dense[k:k + 1].tobytes(), (round_, store, item, day, flag)
            assert got.features.categorical.tolist() == batch.categorical[k:k + 1].tolist()
            assert got.units.tobytes() == want["prediction"].tobytes() and got.store_closed.tolist() == closed.tolist()
    assert len(model.served_features) == len(series)  # every row took the kept columns' path
    assert any(model.closed_days.of([CLOSED], [days[-1]]))
