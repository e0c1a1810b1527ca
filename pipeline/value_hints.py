"""What a raw value that does not parse was probably written as, and how to write it instead.

A spreadsheet or a database export writes dates, numbers and unknowns in its own notation (``2017-08-15
13:45:00``, ``15/08/2017``, ``"93,14"``, ``1.03665E+05``, ``NA``). None is guessed at: a day/month order, a
comma that is a decimal point or a thousands separator, the day of a time of day cannot always be told, so the
value is refused, and this says what about it is wrong and how to write it. (What can be told is read:
pipeline/validate.py takes PostgreSQL's ``t``/``f`` and dates written at midnight, ``2017-08-15 00:00:00``.)
"""

from __future__ import annotations

import re

import pyarrow as pa

UNKNOWN_WORDS = ("NA", "N/A", "NULL", "null", "None", "\\N", ".", "-")  # R, SQL, pandas, MySQL, FRED, reports

_DATE_HINTS = (
    (r"\d{4}-\d{1,2}-\d{1,2}[ T][\d:.]+ ?(Z|UTC|[+-]\d{2}(:?\d{2})?)", "a time with a time zone (a database's "
                                                                    "timestamptz?): its day depends on the zone, so "
                                                                    "none is guessed: write the date alone, "
                                                                    "YYYY-MM-DD, the day its sales count for"),
    (r"\d{4}-\d{1,2}-\d{1,2}[ T]\d.*", "a time of day after the date (a database's timestamp?): dates are read "
                                       "so where the first data row writes one too, as YYYY-MM-DD HH:MM:SS, and "
                                       "every time is midnight; otherwise write the date alone, YYYY-MM-DD"),
    (r"\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}", "a spreadsheet's date: which of day and month comes first cannot always "
                                         "be told, so it is not guessed: write dates as YYYY-MM-DD (format the "
                                         "column as yyyy-mm-dd before saving)"),
    (r"\d{4}[/.]\d{1,2}[/.]\d{1,2}", "write it with '-': YYYY-MM-DD"),
)
_NUMBER_HINTS = (
    (r"[-+]?\d*,\d+", "a decimal comma or a thousands separator? write numbers with '.' as the decimal point and "
                      "no thousands separator (3.5, 1234)"),
)
_INTEGER_HINTS = (
    (r"[-+]?\d{1,3}(\.\d{3})+", "a thousands separator? write the digits alone (103665)"),
    (r"[-+]?(\d+\.0*|\d*\.?\d+[eE][-+]?\d+)", "a whole number written as a decimal or in scientific notation (a "
                                               "spreadsheet's number format?): write the digits alone (103665)"),
)


def value_hint(column_type: pa.DataType, nullable: bool, value: str) -> str:
    """How to write ``value`` (as the file has it) for a column of ``column_type``; '' where no notation is known."""
    text = value.strip()
    if nullable and text in UNKNOWN_WORDS:
        return f"{text!r} for unknown? leave an unknown value empty"
    if column_type == pa.date32():
        hints = _DATE_HINTS
    elif pa.types.is_integer(column_type):
        hints = _NUMBER_HINTS + _INTEGER_HINTS
    elif pa.types.is_floating(column_type):
        hints = _NUMBER_HINTS
    else:
        hints = ()
    return next((hint for pattern, hint in hints if re.fullmatch(pattern, text)), "")
