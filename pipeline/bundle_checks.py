"""Whether a verified bundle can serve: the one check the app's load and every install run first.

Checksums (pipeline/bundle.py) prove that a bundle is the one that was written, not that it can serve: a
diverged training run, a bad export or a hand edit whose checksums were made to match passes them with a NaN
weight, an embedding row that makes one item's forecasts astronomical, or an impossible day of history. The app
refuses such a bundle at load (the previous model keeps serving); ``make fetch-model``, ``release sync`` (and
every release install) and promote run the same check on the bundle before it is installed, so none of them
installs a bundle the app would refuse, which after a restart left nothing serving.

Imports numpy and the serving code (bundle, features, closed_days) only: the app imports it.
"""

from __future__ import annotations

import datetime as dt
import json
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.bundle import EXPECTED_OUTPUT, PREDICTION_OUTPUT, BundleError, ModelBundle, load_bundle
from pipeline.closed_days import ClosedDays
from pipeline.features import CATEGORICAL_FIELDS, HOLIDAY_FLAGS, UNKNOWN_ID, FeatureMatrix, rows_from_snapshot
from pipeline.served_features import ServedFeatures

MAX_ABS_WEIGHT = 1e6  # trained weights are O(1..100); a larger one is a broken training run or a damaged file
MAX_UNITS = 1e6  # units of one item in one store on one day; Favorita's largest day is below 1e5
PLAUSIBILITY_ROWS = 256  # rows of the sample forecast again with each categorical field at its unseen-value id
NUMBER_COLUMNS = {"items": ("class", "perishable"), "stores": ("cluster",)}  # read as numbers by the app's catalog
# bundle.json's fields GET /api/v1/model answers as they are (app/predictor.py describe), metrics aside: of those, a
# top-level one that is no finite number is left out there, as training may write one NaN
ANSWERED_FIELDS = ("created", "code_version", "data_version", "git_commit", "mlflow_run_id")


def damaged_file(path: Path) -> Path | None:
    """The first file of the bundle at ``path`` that is no readable archive (*.npz) or JSON object (*.json), if any:
    what a load that failed with an error that names no file stumbled on (a file damaged before its checksum was
    taken passes verification)."""
    for file in sorted(path.glob("*.npz")):
        try:
            with zipfile.ZipFile(file) as archive:
                if archive.testzip() is None:
                    continue
        except (OSError, zipfile.BadZipFile):
            pass
        return file
    for file in sorted(path.glob("*.json")):
        try:
            if isinstance(json.loads(file.read_text(encoding="utf-8")), dict):
                continue
        except (OSError, ValueError, RecursionError):  # RecursionError: nested too deep to parse
            pass
        return file
    return None


def cannot_be_loaded(path: Path, exc: Exception) -> BundleError:
    """The refusal of a bundle whose load failed with an error that is no BundleError, naming the damaged file."""
    return BundleError(f"{damaged_file(path) or path}: cannot be loaded ({type(exc).__name__}: {exc})")


def load_servable(path: Path | str) -> ModelBundle:
    """Load a bundle and ``check_servable`` it; any doubt is a BundleError naming the file and the reason."""
    path = Path(path)
    try:
        bundle = load_bundle(path)
    except BundleError:
        raise
    except Exception as exc:  # a file damaged before its checksum was taken: BadZipFile, EOFError, a JSON list ...
        raise cannot_be_loaded(path, exc) from exc
    check_servable(bundle, path)
    return bundle


