"""Production's forecasts for the requests a canary answered: the canary check's like-for-like pairs.

A canary answers a sticky share of store×items, so production never forecasts the series the canary
answers, and comparing the two variants' forecast levels compares different series. Most series sell
little, so that comparison is weak: a canary trained on a feed with every quantity ×100 moved the median
level by 0.2–1.0 depending on the split alone (against the rule's 0.5). The host holds production's
bundle, so the release tool forecasts the canary's own requests with it, as production would have answered
them (the same bundle, the same feature code the app runs), and the rule compares each pair. A request for a
day the store is closed (pipeline/closed_days.py) production answers 0 by that rule, not its model: it is kept
apart (``closed``), never paired, as the canary's own closed answers are not.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.bundle import BundleError, ModelBundle, load_bundle
from pipeline.closed_days import ClosedDays

Request = tuple  # (store_nbr, item_nbr, date "YYYY-MM-DD", onpromotion): what a prediction event's inputs say
ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def request_key(inputs: dict) -> Request | None:
    """A replayable request from an event's inputs, or None when it is shaped otherwise."""
    store, item, date, promo = (inputs.get(k) for k in ("store_nbr", "item_nbr", "date", "onpromotion"))
    if not (type(store) is int and type(item) is int and isinstance(date, str) and promo in (True, False, 0, 1)):
        return None  # (bool is an int: type() keeps true/false out of the ids)
    if not ISO_DAY.fullmatch(date):  # as the app logs it: fromisoformat also takes 20170822 and 2017-W34-2
        return None
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        return None
    return store, item, date, bool(promo)


class ProductionReplay:
    """Production's units for requests, from its bundle on this host; loaded once, each request forecast once
    (the canary check polls every second)."""

    def __init__(self, bundle_dir: Path):
        self.bundle_dir = Path(bundle_dir)
        self.error: str | None = None  # why nothing can be replayed (no or unreadable production bundle)
        self._bundle: ModelBundle | None = None
        self._units: dict[Request, float | None] = {}  # None: production could not have answered it
        self.closed: set[Request] = set()  # requests production answers 0 as a closed store-day (not its model)
        self._closed_days: ClosedDays | None = None

    @property
    def digest(self) -> str | None:
        """The replayed bundle's digest (None until loaded, or when it cannot be)."""
        return None if self._bundle is None else self._bundle.digest

    def _load(self) -> ModelBundle | None:
        if self._bundle is None and self.error is None:
            try:
                self._bundle = load_bundle(self.bundle_dir)
            except BundleError as exc:
                self.error = f"production's bundle cannot be replayed: {exc}"
        return self._bundle

    def forecasts(self, requests: Iterable[Request]) -> dict[Request, float]:
        """Production's forecast (units, as the API rounds them) for every request its model would have answered;
        requests for a store or item it does not know, or a date outside its window, are left out (it answers those
        422), and so are those for a day the store is closed (added to ``closed``: answered 0 by the closed-day
        rule)."""
        new = [r for r in dict.fromkeys(requests) if r not in self._units]
        bundle = self._load() if new else self._bundle
        if new and bundle is not None:
            self._units.update(dict.fromkeys(new))
            snapshot = bundle.snapshot
            known_stores = set(np.asarray(snapshot.stores["store_nbr"]).tolist())
            known_items = set(np.asarray(snapshot.items["item_nbr"]).tolist())
            first, last = (int(snapshot.calendar_days[0]), int(snapshot.calendar_days[-1]))
            answerable = [r for r in new if r[0] in known_stores and r[1] in known_items
                          and first <= _day(r[2]) <= last]
            if answerable:
                if self._closed_days is None:
                    self._closed_days = ClosedDays(snapshot)
                shut = self._closed_days.of([r[0] for r in answerable], [_day(r[2]) for r in answerable])
                self.closed.update(r for r, is_shut in zip(answerable, shut.tolist()) if is_shut)
                answerable = [r for r, is_shut in zip(answerable, shut.tolist()) if not is_shut]
            if answerable:
                self._units.update(zip(answerable, _predict(bundle, answerable)))
        return {r: u for r in dict.fromkeys(requests) if (u := self._units.get(r)) is not None}


def _predict(bundle: ModelBundle, requests: list[Request]) -> list[float | None]:
    """Units for each request, rounded as the API rounds them; one by one when the batch fails, so a request
    production's features refuse is left out (None), not the batch."""
    try:
        units = bundle.predict(*_columns(requests))
    except ValueError:  # FeatureInputError among them
        if len(requests) == 1:
            return [None]
        return [u for r in requests for u in _predict(bundle, [r])]
    return [round(float(u), 4) for u in units]


def _columns(requests: list[Request]) -> tuple[np.ndarray, ...]:
    return (np.asarray([r[0] for r in requests], np.int64), np.asarray([r[1] for r in requests], np.int64),
            np.asarray([r[2] for r in requests], "datetime64[D]"), np.asarray([r[3] for r in requests], np.uint8))


def _day(date: str) -> int:
    return (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days
