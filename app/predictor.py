"""The served model: loads models/production/ and swaps in a newly promoted bundle without a restart.

Requests take a reference to the current ``LoadedModel`` once and use it to the end, so a
swap never changes the model under a request in flight. At most every
``reload_interval_s`` a request notices it is time to look again; a background thread
then compares the bundle directory's file signature (inodes, sizes, mtimes: promotion
replaces the directory atomically) with the served one's and, if it changed, loads the new
bundle *fully* — checksums, graph, a warm-up prediction — before swapping the reference.
A bundle that fails any of that is refused and logged, and the old model keeps serving;
the same broken directory is not retried until it changes again. A directory replaced during its load is no
refusal (the load read two bundles): the one there now is loaded again at once (``LOAD_ATTEMPTS``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from app.catalog import Catalog
from app.config import DEFAULT_SERIES_CACHE_ENTRIES
from app.examples import Example, derive_example
from pipeline.bundle import EXPECTED_OUTPUT, PREDICTION_OUTPUT, BundleError, ModelBundle, load_bundle
from pipeline.bundle_checks import (ANSWERED_FIELDS, cannot_be_loaded, check_described, check_servable,
                                    served_forecast)
from pipeline.closed_days import ClosedDays
from pipeline.features import CATEGORICAL_FIELDS, SMALL_BATCH_ROWS, FeatureMatrix, dense_feature_names
from pipeline.models import CONSTANT_FEATURE_STD
from pipeline.served_features import ServedFeatures

log = logging.getLogger(__name__)

Signature = tuple


class BundleChangedWhileLoading(BundleError):
    """The directory was replaced during a load: no verdict on any bundle; the one there now is loaded again."""


ABSENCE_GRACE_S = 0.1  # a served bundle's folder found gone is looked for again after this, before it is reported
LOAD_ATTEMPTS = 3  # loads of a directory replaced each time during its load, before the check gives up until the next


def directory_signature(path: Path) -> Signature | None:
    """What changes when a bundle directory is replaced, any file in it is rewritten or its mode, owner or ACL
    changed (a bundle refused as unreadable is tried again once that is fixed); None if absent. A directory this
    process may not list has a signature without entries: loading it says why it is refused."""
    try:
        top = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:  # a folder above it may not be searched: the load says so, tried again once it can
        return ("unreachable",)
    try:
        entries = sorted((p.name, p.stat()) for p in path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        entries = []
    # ctime too: a chown or an ACL change (what may fix an unreadable bundle) changes nothing else here
    return (top.st_ino, top.st_mtime_ns, top.st_mode, top.st_ctime_ns) + tuple(
        (n, s.st_ino, s.st_size, s.st_mtime_ns, s.st_mode, s.st_ctime_ns) for n, s in entries)


def directory_head(path: Path | str) -> Signature | None:
    """The head of ``directory_signature``: the directory's own inode and mtime, with one stat (what a request
    can afford); None if nothing is there."""
    try:
        top = os.stat(path)
    except OSError:
        return None
    return (top.st_ino, top.st_mtime_ns)


@dataclass
class Forecast:
    """Predictions for N request rows with the features they were computed from."""

    units: np.ndarray  # [N] float32, median-like (what the log-error metric scores)
    features: FeatureMatrix
    expected_units: np.ndarray | None = None  # [N] float32, bias-corrected mean units (None: a bundle without them)
    store_closed: np.ndarray | None = None  # [N] bool: a day the store is closed (pipeline/closed_days.py): 0 units
    closed_reason: list[str | None] | None = None  # [N] why (ClosedDays.reasons), None where open


@dataclass
class LoadedModel:
    """A verified, warmed-up bundle plus what the app derives from it once."""

    bundle: ModelBundle
    signature: Signature | None
    loaded_at: str
    series_cache_entries: int = DEFAULT_SERIES_CACHE_ENTRIES  # SHELFCAST_SERIES_CACHE_ENTRIES: ServedFeatures' bound
    catalog: Catalog = field(init=False)
    dense_names: list[str] = field(init=False)

    def loaded_from(self, head: Signature | None) -> bool:
        """Whether the directory whose ``directory_head`` this is is the one this model was loaded from."""
        return head is not None and self.signature is not None and self.signature[:2] == head

    def __post_init__(self) -> None:
        self.catalog = Catalog(self.bundle.snapshot)
        self.dense_names = dense_feature_names(self.bundle.spec)
        self._item_keys = np.asarray(self.bundle.snapshot.items["item_nbr"], np.int64)
        self.closed_days = ClosedDays(self.bundle.snapshot)
        self.served_features = ServedFeatures(self.bundle.spec, self.bundle.vocab, self.bundle.snapshot,
                                              self.series_cache_entries)
        # the example request the form, /docs and the OpenAPI document show: derived here once, where each page
        # derived it again (its best-seller search: ~10 ms a page at Favorita's 221,400 store x items)
        self.example: Example = derive_example(self)

    @property
    def name(self) -> str:
        return str(self.bundle.metadata.get("name", "unknown"))

    @property
    def version(self) -> str:
        return str(self.bundle.metadata.get("version", "unknown"))

    @property
    def kind(self) -> str:
        """The model's kind (mlp, linear): events' ``model_kind`` and /metrics' ``kind`` label."""
        return str((self.bundle.metadata.get("model") or {}).get("kind", "unknown"))

    @property
    def horizon_days(self) -> np.ndarray:
        """The forecastable target days (day numbers), origin+1 .. origin+horizon."""
        return np.asarray(self.bundle.snapshot.calendar_days, np.int64)

    @property
    def first_date(self) -> dt.date:
        return _as_date(self.horizon_days[0])

    @property
    def last_date(self) -> dt.date:
        return _as_date(self.horizon_days[-1])

    @property
    def origin_date(self) -> dt.date:
        return _as_date(self.bundle.snapshot.origin_day)

    def _snapshot_for(self, items: np.ndarray):
        """The bundle's snapshot with its item table cut to the requested items.

        For more than SMALL_BATCH_ROWS rows, rows_from_snapshot converts the whole item table to
        text (1.5 ms per request at Favorita's 4,100 items); its result only depends on the rows
        of the items asked for, and the table stays sorted, so the cut gives identical features.
        """
        snapshot = self.bundle.snapshot
        positions = np.unique(np.searchsorted(self._item_keys, items))
        positions = positions[positions < self._item_keys.size]
        return dataclasses.replace(snapshot, items={k: v[positions] for k, v in snapshot.items.items()})

    def forecast(self, store_nbr, item_nbr, date_days, onpromotion) -> Forecast:
        """Units for request rows (arrays); inputs must already be validated against the catalog."""
        items = np.asarray(item_nbr, np.int64)
        # a few rows are looked up one by one (no table conversion): the cut would only cost time there
        snapshot = self.bundle.snapshot if items.size <= SMALL_BATCH_ROWS else self._snapshot_for(items)
        outputs, matrix, closed = served_forecast(self.bundle, self.closed_days, store_nbr, items, date_days,
                                                  onpromotion, snapshot, self.served_features)
        units, expected = outputs[PREDICTION_OUTPUT], outputs.get(EXPECTED_OUTPUT)
        reasons = self.closed_days.reasons(store_nbr, date_days) if closed.any() else [None] * closed.size
        return Forecast(units=units, features=matrix, expected_units=expected, store_closed=closed,
                        closed_reason=reasons)

    def feature_record(self, matrix: FeatureMatrix, row: int) -> dict:
        """One row's features by name (what the prediction event carries, for drift checks)."""
        return {"dense": dict(zip(self.dense_names, matrix.dense[row].tolist())),
                "categorical": dict(zip(CATEGORICAL_FIELDS, matrix.categorical[row].tolist()))}

    @property
    def promotion_has_effect(self) -> bool:
        """False when no training example was on promotion (the user's data has none): the model gives the
        request's flag no weight (pipeline/models.py), so it changes no forecast. Bundles without stats: True."""
        trained = self.bundle.training_stats.get("dense", {}).get("target_onpromotion", {})
        return not trained.get("count") or trained.get("std", 1.0) > CONSTANT_FEATURE_STD

    def describe(self) -> dict:
        meta = self.bundle.metadata
        return {
            "name": self.name, "version": self.version,
            "digest": self.bundle.digest, "loaded_at": self.loaded_at,
            "metrics": {name: value for name, value in (meta.get("metrics") or {}).items()  # NaN is not JSON
                        if not (isinstance(value, float) and not math.isfinite(value))},
            "origin": self.origin_date.isoformat(),
            "horizon": {"days": int(self.horizon_days.size), "first_date": self.first_date.isoformat(),
                        "last_date": self.last_date.isoformat()},
            **{name: meta.get(name) for name in ANSWERED_FIELDS},  # as they are (pipeline/bundle_checks.py checks them)
            "stores": [store.to_json() for store in self.catalog.stores.values()], "items": len(self.catalog.items),
            "promotion_has_effect": self.promotion_has_effect,
        }


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _as_date(day_number) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(day_number))