def check_servable(bundle: ModelBundle, path: Path, closed_days: ClosedDays | None = None) -> None:
    """BundleError unless the loaded ``bundle`` can serve: it lists stores, items and horizon days, its history is
    possible (``check_history``), the tables and fields the app reads are what it reads them as, the model warms up
    and forecasts one row, and every weight and forecast is plausible (``check_plausible``)."""
    snapshot = bundle.snapshot
    if not np.size(snapshot.stores["store_nbr"]) or not np.size(snapshot.items["item_nbr"]) \
            or np.size(snapshot.calendar_days) == 0:
        raise BundleError(f"{path}: the bundle lists no stores, items or horizon days; nothing could be forecast")
    check_history(bundle, path)
    check_described(bundle, path)
    check_embeddings_fit(bundle, path)
    try:
        closed_days = ClosedDays(snapshot) if closed_days is None else closed_days
        warm_up = getattr(bundle.model, "warm_up", None)
        if warm_up is not None:
            warm_up()  # compile/load the fast path now, not on the first request
        store, item = snapshot.stores["store_nbr"][0], snapshot.items["item_nbr"][0]
        outputs = served_forecast(bundle, closed_days, [store], [item], [snapshot.calendar_days[0]], [0])[0]
        units = outputs[PREDICTION_OUTPUT]
    except Exception as exc:  # anything a request would have hit: refuse the bundle instead
        raise BundleError(f"{path}: a warm-up prediction failed ({type(exc).__name__}: {exc})") from exc
    try:
        check_plausible(bundle, path, closed_days)  # first: a non-finite weight is named (relu passes NaN on)
    except BundleError:
        raise
    except Exception as exc:  # a forecast of the sample failed: what a request would have hit
        raise BundleError(f"{path}: a sample forecast failed ({type(exc).__name__}: {exc})") from exc
    if units.shape != (1,) or not np.all(np.isfinite(units)):
        raise BundleError(f"{path}: a warm-up prediction gave {units!r}, expected one finite number")


def served_forecast(bundle: ModelBundle, closed_days: ClosedDays, store_nbr, item_nbr, days, onpromotion,
                    snapshot=None, served: ServedFeatures | None = None) -> tuple[dict[str, np.ndarray],
                                                                                 FeatureMatrix, np.ndarray]:
    """Every output for request rows as the app answers them (app/predictor.py serves through this, the checks
    forecast with it): the model's, 0 on a day the store is closed; with the features and the closed flags.
    ``snapshot``: the bundle's own unless given (the app passes one with its item table cut to the request);
    ``served``: the bundle's ServedFeatures (the app's), whose features of a request's rows are the same bits."""
    matrix = None if served is None else served.matrix(store_nbr, item_nbr, days, onpromotion)
    if matrix is None:
        rows = rows_from_snapshot(bundle.snapshot if snapshot is None else snapshot, np.asarray(store_nbr, np.int64),
                                  np.asarray(item_nbr, np.int64), np.asarray(days, np.int64).astype("datetime64[D]"),
                                  np.asarray(onpromotion, np.uint8))
        matrix = bundle.features(rows)
    outputs = bundle.forecast_features(matrix)
    closed = closed_days.of(store_nbr, days)  # a day the store was closed a year earlier (Christmas): no model's
    if closed.any():
        outputs = {name: np.where(closed, 0, units).astype(units.dtype) for name, units in outputs.items()}
    return outputs, matrix, closed


