"""The model bundle: the one contract between training and serving.

A directory, no pickle anywhere (every ``.npz`` is loaded with
``allow_pickle=False``)::

    graph.json            frozen inference graph (engine export; inputs "dense" and
                          "categorical_<field>", outputs "prediction" (median-like units,
                          what the log-error metric scores) and "expected_units" (bias-
                          corrected mean units; bundles before it lack this output))
    weights.npz           its constants (engine export)
    bundle.json           name, version, created, code/data versions, params, metrics,
                          input schema, feature spec, vocabularies, forecast origin, horizon,
                          closed_stores (each store closed for good by the origin and its last
                          sales date, [{"store_nbr": 4, "last_sales_date": "2016-08-31"}]:
                          pipeline/history.py ``closed_stores``; bundles before it lack the
                          field and are read as none closed)
    history.npz           per store×item sales/promotion window up to the origin,
                          item and store attributes
    calendar.npz          holiday flags per store for the horizon days
    training_stats.json   training-data statistics for drift checks
    checksums.json        sha256 of every file above

``load_bundle`` verifies every checksum (and that no file is missing or
unlisted) before reading anything, and refuses a bundle it cannot trust or
read (a file the server's user may not read is a BundleError too). Bundles
are written into a temporary sibling directory and renamed into place, so a
reader never sees half a bundle; every file of a written or installed bundle
is world-readable (0644, the directory 0755): the serving container runs as
another user (uid 10001). Imports numpy, the engine and
the standard library only: this is the serving code path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from engine.saver import npz_bytes, read_npz
from pipeline.atomic import atomic_directory, file_digest, make_readable_by_all
from pipeline.blas import use_one_blas_thread

from pipeline.features import (
    CATEGORICAL_FIELDS,
    HOLIDAY_FLAGS,
    ITEM_FIELDS,
    STORE_FIELDS,
    FeatureMatrix,
    FeatureRows,
    FeatureSpec,
    HistorySnapshot,
    Vocabularies,
    build_features,
    dense_feature_names,
    rows_from_snapshot,
)

BUNDLE_FORMAT = 1
GRAPH_FILES = ("graph.json", "weights.npz")
DATA_FILES = ("bundle.json", "history.npz", "calendar.npz", "training_stats.json")
CHECKSUMS_FILE = "checksums.json"
DENSE_INPUT, CATEGORICAL_INPUT, PREDICTION_OUTPUT = "dense", "categorical", "prediction"
EXPECTED_OUTPUT = "expected_units"
CLOSED_STORES_FIELD = "closed_stores"  # bundle.json: stores closed for good (HistorySnapshot.closed_stores)


class BundleError(ValueError):
    """A bundle that is missing, incomplete, tampered with or of an unknown format."""


def _write_file(path: Path, data: bytes) -> None:
    """``data`` to a bundle file being staged; an OSError names that file. A write refused for want of room (ENOSPC,
    a file size limit's EFBIG) names none, and the stage said only ``models/candidate: File too large``, not which of
    its files (history.npz grows with the series: 1.5 MB at 4,800 of them, where the other files stayed under 0.3)."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def _write_json(path: Path, data: Any) -> None:
    _write_file(path, (json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n").encode("utf-8"))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _snapshot_arrays(snapshot: HistorySnapshot) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    history = {"store_nbr": snapshot.store_nbr.astype(np.int32), "item_nbr": snapshot.item_nbr.astype(np.int32),
               "sales": snapshot.sales.astype(np.float32), "promo": snapshot.promo.astype(np.uint8),
               "origin_day": np.asarray(snapshot.origin_day, np.int64)}
    history.update({f"items.{k}": np.asarray(v) for k, v in snapshot.items.items()})
    history.update({f"stores.{k}": np.asarray(v) for k, v in snapshot.stores.items()})
    calendar = {"days": snapshot.calendar_days.astype(np.int64),
                "holidays": snapshot.calendar_holidays.astype(np.uint8),
                "store_nbr": np.asarray(snapshot.stores["store_nbr"], np.int32)}
    for name, array in list(history.items()) + list(calendar.items()):
        if array.dtype.kind == "O":
            raise BundleError(f"snapshot array {name}: object dtype cannot be stored without pickle")
    return history, calendar


def write_bundle(target: Path | str, *, write_graph: Callable[[Path], None], metadata: Mapping[str, Any],
                 snapshot: HistorySnapshot, training_stats: Mapping[str, Any],
                 before_swap: Callable[[Path, str], None] | None = None) -> str:
    """Write a complete bundle to ``target`` atomically; returns its digest (sha256 of checksums.json).

    ``before_swap(staged, digest)`` is called once the bundle is complete in its staging directory, and the bundle
    is swapped in only after it returns: what must be true of any bundle at ``target`` (train: its MLflow run is
    finished and tagged with the digest) is made true first, so a kill cannot leave the bundle without it. If it
    raises, ``target`` is left as it was."""
    with atomic_directory(target) as staging:  # files 0644: the serving container runs as another user
        write_graph(staging)
        for name in GRAPH_FILES:
            if not (staging / name).is_file():
                raise BundleError(f"the graph export did not write {name}")
        history, calendar = _snapshot_arrays(snapshot)
        _write_file(staging / "history.npz", npz_bytes(history))
        _write_file(staging / "calendar.npz", npz_bytes(calendar))
        meta = dict(metadata)
        meta["format"] = BUNDLE_FORMAT
        meta["forecast_origin"] = str(np.datetime64(int(snapshot.origin_day), "D"))
        meta[CLOSED_STORES_FIELD] = [{"store_nbr": int(store), "last_sales_date": str(np.datetime64(int(day), "D"))}
                                     for store, day in sorted(snapshot.closed_stores.items())]
        _write_json(staging / "bundle.json", meta)
        _write_json(staging / "training_stats.json", training_stats)
        listed = GRAPH_FILES + DATA_FILES
        extra = sorted(p.name for p in staging.iterdir() if p.name not in listed)
        if extra:
            raise BundleError(f"unexpected file(s) in the bundle: {', '.join(extra)}")
        _write_json(staging / CHECKSUMS_FILE, {"files": {name: file_digest(staging / name) for name in listed}})
        digest = file_digest(staging / CHECKSUMS_FILE)
        if before_swap is not None:
            make_readable_by_all(staging)  # as it will be at ``target``: what reads it there reads the same files
            before_swap(staging, digest)
        return digest


def copy_bundle(source: Path | str, target: Path | str) -> str:
    """Install a verified copy of a bundle at ``target`` atomically (promotion); returns its digest."""
    source, target = Path(source), Path(target)
    digest = verify_bundle(source)
    with atomic_directory(target) as staging:  # a copy keeps its source's mode: made 0644 there
        for name in GRAPH_FILES + DATA_FILES + (CHECKSUMS_FILE,):
            shutil.copy2(source / name, staging / name)
        if verify_bundle(staging) != digest:
            raise BundleError(f"{target}: copy does not match {source}")
    return digest


@contextlib.contextmanager
def _unreadable_is_refused(path: Path):
    """An OSError while reading a bundle (a file the server's user may not read, a directory where a file should
    be) is a BundleError naming the file and the reason: the bundle is refused like a corrupt one, and the
    caller (the app) keeps or falls back to a good model instead of failing."""
    try:
        yield
    except OSError as exc:
        raise BundleError(f"{exc.filename or path}: cannot be read ({exc.strerror or exc})") from None


def verify_bundle(path: Path | str) -> str:
    """Check every file against checksums.json; returns the bundle digest or raises BundleError."""
    path = Path(path)
    with _unreadable_is_refused(path):
        return _verify_bundle(path)


def _verify_bundle(path: Path) -> str:
    if not path.is_dir():
        raise BundleError(f"{path}: no model bundle here (run the train stage, or promote a model)")
    manifest_path = path / CHECKSUMS_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{path}: {CHECKSUMS_FILE} is missing; refusing a bundle that cannot be verified")
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if not isinstance(files, dict):
        raise BundleError(f"{manifest_path}: unreadable manifest (files is a {type(files).__name__}, expected an "
                          "object of file name to sha256)")
    expected = set(GRAPH_FILES + DATA_FILES)
    if set(files) != expected:
        raise BundleError(f"{manifest_path}: lists {sorted(files)}, expected {sorted(expected)}")
    present = {p.name for p in path.iterdir() if not p.name.startswith(".")} - {CHECKSUMS_FILE}
    if present != expected:
        odd = sorted(present ^ expected)
        raise BundleError(f"{path}: missing or unlisted file(s): {', '.join(odd)}")
    for name in sorted(files):  # before any is opened: a FIFO blocks open(), /dev/zero never ends a read
        mode = (path / name).stat().st_mode  # a symlink's target (DVC's symlink cache links every file)
        if not stat.S_ISREG(mode):
            raise BundleError(f"{path / name}: cannot be read (not a regular file: {_file_kind(mode)})")
    for name, want in files.items():
        got = file_digest(path / name)
        if got != want:
            raise BundleError(f"{path / name}: checksum mismatch (expected sha256 {want[:12]}…, got {got[:12]}…); "
                              "the bundle was modified or corrupted")
    return file_digest(manifest_path)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a plain file")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        return read_npz(str(path))  # bounded by the file's size: no zip bomb
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from None


@dataclass
class ModelBundle:
    """A verified bundle, ready to compute features and predict (the app's predictor wraps this)."""

    path: Path
    digest: str
    metadata: dict
    spec: FeatureSpec
    vocab: Vocabularies
    snapshot: HistorySnapshot
    training_stats: dict
    model: Any  # the engine's imported inference graph

    def features(self, rows: FeatureRows) -> FeatureMatrix:
        return build_features(self.spec, self.vocab, rows)

    @property
    def has_expected_units(self) -> bool:
        """Whether the graph has the bias-corrected ``expected_units`` output (bundles trained before it do not)."""
        return EXPECTED_OUTPUT in self.model.outputs

    def forecast_features(self, matrix: FeatureMatrix) -> dict[str, np.ndarray]:
        """Every output for feature rows in one run: ``prediction`` (median-like units, >= 0) and, when the
        bundle has it, ``expected_units`` (bias-corrected mean units)."""
        names = (PREDICTION_OUTPUT, EXPECTED_OUTPUT) if self.has_expected_units else (PREDICTION_OUTPUT,)
        if matrix.dense.shape[0] == 0:
            return {name: np.zeros(0, np.float32) for name in names}
        feed = {DENSE_INPUT: np.ascontiguousarray(matrix.dense, np.float32)}
        for j, name in enumerate(CATEGORICAL_FIELDS):
            feed[f"{CATEGORICAL_INPUT}_{name}"] = np.ascontiguousarray(matrix.categorical[:, j], np.int32)
        use_one_blas_thread()  # the bits pipeline.models.predict_weights gives (pipeline/blas.py)
        out = self.model.run(feed)
        return {name: np.asarray(out[name], np.float32).reshape(-1) for name in names}

    def predict_features(self, matrix: FeatureMatrix) -> np.ndarray:
        """Median-like units sold (>= 0) for feature rows, via the frozen graph (what the metric scores)."""
        return self.forecast_features(matrix)[PREDICTION_OUTPUT]

    def predict(self, store_nbr, item_nbr, date, onpromotion) -> np.ndarray:
        """Forecast units for requests (arrays or scalars) of store, item, target date, promotion."""
        rows = rows_from_snapshot(self.snapshot, store_nbr, item_nbr, date, onpromotion)
        return self.predict_features(self.features(rows))


def other_code_remedy(metadata: Mapping[str, Any]) -> str:
    """What a refusal of a bundle another version of Shelfcast wrote says to do (an upgrade, or a rollback of the
    code, left models/ as the other code wrote it): before, it named the mismatch only."""
    return (f"it was made by other code (git_commit {str(metadata.get('git_commit') or 'unknown')[:12]}): train and "
            "promote a model with this code (`dvc repro`, then `make promote`; README \"Upgrading Shelfcast\"), or "
            "serve it with the code that made it")


def load_bundle(path: Path | str) -> ModelBundle:
    """Verify, then load a bundle; any doubt is a BundleError naming the file."""
    path = Path(path)
    with _unreadable_is_refused(path):
        return _load_verified(path, _verify_bundle(path))


def _load_verified(path: Path, digest: str) -> ModelBundle:
    metadata, stats = _read_json(path / "bundle.json"), _read_json(path / "training_stats.json")
    if metadata.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path / 'bundle.json'}: format {metadata.get('format')!r}, this code reads "
                          f"{BUNDLE_FORMAT}; {other_code_remedy(metadata)}")
    try:
        spec = FeatureSpec.from_json(metadata["features"])
        vocab = Vocabularies.from_json(metadata["vocabularies"])
        if metadata["input_schema"]["dense"] != dense_feature_names(spec):
            raise BundleError(f"{path / 'bundle.json'}: dense feature names differ from this code's features; "
                              f"{other_code_remedy(metadata)}")
        if tuple(metadata["input_schema"]["categorical"]) != CATEGORICAL_FIELDS:
            raise BundleError(f"{path / 'bundle.json'}: categorical fields differ from this code's features; "
                              f"{other_code_remedy(metadata)}")
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{path / 'bundle.json'}: missing or malformed field {exc}") from None
    history = _load_npz(path / "history.npz")
    calendar = _load_npz(path / "calendar.npz")
    try:
        snapshot = HistorySnapshot(
            origin_day=int(history["origin_day"]), store_nbr=history["store_nbr"], item_nbr=history["item_nbr"],
            sales=history["sales"], promo=history["promo"],
            items={k: history[f"items.{k}"] for k in ("item_nbr",) + ITEM_FIELDS},
            stores={k: history[f"stores.{k}"] for k in ("store_nbr",) + STORE_FIELDS},
            calendar_days=calendar["days"], calendar_holidays=calendar["holidays"],
            closed_stores=_closed_stores(metadata, path / "bundle.json"),
        )
    except KeyError as exc:
        raise BundleError(f"{path}: history.npz/calendar.npz lacks array {exc}") from None
    check_snapshot(snapshot, spec, path)
    return ModelBundle(path=path, digest=digest, metadata=metadata, spec=spec, vocab=vocab, snapshot=snapshot,
                       training_stats=stats, model=_import_graph(path))


