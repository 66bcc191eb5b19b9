"""Cells for the CSV files people open in a spreadsheet (docs/security.md, "CSV downloads").

A spreadsheet reads a cell that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return,
which some of them skip before looking) as a formula, so text someone typed — a run's summary, a
parameter, a quarantined raw line — could run as one on the reader's machine. Such text gets a leading
``'``, which spreadsheets take as "this is text" and hide. Numbers stay numbers: an int or float is
written as is, and so is text that reads as a plain decimal number (``-7.5``, ``+3``, ``1e-3``), which no
spreadsheet runs. Every CSV download that writes typed text writes its rows through ``safe_row``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def safe_cell(value: object) -> object:
    """``value`` as a CSV cell no spreadsheet runs as a formula (None is an empty cell)."""
    if value is None:
        return ""
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return value
    text = str(value)
    if text.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def safe_row(values: Iterable[object]) -> list[object]:
    """A row of ``safe_cell`` cells, for ``csv.writer(...).writerow``."""
    return [safe_cell(v) for v in values]
