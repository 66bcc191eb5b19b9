"""The per-run statistics table: for chosen channels, each run's count, min, max and mean (docs/runs.md).

One ``range_statistics`` call per run (answered from the rollup tiers, with raw readings only at the
edges), so a table of N runs costs N small queries per channel. Callers bound N (``MAX_RUNS``).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from collection.services.statistics import range_statistics
from daqbroker_agent.parsing import datetime_to_us
from instruments.csv_cells import safe_row
from instruments.models import Channel, Run

MAX_RUNS = 200
MAX_CHANNELS = 12


@dataclass(frozen=True)
class RunRow:
    run: Run
    start: int  # µs
    end: int  # µs, excluded (now for the active run)
    cells: list[dict]  # per channel: channel, count, min, max, mean


def per_run_statistics(runs: Sequence[Run], channels: Sequence[Channel]) -> list[RunRow]:
    now = time.time_ns() // 1000
    ids = [c.pk for c in channels]
    rows = []
    for run in runs[:MAX_RUNS]:
        start = datetime_to_us(run.start)
        end = max(datetime_to_us(run.end) if run.end else now, start + 1)
        stats = range_statistics(ids, start, end)
        cells = [{"channel": s.channel_id, "count": s.count, "min": s.min, "max": s.max, "mean": s.mean} for s in stats]
        rows.append(RunRow(run, start, end, cells))
    return rows


def as_csv(rows: Iterable[RunRow], channels: Sequence[Channel]) -> str:
    """One line per run; for each channel its count, min, max and mean (``instrument/channel:min`` headers)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = ["run", "start_us", "end_us"]
    for channel in channels:
        ref = f"{channel.instrument.slug}/{channel.slug}"
        head += [f"{ref}:{name}" for name in ("count", "min", "max", "mean")]
    writer.writerow(safe_row(head))
    for row in rows:
        line: list = [row.run.label, row.start, row.end]
        for cell in row.cells:
            line += ["" if cell[k] is None else cell[k] for k in ("count", "min", "max", "mean")]
        writer.writerow(safe_row(line))
    return buffer.getvalue()


def as_parquet(rows: Sequence[RunRow], channels: Sequence[Channel]) -> bytes:
    """The same table as Parquet: ``run`` (text), ``start``/``end`` (UTC timestamps), then per channel
    ``<instrument>/<channel>:count`` (int64) and ``:min``, ``:max``, ``:mean`` (double, units in the metadata)."""
    fields: list[pa.Field] = [
        pa.field("run", pa.string()),
        pa.field("start", pa.timestamp("us", tz="UTC")),
        pa.field("end", pa.timestamp("us", tz="UTC")),
    ]
    data: dict[str, list] = {
        "run": [r.run.label for r in rows],
        "start": [r.start for r in rows],
        "end": [r.end for r in rows],
    }
    for index, channel in enumerate(channels):
        ref = f"{channel.instrument.slug}/{channel.slug}"
        metadata = {"units": channel.units} if channel.units else None
        fields.append(pa.field(f"{ref}:count", pa.int64()))
        data[f"{ref}:count"] = [r.cells[index]["count"] for r in rows]
        for name in ("min", "max", "mean"):
            fields.append(pa.field(f"{ref}:{name}", pa.float64(), metadata=metadata))
            data[f"{ref}:{name}"] = [r.cells[index][name] for r in rows]
    sink = io.BytesIO()
    pq.write_table(pa.table(data, schema=pa.schema(fields)), sink)
    return sink.getvalue()