def check_plausible(bundle: ModelBundle, path: Path, closed_days: ClosedDays | None = None) -> None:
    """BundleError unless every weight is finite and moderate and forecasts are finite, >= 0 and <= MAX_UNITS for
    every store and every item (each once, over the horizon days and both promotion flags: one item's embedding
    row alone can make only its forecasts absurd) and, on a sample of those rows, for each categorical field at
    the id its embedding keeps for values unseen in training (a store or an item that first sold after the model
    was trained is forecast with it): such a bundle passes its checksums yet would serve NaN or absurd numbers."""
    for op in bundle.model.graph.get_operations():
        for name, value in op.attrs.items():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size:
                if not np.all(np.isfinite(value)):
                    raise BundleError(f"{path / 'weights.npz'}: weight {op.name}.{name} has non-finite values")
                largest = float(np.max(np.abs(value)))
                if largest > MAX_ABS_WEIGHT:
                    raise BundleError(f"{path / 'weights.npz'}: weight {op.name}.{name} has |value| {largest:.3g} > "
                                      f"{MAX_ABS_WEIGHT:g}")
    snapshot = bundle.snapshot
    stores = np.unique(np.asarray(snapshot.stores["store_nbr"], np.int64)).tolist()
    items = np.unique(np.asarray(snapshot.items["item_nbr"], np.int64)).tolist()
    rows = max(len(items), len(stores))  # the longer list each once, the other spread over them
    pick = lambda values: [values[i * len(values) // rows] for i in range(rows)]  # noqa: E731 spread over all
    days = np.asarray(snapshot.calendar_days, np.int64)
    store_of, item_of, day_of = pick(stores), pick(items), [int(days[i % days.size]) for i in range(rows)]
    closed_days = ClosedDays(snapshot) if closed_days is None else closed_days
    forecast, matrix, _ = served_forecast(bundle, closed_days, store_of, item_of, day_of,
                                          [i % 2 for i in range(rows)])

    def check(outputs: dict, what: str = "") -> None:
        for name, units in outputs.items():
            bad = ~np.isfinite(units) | (units < 0) | (units > MAX_UNITS)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                where = "" if what else \
                    f" for store {store_of[k]} item {item_of[k]} on {_as_date(day_of[k]).isoformat()}"
                raise BundleError(f"{path}: {int(bad.sum())} of {units.size} sample forecasts{what} give implausible "
                                  f"{name} (e.g. {units[k]!r}{where}; expected finite, 0..{MAX_UNITS:g})")

    check({("expected units" if name == EXPECTED_OUTPUT else "units"): units for name, units in forecast.items()})
    spread = np.unique(np.linspace(0, rows - 1, min(rows, PLAUSIBILITY_ROWS)).astype(np.int64))  # over all stores
    dense, categorical = matrix.dense[spread], matrix.categorical[spread]
    for j, unseen_field in enumerate(CATEGORICAL_FIELDS):
        unseen = categorical.copy()
        unseen[:, j] = UNKNOWN_ID
        out = bundle.forecast_features(FeatureMatrix(dense=dense, categorical=unseen))
        check({("expected units" if name == EXPECTED_OUTPUT else "units"): units for name, units in out.items()},
              f" with a {unseen_field} unseen in training")


def check_embeddings_fit(bundle: ModelBundle, path: Path) -> None:
    """BundleError unless each categorical field's embedding table in the graph has one row per id of the bundle's
    vocabulary of that field (its values + the id of values unseen in training), as train builds it: the weights of a
    model trained on another data set beside this one's vocabularies (or the reverse) look a store or item up in a row
    another one trained, and serve finite, moderate, wrong forecasts (or fail on an id past the table's end)."""
    tables = {op.name: op.attrs.get("value") for op in bundle.model.graph.get_operations()}
    unfit = []
    for field in CATEGORICAL_FIELDS:
        table = tables.get(f"embedding_{field}/embeddings")
        if isinstance(table, np.ndarray) and table.ndim == 2 and table.shape[0] != bundle.vocab.size(field):
            unfit.append(f"embedding_{field} has {table.shape[0]} rows, the vocabulary {field} "
                         f"{bundle.vocab.size(field)} ids")
    if unfit:
        raise BundleError(f"{path / 'graph.json'}: the model's embeddings do not fit the bundle's vocabularies "
                          f"(bundle.json), one row per id, the unseen-value id included: {'; '.join(unfit)}; the "
                          f"weights and the vocabularies come from different training runs or data sets")


def check_history(bundle: ModelBundle, path: Path) -> None:
    """BundleError unless every day of the history the bundle ships (its forecasts' input) is a finite number of units
    from 0 to MAX_UNITS, as features require, and every promotion and holiday flag (history.npz ``promo``,
    calendar.npz ``holidays``) is 0 or 1: one impossible day otherwise failed every forecast of its store×item (a
    500), or the load itself with an error that was no BundleError (a worker that could not start); a finite absurd
    one (1e30 units, a flag of 255) loaded and served that series' forecasts from it, the sample check seeing only
    the series it forecasts."""
    snapshot = bundle.snapshot
    sales = np.asarray(snapshot.sales)
    bad = ~np.isfinite(sales) | (sales < 0) | (sales > MAX_UNITS)
    if bad.any():
        series, day = (int(k) for k in np.argwhere(bad)[0])
        count = int(bad.any(axis=1).sum())
        store, item = int(snapshot.store_nbr[series]), int(snapshot.item_nbr[series])
        raise BundleError(f"{path / 'history.npz'}: {count} store×item histor{'y holds' if count == 1 else 'ies hold'} "
                          f"impossible sales (e.g. store {store} item {item}, day {day} of {sales.shape[1]}: "
                          f"{float(sales[series, day])!r}; expected finite, 0..{MAX_UNITS:g})")
    promo = np.asarray(snapshot.promo)
    bad = (promo != 0) & (promo != 1)
    if bad.any():
        series, day = (int(k) for k in np.argwhere(bad)[0])
        store, item = int(snapshot.store_nbr[series]), int(snapshot.item_nbr[series])
        raise BundleError(f"{path / 'history.npz'}: promo holds {int(bad.sum())} value(s) that are no flag (e.g. "
                          f"store {store} item {item}, day {day} of {promo.shape[1]}: {promo[series, day].item()!r}; "
                          "expected 0 or 1)")
    holidays = np.asarray(snapshot.calendar_holidays)
    bad = (holidays != 0) & (holidays != 1)
    if bad.any():
        row, day, flag = (int(k) for k in np.argwhere(bad)[0])
        raise BundleError(f"{path / 'calendar.npz'}: holidays holds {int(bad.sum())} value(s) that are no flag (e.g. "
                          f"store {int(snapshot.stores['store_nbr'][row])}, {_as_date(snapshot.calendar_days[day])}, "
                          f"{HOLIDAY_FLAGS[flag]}: {holidays[row, day, flag].item()!r}; expected 0 or 1)")


def check_described(bundle: ModelBundle, path: Path) -> None:
    """BundleError unless what the app builds its catalog and GET /api/v1/model from reads as it is read there: the
    item and store attributes it takes as numbers are finite whole numbers, the forecast origin and horizon are
    calendar dates, bundle.json's ``metrics`` is an object of name to value, and no field GET /api/v1/model answers
    holds a NaN or Infinity (a top-level metric aside: left out there) that would make its answer invalid JSON."""
    snapshot = bundle.snapshot
    for table, names in NUMBER_COLUMNS.items():
        for name in names:
            column = np.asarray(getattr(snapshot, table)[name])
            if column.dtype.kind not in "biuf" or (column.dtype.kind == "f" and not np.all(
                    np.isfinite(column) & (column == np.round(column)))):
                raise BundleError(f"{path / 'history.npz'}: {table}.{name} must be whole numbers (got {column.dtype}"
                                  f"{'' if column.dtype.kind not in 'f' else ' with a value that is none'})")
    for day in (snapshot.origin_day, snapshot.calendar_days[0], snapshot.calendar_days[-1]):
        try:
            _as_date(day)
        except (OverflowError, ValueError):
            raise BundleError(f"{path / 'calendar.npz'}: day number {int(day)} is no calendar date") from None
    metrics = bundle.metadata.get("metrics")
    if metrics and not isinstance(metrics, Mapping):
        raise BundleError(f"{path / 'bundle.json'}: metrics is a {type(metrics).__name__}, expected an object of "
                          "metric name to value")
    answered = {name: bundle.metadata.get(name) for name in ANSWERED_FIELDS}
    answered["metrics"] = {name: value for name, value in (metrics or {}).items() if not isinstance(value, float)}
    field = not_json_number(answered)
    if field is not None:
        raise BundleError(f"{path / 'bundle.json'}: {field} holds NaN or Infinity, which JSON cannot carry: GET "
                          "/api/v1/model would answer invalid JSON (only a top-level metric that is no finite number "
                          "is left out, as training may write one)")


def not_json_number(value, path: str = "") -> str | None:
    """The field path (``data_version.a``, ``metrics.m[0]``) of the first float in ``value`` that JSON cannot carry
    (NaN, ±Infinity: Python's json writes them as bare tokens, which a strict parser refuses), if any."""
    if isinstance(value, float):
        return None if np.isfinite(value) else path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = not_json_number(item, f"{path}[{key}]" if isinstance(value, list) else
                                f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def _as_date(day_number) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(day_number))
