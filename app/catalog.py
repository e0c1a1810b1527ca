"""What the served model knows about stores and items, for validating requests and for the form.

Built once per loaded bundle from its history snapshot (so the app never needs the
training data): the stores and items the model was trained on, items with their
family and class, and a search over thousands of items by number, family or class.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass

import numpy as np

from pipeline.features import HistorySnapshot

MAX_QUERY = 100  # the longest items search the API takes (GET /api/v1/items?q=)
# Unicode's explicit direction controls (embeddings, overrides, isolates and their ends): in a name from the data,
# they reorder the text after it, not only the name.
DIRECTION_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
FIRST_STRONG_ISOLATE, POP_DIRECTIONAL_ISOLATE = "\u2068", "\u2069"


def search_fold(text: str) -> str:
    """Text as the items search compares it: accents dropped (NFKD, combining marks removed), case-folded, so
    'electronique', 'Électronique' and 'ÉLECTRONIQUE' find one another whichever way round; any script's decimal
    digits as ASCII ones ('١٨٣' finds item 183, as the form reads that number)."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return kept if kept.isascii() else "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in kept)


def shown_name(name: str) -> str:
    """A store's city or an item's family as a label shows it, and client-sent text as an error echoes it
    (``app.validation.shorten``): a name holding direction controls between FSI and PDI (U+2068, U+2069), so they
    order the name alone. A right-to-left override (U+202E) in a family read the rest of
    the sentence backwards on the page: "Item 5 (evil · class 1) at store 1 — Quito (type D, cluster 2)" showed as
    "(yadnoM no (2 retsulc ,D epyt) otiuQ — 1 erots ta". An isolate of the name's own could end ours early, so
    those are left out of the label. Any other name (right-to-left script included: it is ordered right already) is
    shown as it is; the name itself (``family``, ``city``) is unchanged everywhere."""
    if DIRECTION_CONTROLS.isdisjoint(name):
        return name
    inner = "".join(c for c in name if c not in "\u2066\u2067\u2068\u2069")
    return f"{FIRST_STRONG_ISOLATE}{inner}{POP_DIRECTIONAL_ISOLATE}"


@dataclass(frozen=True)
class Item:
    item_nbr: int
    family: str
    item_class: int
    perishable: bool

    @property
    def label(self) -> str:
        # the family as the data spells it: title() made "Produits d'entretien" "Produits D'Entretien"
        return f"{shown_name(self.family)} · class {self.item_class}{' · perishable' if self.perishable else ''}"

    def to_json(self) -> dict:
        return {"item_nbr": self.item_nbr, "family": self.family, "class": self.item_class,
                "perishable": self.perishable, "label": self.label}


@dataclass(frozen=True)
class Store:
    store_nbr: int
    city: str
    store_type: str
    cluster: int
    closed_since: str | None = None  # closed for good: its last sales date (ISO; HistorySnapshot.closed_stores)

    @property
    def label(self) -> str:
        return f"{self.store_nbr} — {shown_name(self.city)} (type {self.store_type}, cluster {self.cluster})"

    def to_json(self) -> dict:
        return {"store_nbr": self.store_nbr, "city": self.city, "type": self.store_type, "cluster": self.cluster,
                "label": self.label, **({} if self.closed_since is None else {"closed_since": self.closed_since})}


def _iso_day(day_number: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(day_number))).isoformat()


class Catalog:
    """Stores and items of one model bundle."""

    def __init__(self, snapshot: HistorySnapshot):
        items = snapshot.items
        self.items: dict[int, Item] = {
            int(n): Item(int(n), str(f), int(c), bool(p))
            for n, f, c, p in zip(items["item_nbr"], items["family"], items["class"], items["perishable"])
        }
        stores = snapshot.stores
        closed = {store: _iso_day(day) for store, day in snapshot.closed_stores.items()}
        self.stores: dict[int, Store] = {
            int(n): Store(int(n), str(c), str(t), int(k), closed.get(int(n)))
            for n, c, t, k in zip(stores["store_nbr"], stores["city"], stores["store_type"], stores["cluster"])
        }
        self._item_order = sorted(self.items)
        self._search_text = [self._text(self.items[n]) for n in self._item_order]
        self._series = {(int(s), int(i)): row for row, (s, i) in enumerate(zip(snapshot.store_nbr, snapshot.item_nbr))}
        self._snapshot = snapshot

    @staticmethod
    def _text(item: Item) -> str:
        perishable = " perishable" if item.perishable else ""
        return search_fold(f"{item.item_nbr} {item.family} class {item.item_class}{perishable}")

    def search(self, query: str, limit: int) -> tuple[list[Item], int]:
        """Items whose number, family or class contain every word of ``query`` (``search_fold``); (first ``limit``,
        total)."""
        words = search_fold(query).split()
        hits = [n for n, text in zip(self._item_order, self._search_text) if all(w in text for w in words)]
        if words and words[0].isdigit():  # a number typed: items starting with it first
            hits.sort(key=lambda n: (not str(n).startswith(words[0]), n))
        return [self.items[n] for n in hits[:limit]], len(hits)

    def has_history(self, store_nbr: int, item_nbr: int) -> bool:
        """Whether the store×item has rows in the bundle's history: one without any (an item the store never sold)
        is forecast from an all-zero history, and its prediction event says so (``new_series``) for drift."""
        return (int(store_nbr), int(item_nbr)) in self._series

    def recent_sales(self, store_nbr: int, item_nbr: int, days: int) -> np.ndarray:
        """The last ``days`` days of units sold up to the origin (zeros for a store×item without history)."""
        row = self._series.get((store_nbr, item_nbr))
        window = self._snapshot.sales.shape[1]
        if row is None:
            return np.zeros(min(days, window), np.float32)
        return np.asarray(self._snapshot.sales[row, -days:], np.float32)