def load_model(path: Path, series_cache_entries: int = DEFAULT_SERIES_CACHE_ENTRIES) -> LoadedModel:
    """Load, verify and warm up a bundle; BundleError if it cannot serve: any error of the load is one, so that a
    damaged bundle is refused (the previous model serving, /readyz saying why), never a worker that cannot start.
    Whether it can serve is pipeline/bundle_checks.py's ``check_servable``, the check every install runs too.
    ``series_cache_entries``: the store×items whose feature columns it keeps (SHELFCAST_SERIES_CACHE_ENTRIES)."""
    before = directory_signature(path)
    try:
        model = _load_verified_model(path, before, series_cache_entries)
    except BundleError as exc:
        # A directory replaced during the load (a promote, or a deploy tool's symlink swap, racing the reload) is read
        # partly from one bundle and partly from the other: a checksum "mismatch" or any other error of that mix says
        # nothing about either bundle. Only a load of one unchanged directory may refuse it.
        if not isinstance(exc, BundleChangedWhileLoading) and directory_signature(path) != before:
            raise BundleChangedWhileLoading(f"{path}: the bundle changed while it was being loaded") from exc
        raise
    if directory_signature(path) != before:
        raise BundleChangedWhileLoading(f"{path}: the bundle changed while it was being loaded")
    return model


