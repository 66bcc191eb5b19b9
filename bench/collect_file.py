#!/usr/bin/env python
"""Lines/s of the file collector beside pandas' own ``read_csv`` of the same file, measured in the same run.

Writes a CSV like the demo weather station's (an ISO time, seven numbers, a status word; 1,000,000 lines
by default), then times, median of --repeat runs each:

* baseline: ``pandas.read_csv(path)`` with its defaults (the whole file into a DataFrame);
* the file collector: ``FileCollector.collect`` reading the file from its start into the batches
  ``ingest_samples`` takes (times parsed to UTC microseconds, one reading per channel and line, every
  line checked and the odd ones parsed line by line for quarantine). The database is not involved.

With --ingest, also one whole collection run (``collect_source``: collector, ``ingest_samples``, cursor
commit) into a fresh SQLite database, or into DATABASE_URL's database if set, reported in readings/s.

    .venv/bin/python bench/collect_file.py --lines 1000000 --repeat 3 [--ingest]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["time", "air_temperature", "relative_humidity", "pressure", "wind_speed", "wind_direction",
           "solar_radiation", "battery_voltage", "status"]  # fmt: skip


def write_csv(path: Path, lines: int, bad_every: int) -> None:
    import numpy as np

    rng = np.random.default_rng(7)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    values = rng.normal(20, 5, (lines, 7))
    chunk = 100_000
    with path.open("w", encoding="utf-8") as handle:
        handle.write(",".join(COLUMNS) + "\n")
        for first in range(0, lines, chunk):
            out = []
            for i in range(first, min(first + chunk, lines)):
                if bad_every and i % bad_every == bad_every - 1:
                    out.append("ERR sensor bus timeout\n")
                    continue
                stamp = (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
                row = values[i]
                out.append(f"{stamp},{row[0]:.3f},{row[1]:.3f},{row[2]:.3f},{row[3]:.3f},{row[4]:.3f},"
                           f"{row[5]:.3f},{row[6]:.3f},{'OK' if i % 50 else 'LOW BATTERY'}\n")  # fmt: skip
            handle.write("".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in the generated CSV")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median reported)")
    parser.add_argument("--bad-every", type=int, default=0, help="make every Nth line unparseable (0: none)")
    parser.add_argument("--ingest", action="store_true", help="also time a whole collection run into a database")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="daqbroker-bench-") as tmp:
        os.environ.setdefault("DAQBROKER_DATA_DIR", tmp)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daqbroker_site.settings")
        sys.path.insert(0, str(REPO))
        import django

        django.setup()
        # Under <data dir>/files, a default file root (accounts.targets checks every collection run).
        folder = Path(tmp) / "files" / "logger"
        folder.mkdir(parents=True)
        path = folder / "weather.csv"
        write_csv(path, args.lines, args.bad_every)
        size_mb = path.stat().st_size / 1e6
        print(
            f"file collector vs pandas.read_csv on the same {args.lines:,}-line CSV ({len(COLUMNS)} columns, "
            f"{size_mb:.1f} MB), median of {args.repeat}"
        )
        collector, readings = collector_run(folder, args)
        baseline, ours = [], []
        for _ in range(args.repeat):  # interleaved, so that both see the same machine
            baseline.append(median_seconds(1, lambda: read_with_pandas(path)))
            ours.append(median_seconds(1, collector))
        (base_wall, base_cpu), (our_wall, our_cpu) = (
            tuple(statistics.median(t[i] for t in runs) for i in (0, 1)) for runs in (baseline, ours)
        )
        print(f"{'path':<28} {'wall s':>7} {'lines/s':>11} {'vs read_csv':>11} {'CPU s':>7} {'CPU vs read_csv':>15}")
        row = "{:<28} {:>7.3f} {:>11,.0f} {:>11.0%} {:>7.3f} {:>15.0%}"
        print(row.format("pandas.read_csv (baseline)", base_wall, args.lines / base_wall, 1, base_cpu, 1))
        print(
            row.format(
                "FileCollector.collect",
                our_wall,
                args.lines / our_wall,
                base_wall / our_wall,
                our_cpu,
                base_cpu / our_cpu,
            )
        )
        print(f"  ({readings:,} readings for ingest_samples: {readings / our_wall:,.0f} readings/s)")
        if args.ingest:
            seconds, stored = whole_run(folder, args)
            label = f"collect_source, {django.db.connection.vendor}"
            print(f"{label:<28} {seconds:>7.3f} {args.lines / seconds:>11,.0f} {base_wall / seconds:>11.0%}")
            print(f"  ({stored:,} readings validated and stored: {stored / seconds:,.0f} readings/s)")


def median_seconds(repeat: int, run) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``run``; CPU time is steadier on a busy machine."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def read_with_pandas(path: Path) -> None:
    import pandas as pd

    frame = pd.read_csv(path)
    assert len(frame) > 0


def collector_run(folder: Path, args):
    """A function running the collector over the whole file, and how many readings it yields."""
    from collection.collectors.file import FileCollector
    from daqbroker_agent.config import validate_source_config
    from instruments.choices import ChannelKind
    from instruments.models import Channel, DataSource, Instrument

    config = validate_source_config(
        "file",
        {
            "path": str(folder),
            "pattern": "*.csv",
            "header_lines": 1,
            "columns": COLUMNS,
            "timestamp": {"columns": ["time"]},
            "max_lines": args.lines + 1,
        },
    )
    # Unsaved registry objects: the collector needs their ids and kinds, not the database.
    instrument = Instrument(pk=1, slug="bench", name="Bench")
    source = DataSource(pk=1, instrument=instrument, kind="file", config=config, cursor={})
    channels = [
        Channel(pk=i, instrument=instrument, slug=name, source_field=name,
                kind=ChannelKind.TEXT if name == "status" else ChannelKind.NUMERIC)
        for i, name in enumerate(COLUMNS[1:], start=1)
    ]  # fmt: skip
    collector = FileCollector()
    result = collector.collect(source, config, channels)
    assert not result.more, "the whole file should be read in one run"
    readings = result.readings

    def run():
        collected = collector.collect(source, config, channels)
        assert collected.readings == readings

    return run, readings


def whole_run(folder: Path, args) -> tuple[float, int]:
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from collection.services.collect import collect_source
    from instruments.choices import ChannelKind
    from instruments.models import Channel, DataSource, Instrument

    call_command("migrate", verbosity=0)
    owner = User.objects.create_user("bench")
    instrument = Instrument.objects.create(name="Bench", slug="bench-collect", owner=owner)
    source = DataSource.objects.create(
        instrument=instrument,
        name="csv",
        kind="file",
        config={
            "path": str(folder),
            "pattern": "*.csv",
            "header_lines": 1,
            "columns": COLUMNS,
            "timestamp": {"columns": ["time"]},
            "max_lines": args.lines + 1,
        },
    )
    for name in COLUMNS[1:]:
        Channel.objects.create(
            instrument=instrument, name=name, slug=name.replace("_", "-"), source=source, source_field=name,
            kind=ChannelKind.TEXT if name == "status" else ChannelKind.NUMERIC,
        )  # fmt: skip
    start = time.perf_counter()
    run = collect_source(source.pk)
    seconds = time.perf_counter() - start
    assert run.status == "success", run.error
    return seconds, run.accepted


if __name__ == "__main__":
    main()
