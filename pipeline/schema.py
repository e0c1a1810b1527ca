"""The Favorita data contract, as data: raw files in, prepared tables out.

Raw schemas describe the CSV files exactly as Kaggle distributes them
(column order, types, nullability, allowed values, keys, references). The
validator in ``pipeline.validate`` and the synthetic generator both read them,
so the generator cannot drift away from what ``prepare`` accepts.

The prepared schema is what later stages (features, training, serving) may
rely on; ``PREPARED_SALES`` is the column list of ``data/prepared/sales.parquet``
and of ``data/split/{train,validation}.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

# Required: without these there is nothing to forecast. Optional: used when present, never
# required (an absent holidays_events means no holidays, an absent oil no price, an absent
# transactions no counts; test.csv only adds the days it lists to the holiday calendar).
RAW_FILES = ("train", "items", "stores")
OPTIONAL_RAW_FILES = ("holidays_events", "oil", "transactions", "test")
RAW_SUFFIXES = (".csv", ".csv.gz")

HOLIDAY_TYPES = ("Holiday", "Transfer", "Additional", "Bridge", "Work Day", "Event")
HOLIDAY_LOCALES = ("National", "Regional", "Local")
# Holiday types that make a day off (when not transferred away).
DAY_OFF_TYPES = ("Holiday", "Transfer", "Additional", "Bridge")
STORE_TYPES = ("A", "B", "C", "D", "E")
# The competition: onpromotion is unknown (empty) before this date in train.csv.
PROMOTION_KNOWN_FROM = "2014-04-01"


# Dates outside this window are certainly typos in the store's own files (sales, receipts, days to forecast) ...
EARLIEST_DATE = "2000-01-01"
LATEST_DATE = "2099-12-31"
# ... but not in the calendars of the world outside, which prepare reads from the first sales day on: FRED's WTI
# series (DCOILWTICO, oil.csv's column) starts in 1986, and a holiday calendar may list decades. A bound stays, as
# pandas' nanosecond timestamps end before 1678.
EARLIEST_CALENDAR_DATE = "1900-01-01"


@dataclass(frozen=True)
class Column:
    """One raw CSV column: its Arrow type, and the values it may hold."""

    name: str
    type: pa.DataType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    optional: bool = False  # the file may leave the column out: read as empty (null) on every row


@dataclass(frozen=True)
class RawFile:
    """One raw file: ordered columns, unique key, and references to other files."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    # column -> (file, column) it must exist in
    references: dict[str, tuple[str, str]] = field(default_factory=dict)
    min_rows: int = 1
    earliest_date: str = EARLIEST_DATE  # EARLIEST_CALENDAR_DATE for a calendar of the world outside the store

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


_DATE = pa.date32()

RAW_SCHEMAS: dict[str, RawFile] = {
    "train": RawFile(
        "train",
        (
            # Kaggle's row id: checked unique where given; a file of a store's own may leave it out (no feature
            # reads it), but a column that is there needs a value on every row.
            Column("id", pa.int64(), min=0, optional=True),
            Column("date", _DATE),
            Column("store_nbr", pa.int32(), min=1, max=32767),
            Column("item_nbr", pa.int32(), min=1),
            # Negative values are returns; zero-sales days are absent from the file.
            Column("unit_sales", pa.float64(), min=-1e6, max=1e6),
            # Empty where unknown (Favorita before 2014-04); a file without promotions may leave the column out.
            Column("onpromotion", pa.bool_(), nullable=True, optional=True),
        ),
        key=("date", "store_nbr", "item_nbr"),
        references={"store_nbr": ("stores", "store_nbr"), "item_nbr": ("items", "item_nbr")},
    ),
    "test": RawFile(
        "test",
        (
            Column("id", pa.int64(), min=0, optional=True),
            Column("date", _DATE),
            Column("store_nbr", pa.int32(), min=1, max=32767),
            Column("item_nbr", pa.int32(), min=1),
            Column("onpromotion", pa.bool_(), nullable=True, optional=True),
        ),
        key=("date", "store_nbr", "item_nbr"),
        references={"store_nbr": ("stores", "store_nbr"), "item_nbr": ("items", "item_nbr")},
        min_rows=0,
    ),
    "items": RawFile(
        "items",
        (
            Column("item_nbr", pa.int32(), min=1),
            Column("family", pa.string()),
            Column("class", pa.int32(), min=0),
            Column("perishable", pa.int8(), min=0, max=1),
        ),
        key=("item_nbr",),
    ),
    "stores": RawFile(
        "stores",
        (
            Column("store_nbr", pa.int32(), min=1, max=32767),
            Column("city", pa.string()),
            Column("state", pa.string()),
            Column("type", pa.string(), allowed=STORE_TYPES),
            Column("cluster", pa.int32(), min=1, max=32767),  # prepared as int16
        ),
        key=("store_nbr",),
    ),
    "holidays_events": RawFile(
        "holidays_events",
        (
            Column("date", _DATE),
            Column("type", pa.string(), allowed=HOLIDAY_TYPES),
            Column("locale", pa.string(), allowed=HOLIDAY_LOCALES),
            Column("locale_name", pa.string()),
            Column("description", pa.string()),
            Column("transferred", pa.bool_()),
        ),
        # Kaggle's file has a few dates with two events of the same locale, so no key.
        min_rows=0,
        earliest_date=EARLIEST_CALENDAR_DATE,
    ),
    "oil": RawFile(
        "oil",
        (
            Column("date", _DATE),
            Column("dcoilwtico", pa.float64(), nullable=True, min=-1000.0, max=1000.0),  # WTI closed at -37.63 once
        ),
        key=("date",),
        min_rows=0,  # header only: no price at all, the same as no oil.csv
        earliest_date=EARLIEST_CALENDAR_DATE,
    ),
    "transactions": RawFile(
        "transactions",
        (
            Column("date", _DATE),
            Column("store_nbr", pa.int32(), min=1, max=32767),
            Column("transactions", pa.int64(), min=0, max=2**31 - 1),  # prepared as int32
        ),
        key=("date", "store_nbr"),
        references={"store_nbr": ("stores", "store_nbr")},
        min_rows=0,
    ),
}