def _read_json(path: Path) -> Any:
    """A bundle's JSON file; BundleError naming it (not the other JSON file) when it is not valid JSON or not UTF-8:
    a file damaged before its checksum was taken."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse; UnicodeDecodeError
        raise BundleError(f"{path}: is not valid JSON ({exc})") from None


def _closed_stores(metadata: Mapping[str, Any], where: Path) -> dict[int, int]:
    """bundle.json's ``closed_stores`` as store_nbr -> day number of its last sales date; none for a bundle written
    before the field. BundleError naming the file and the field when it is there but not a list of
    {"store_nbr": whole number, "last_sales_date": "YYYY-MM-DD"}, or names a store twice."""
    entries = metadata.get(CLOSED_STORES_FIELD, [])
    shape = 'a list of {"store_nbr": whole number, "last_sales_date": "YYYY-MM-DD"}'
    if not isinstance(entries, list):
        raise BundleError(f"{where}: {CLOSED_STORES_FIELD} is a {type(entries).__name__}, expected {shape}")
    closed: dict[int, int] = {}
    for entry in entries:
        store = entry.get("store_nbr") if isinstance(entry, dict) else None
        date = entry.get("last_sales_date") if isinstance(entry, dict) else None
        try:
            if isinstance(store, bool) or not isinstance(store, int) or not isinstance(date, str):
                raise ValueError(date)
            day = (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days
        except ValueError:
            raise BundleError(f"{where}: {CLOSED_STORES_FIELD} entry {entry!r} is not {shape}") from None
        if store in closed:
            raise BundleError(f"{where}: {CLOSED_STORES_FIELD} names store {store} twice")
        closed[store] = day
    return closed


def check_snapshot(snapshot: HistorySnapshot, spec: FeatureSpec, path: Path) -> None:
    """BundleError naming the file and array unless the snapshot's arrays agree with each other and the spec: each
    table's columns one length, its keys whole numbers in strictly increasing order (every lookup is a binary
    search), the window [series, history_days] and the calendar the horizon's days from the origin on. A hand-edited
    or damaged history.npz or calendar.npz (its checksum made to match) loaded before: a table column cut short
    dropped its items from the catalog without a word, unsorted keys forecast a store×item from another's history."""
    history, calendar = path / "history.npz", path / "calendar.npz"

    def need(ok: bool, where: Path, what: str) -> None:
        if not ok:
            raise BundleError(f"{where}: {what}")

    def keys(array: np.ndarray, name: str, where: Path = history) -> None:
        need(array.ndim == 1 and array.dtype.kind in "iu", where, f"{name} must be whole numbers, one per row "
             f"(got {array.dtype} of shape {array.shape})")

    def table(columns: Mapping[str, np.ndarray], key: str, prefix: str) -> None:
        keys(columns[key], f"{prefix}.{key}")
        for name, column in columns.items():
            need(column.shape == columns[key].shape, history, f"{prefix}.{name} has shape {column.shape}, "
                 f"{prefix}.{key} {columns[key].shape}: one value per row")
        need(bool(np.all(np.diff(columns[key].astype(np.int64)) > 0)), history,
             f"{prefix}.{key} is not in strictly increasing order")

    table(snapshot.items, "item_nbr", "items")
    table(snapshot.stores, "store_nbr", "stores")
    series = (spec.history_days,)
    need(snapshot.sales.ndim == 2 and snapshot.sales.shape[1:] == series and snapshot.sales.dtype.kind == "f",
         history, f"window shape {snapshot.sales.shape} ({snapshot.sales.dtype}) does not match the feature spec "
         f"([series, {spec.history_days}] numbers)")
    rows = snapshot.sales.shape[:1]
    need(snapshot.promo.shape == snapshot.sales.shape and snapshot.promo.dtype.kind in "biu", history,
         f"promo has shape {snapshot.promo.shape} ({snapshot.promo.dtype}), sales {snapshot.sales.shape}")
    for name in ("store_nbr", "item_nbr"):
        keys(getattr(snapshot, name), name)
        need(getattr(snapshot, name).shape == rows, history, f"{name} has shape {getattr(snapshot, name).shape}, "
             f"sales {snapshot.sales.shape}: one per series")
    pairs = np.stack([snapshot.store_nbr.astype(np.int64), snapshot.item_nbr.astype(np.int64)])
    step = np.diff(pairs, axis=1)
    need(bool(np.all((step[0] > 0) | ((step[0] == 0) & (step[1] > 0)))), history,
         "store_nbr, item_nbr are not in strictly increasing order")
    late = [store for store, day in snapshot.closed_stores.items() if day > int(snapshot.origin_day)]
    need(not late, path / "bundle.json", f"{CLOSED_STORES_FIELD}: store {late[0] if late else ''} has its last sales "
         "date after the forecast origin: it had not closed by then")
    window_start = int(snapshot.origin_day) - snapshot.sales.shape[1] + 1  # the day of the window's first column
    for store, last in snapshot.closed_stores.items():  # no sales after a store's last one: every forecast is 0 there
        series = np.flatnonzero(snapshot.store_nbr == store)
        after = max(last + 1 - window_start, 0)
        sold = snapshot.sales[series, after:] > 0
        if sold.any():
            row, column = (int(k) for k in np.argwhere(sold)[0])
            item, units = int(snapshot.item_nbr[series[row]]), float(snapshot.sales[series[row], after + column])
            need(False, path / "bundle.json", f"{CLOSED_STORES_FIELD}: store {store}'s last sales date "
                 f"{np.datetime64(last, 'D')} is before sales in its history (item {item} on "
                 f"{np.datetime64(window_start + after + column, 'D')}: {units:g} units): it would be answered "
                 "closed for good")
    days = snapshot.calendar_days
    keys(days, "days", calendar)
    need(np.array_equal(days, int(snapshot.origin_day) + 1 + np.arange(spec.horizon)), calendar,
         f"days must be the {spec.horizon} days after the origin, one each")
    need(snapshot.calendar_holidays.shape == (snapshot.stores["store_nbr"].shape[0], spec.horizon,
                                              len(HOLIDAY_FLAGS)), calendar,
         f"holidays has shape {snapshot.calendar_holidays.shape}, expected [stores, {spec.horizon} days, "
         f"{len(HOLIDAY_FLAGS)} flags]")


def _import_graph(path: Path):
    from engine import saver  # the engine has no pandas/MLflow; importing it late keeps `import pipeline.bundle` cheap

    try:
        return saver.import_inference_graph(str(path))
    except Exception as exc:  # the engine's own errors name the file; wrap them as one bundle error
        raise BundleError(f"{path}: the inference graph cannot be loaded ({exc})") from exc
