"""The one spreadsheet-safe CSV cell (instruments/csv_cells.py): typed text cannot become a formula,
numbers stay numbers."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from instruments.csv_cells import safe_cell, safe_row


@pytest.mark.parametrize(
    "text",
    [
        '=HYPERLINK("http://evil.example","x")',
        "+1+cmd|' /C calc'!A0",
        "-1+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(A1:A9)",
        "\t=1+1",
        "\r=1+1",
        "-",
        "+",
        "-inf",
        "- 7.5",
    ],
)
def test_text_a_spreadsheet_would_run_is_kept_as_text(text):
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize("number", ["-7.5", "+3", "-0", "1e-3", "-2.5E+10", ".5", "-.5", "7.", "12"])
def test_text_that_is_a_plain_number_is_left_alone(number):
    assert safe_cell(number) == number


@pytest.mark.parametrize("value", [-7.5, -3, 0, 2.5e-10, Decimal("-1.25")])
def test_numbers_stay_numbers(value):
    assert safe_cell(value) is value


def test_other_text_none_and_a_row_written_through_the_csv_module():
    assert safe_cell(None) == "" and safe_cell("gold") == "gold" and safe_cell("a=b") == "a=b"
    assert safe_cell(True) == "True"  # a bool is not written as a number
    buffer = io.StringIO()
    csv.writer(buffer).writerow(safe_row(["=1+1", -7.5, "-7.5", None, "@x"]))
    assert next(csv.reader(io.StringIO(buffer.getvalue()))) == ["'=1+1", "-7.5", "-7.5", "", "'@x"]
