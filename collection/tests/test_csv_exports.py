"""Every CSV download that writes typed text writes it through the one spreadsheet-safe cell
(instruments/csv_cells.py): the per-run statistics table here; the run list's in instruments/tests/test_runs.py, the
quarantine export's in collection/tests/test_quarantine.py."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from collection.services import run_statistics
from instruments.models import Channel, Instrument, Run


def test_per_run_statistics_keep_negative_numbers_and_defuse_names():
    """Unsaved objects: as_csv only formats what per_run_statistics measured."""
    instrument = Instrument(name="Station", slug="-station")
    channel = Channel(instrument=instrument, name="T", slug="temp")
    run = Run(number=3, stage=0, start=datetime(2026, 1, 1, tzinfo=UTC))
    row = run_statistics.RunRow(run, 1, 2, [{"channel": 1, "count": 2, "min": -7.5, "max": -0.25, "mean": -3.875}])
    head, line = csv.reader(io.StringIO(run_statistics.as_csv([row], [channel])))
    assert head[:4] == ["run", "start_us", "end_us", "'-station/temp:count"]
    assert line == ["3", "1", "2", "2", "-7.5", "-0.25", "-3.875"]