# Actual sales that live accuracy is judged on (pipeline/actuals.py): train.csv's columns that say what sold, so
# train.csv itself works; its other columns (id, onpromotion), or a user's own, are read past.
ACTUALS = RawFile(
    "actuals",
    tuple(RAW_SCHEMAS["train"].column(name) for name in ("store_nbr", "item_nbr", "date", "unit_sales")),
    key=("date", "store_nbr", "item_nbr"),
)


@dataclass(frozen=True)
class PreparedColumn:
    name: str
    type: pa.DataType
    doc: str


_CATEGORY = pa.dictionary(pa.int32(), pa.string())

# data/prepared/sales.parquet (and the split files): one row per (date, store_nbr, item_nbr)
# of the zero-filled grid, sorted by store_nbr, item_nbr, date. The grid of a store×item
# starts at the item's first sale in that store (prepare.grid = from_first_sale, Kaggle
# practice) or at the first date of the data (prepare.grid = full), and ends at the last
# date of train.csv. Store×item pairs that never sold have no rows.
PREPARED_SALES: tuple[PreparedColumn, ...] = (
    PreparedColumn("date", pa.timestamp("ns"), "the day (midnight, no time zone)"),
    PreparedColumn("store_nbr", pa.int16(), "store id"),
    PreparedColumn("item_nbr", pa.int32(), "item id"),
    PreparedColumn("unit_sales", pa.float32(),
                   "units (or kg) sold; 0 on filled days; returns cleaned per prepare.returns"),
    PreparedColumn("onpromotion", pa.bool_(), "on promotion that day; False where unknown"),
    PreparedColumn("onpromotion_known", pa.bool_(),
                   "False where train.csv had no promotion value (before 2014-04 or a filled day)"),
    PreparedColumn("family", _CATEGORY, "item family (33 in Favorita)"),
    PreparedColumn("class", pa.int32(), "item class"),
    PreparedColumn("perishable", pa.bool_(), "perishable item (weight 1.25 in NWRMSLE)"),
    PreparedColumn("city", _CATEGORY, "store city"),
    PreparedColumn("state", _CATEGORY, "store state"),
    PreparedColumn("store_type", _CATEGORY, "store type A-E (stores.csv 'type')"),
    PreparedColumn("cluster", pa.int16(), "store cluster"),
    PreparedColumn("is_national_holiday", pa.bool_(), "national day off (transfers honoured)"),
    PreparedColumn("is_regional_holiday", pa.bool_(), "day off in the store's state"),
    PreparedColumn("is_local_holiday", pa.bool_(), "day off in the store's city"),
    PreparedColumn("is_work_day", pa.bool_(), "a weekend day worked to make up for a bridge"),
    PreparedColumn("is_event", pa.bool_(), "a national event (Mother's day, earthquake, World Cup, ...)"),
    PreparedColumn("dcoilwtico", pa.float32(),
                   "oil price, forward-filled then back-filled over every day; NaN without oil.csv"),
    PreparedColumn("transactions", pa.int32(), "store transactions that day; 0 where the file has none"),
    PreparedColumn("transactions_known", pa.bool_(), "False where transactions.csv has no row for the store-day"),
)

PREPARED_SALES_SCHEMA = pa.schema([pa.field(c.name, c.type, nullable=False) for c in PREPARED_SALES])
PREPARED_SALES_KEY = ("date", "store_nbr", "item_nbr")
PREPARED_SALES_ORDER = ("store_nbr", "item_nbr", "date")

HOLIDAY_FLAGS = ("is_national_holiday", "is_regional_holiday", "is_local_holiday", "is_work_day", "is_event")

# Side tables written next to sales.parquet (for features and serving):
#   items.parquet     item_nbr, family, class, perishable
#   stores.parquet    store_nbr, city, state, store_type, cluster
#   holidays.parquet  date, store_nbr + HOLIDAY_FLAGS, every day from the first train date to the
#                     last date of holidays_events/test (so future target days have their flags)
#   test.parquet      id, date, store_nbr, item_nbr, onpromotion (only when test.csv is present)
PREPARED_SIDE_TABLES = ("items", "stores", "holidays")
