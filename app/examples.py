"""The one example request the app shows: the form's placeholder, the OpenAPI document and /docs.

Taken from the served model, so every example works on whatever bundle is served (an example
naming an item the model does not know is a dead end for a newcomer). Without a model, the
README's example on the default data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from typing import TYPE_CHECKING

from app.catalog import MAX_QUERY

if TYPE_CHECKING:  # a LoadedModel derives its example once, as it loads (app/predictor.py imports this module)
    from app.predictor import LoadedModel

RECENT_DAYS = 28  # "best-selling" over the last four weeks, so the example forecast is not 0


@dataclass(frozen=True)
class Example:
    store_nbr: int
    item_nbr: int
    date: str  # ISO day: the first day of the model's horizon the store is open (pipeline/closed_days.py)
    search: str  # a word of the item's family, for GET /api/v1/items?q=

    def instance(self) -> dict:
        return {"store_nbr": self.store_nbr, "item_nbr": self.item_nbr, "date": self.date, "onpromotion": False}


DEFAULT_DATA_EXAMPLE = Example(store_nbr=1, item_nbr=1838989, date="2017-08-16", search="dairy")  # as README.md


def example_for(model: LoadedModel | None) -> Example:
    """The example of the model served (derived once, as it loaded), or without a model the README's."""
    return DEFAULT_DATA_EXAMPLE if model is None else model.example


def derive_example(model: LoadedModel) -> Example:
    """The first store's best-selling item over the last four weeks, on the horizon's first day the store is open: a
    data set ending on December 31 starts its horizon on New Year's Day, which the app answers 0 (store_closed); a
    store closed for good is open on none, so the first store that has not closed is taken."""
    snapshot = model.bundle.snapshot
    open_stores = [n for n, s in model.catalog.stores.items() if s.closed_since is None]  # not closed for good
    store = min(open_stores or model.catalog.stores)
    rows = np.flatnonzero(np.asarray(snapshot.store_nbr) == store)
    known = [r for r in rows if int(snapshot.item_nbr[r]) in model.catalog.items]
    if known:
        recent = np.asarray(snapshot.sales)[known, -RECENT_DAYS:].sum(axis=1)
        item = int(snapshot.item_nbr[known[int(np.argmax(recent))]])  # argmax: the first (lowest number) on ties
    else:
        item = min(model.catalog.items)
    # a word of its family (a prefix matches too, within the API's length limit), else its number
    words = model.catalog.items[item].family.split()
    search = words[0].lower()[:MAX_QUERY] if words else str(item)
    days = model.horizon_days
    opened = days[~model.closed_days.of(np.full(days.size, store), days)]
    date = dt.date(1970, 1, 1) + dt.timedelta(days=int(opened[0] if opened.size else days[0]))
    return Example(store_nbr=store, item_nbr=item, date=date.isoformat(), search=search)