def _load_verified_model(path: Path, signature: Signature | None, series_cache_entries: int) -> LoadedModel:
    try:
        bundle = load_bundle(path)
        check_described(bundle, path)  # what the catalog below reads, refused naming the file and field
        model = LoadedModel(bundle=bundle, signature=signature, loaded_at=_utc_now(),
                            series_cache_entries=series_cache_entries)
    except BundleError:
        raise
    except Exception as exc:  # a file damaged before its checksum was taken: BadZipFile, EOFError, a JSON list ...
        raise cannot_be_loaded(path, exc) from exc
    check_servable(bundle, path, model.closed_days)
    try:
        model.describe()  # what GET /api/v1/model answers: built once here, so a malformed bundle is no 500 there
    except Exception as exc:
        raise BundleError(f"{path}: bundle.json/training_stats.json do not describe the model "
                          f"({type(exc).__name__}: {exc})") from exc
    return model


def collect_replaced_models() -> None:
    """Collect what replaced models left in reference cycles (~1,200 objects of a graph), then freeze again.

    Under gunicorn the heap is frozen once the app has loaded (app/gunicorn_conf.py), so full
    collections skip it; objects frozen there are never collected, so a model dropped after
    a hot reload would stay. One full collection (~60-80 ms of CPU), in the reload thread, at the
    first check after a swap. Nothing to do where nothing is frozen (tests, `python -m app`)."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
        gc.freeze()


class Predictor:
    """Holds the current model and replaces it when a valid new bundle appears at ``path``."""

    def __init__(self, path: Path | str, reload_interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 series_cache_entries: int = DEFAULT_SERIES_CACHE_ENTRIES,
                 count_refusal: Callable[[], None] | None = None, removal_ends_it: bool = False):
        """``count_refusal``: called once for each refusal of a bundle at ``path`` (the app's /metrics counter).
        ``removal_ends_it``: ``path`` removed is an ordinary end (a release ended a candidate), not logged as a
        warning as production's removal is."""
        self.path = Path(path)
        self._count_refusal = count_refusal
        self._removal_ends_it = removal_ends_it
        self.absent_since: str | None = None  # when a check first found nothing at ``path`` (UTC); None while there
        self.reload_interval_s = reload_interval_s
        self.series_cache_entries = series_cache_entries  # each model it loads keeps so many store×items' features
        self._clock = clock
        self._model: LoadedModel | None = None
        self._checking = threading.Lock()  # one check/load at a time
        self._next_check = 0.0
        self._refused: Signature | None = None  # a broken directory state, not retried until it changes
        self._replaced = False  # a model was swapped out: collect it at the next check (requests are done with it)
        self.last_error: str | None = None  # why the bundle at ``path`` was last refused; None once one loads
        self.last_error_at: str | None = None  # when (UTC, ISO 8601)
        self.fallback_path: Path | None = None  # a plain Predictor never stands in for another (model_store.py does)

    @property
    def model(self) -> LoadedModel | None:
        """The model to use for one request (None until one is loaded); may start a background check."""
        if self._clock() >= self._next_check:
            self._start_background_check()
        return self._model

    def check_now(self) -> bool:
        """Look for a new bundle and load it in this thread; True if a new model is now served."""
        with self._checking:
            return self._check()

    def forget(self) -> bool:
        """Drop the model: a candidate whose directory a release removed, a fallback production no longer needs.
        Its memory is collected in the background (loaded at start-up, it sits in the frozen heap) instead of
        staying for the worker's life. False while a check is running (nothing dropped: ask again later)."""
        if self._model is None:
            return True
        if not self._checking.acquire(blocking=False):
            return False  # a check is running: the next request asks again

        def collect() -> None:
            try:
                collect_replaced_models()
            finally:
                self._checking.release()

        self._model = None
        try:
            threading.Thread(target=collect, name="bundle-forget", daemon=True).start()
        except RuntimeError:  # interpreter shutting down
            self._checking.release()
        return True

    def _start_background_check(self) -> None:
        if not self._checking.acquire(blocking=False):
            return  # a check is already running
        self._next_check = self._clock() + self.reload_interval_s
        try:
            threading.Thread(target=self._check_then_release, name="bundle-reload", daemon=True).start()
        except RuntimeError:  # interpreter shutting down
            self._checking.release()

    def _check_then_release(self) -> None:
        try:
            self._check()
        except Exception:  # never let a reload bug kill serving; the old model stays
            log.exception("model reload from %s failed", self.path)
        finally:
            self._checking.release()

    def _signature_noting_absence(self, current: LoadedModel | None) -> Signature | None:
        """``directory_signature(path)``, recording when ``path`` went (``absent_since``, what /readyz reports) and
        saying so once while its model serves: a worker started now (a SIGHUP, a crash's replacement) would serve
        another model or none."""
        signature = directory_signature(self.path)
        if signature is None and self.absent_since is None and current is not None:
            time.sleep(ABSENCE_GRACE_S)  # an install between its two renames (pipeline/atomic.py swap_in_directory)
            signature = directory_signature(self.path)
        if signature is not None:
            self.absent_since = None
        elif self.absent_since is None:
            self.absent_since = _utc_now()
            if current is not None and not self._removal_ends_it:
                log.warning("model bundle %s is gone; still serving %s %s, loaded from it before; a worker started "
                            "now would not serve it (it serves the newest good release, or nothing): install a bundle "
                            "there", self.path, current.name, current.version)
        return signature

    def _check(self) -> bool:
        self._next_check = self._clock() + self.reload_interval_s
        if self._replaced:
            self._replaced = False
            collect_replaced_models()
        current = self._model
        for attempt in range(1, LOAD_ATTEMPTS + 1):
            signature = self._signature_noting_absence(current)
            if signature is None or signature == self._refused or (current is not None
                                                                    and signature == current.signature):
                return False
            try:
                model = load_model(self.path, self.series_cache_entries)
                break
            except BundleError as exc:
                if directory_signature(self.path) is None:  # removed while it loaded (a release ended a candidate)
                    log.info("model bundle %s was removed while it was being loaded", self.path)
                    return False
                if isinstance(exc, BundleChangedWhileLoading):  # no verdict on any bundle: the one there now is loaded
                    if attempt == LOAD_ATTEMPTS:
                        log.warning("model bundle %s kept changing while it was being loaded (%d times); it is loaded "
                                    "at the next check", self.path, LOAD_ATTEMPTS)
                        return False
                    log.info("model bundle %s was replaced while it was being loaded (%s); loading it again",
                             self.path, exc.__cause__ or exc)
                    continue
                self.last_error = str(exc)
                self.last_error_at = _utc_now()
                self._refused = signature
                serving = f"still serving {current.name} {current.version}" if current else "no model is being served"
                log.error("refusing model bundle %s: %s (%s)", self.path, exc, serving)
                if self._count_refusal is not None:
                    self._count_refusal()
                return False
        self._refused = None
        self.last_error = self.last_error_at = None  # a good bundle is installed: an earlier refusal is over
        if current is not None and model.bundle.digest == current.bundle.digest:
            current.signature = model.signature  # same bundle re-installed: nothing to swap
            return False
        self._model = model  # one reference assignment: requests in flight keep the model they took
        self._replaced = current is not None
        log.info("serving model %s %s from %s (digest %s)", model.name, model.version, self.path,
                 model.bundle.digest[:12])
        return True
