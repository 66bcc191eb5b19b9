#!/usr/bin/env python
"""Bytes per reading in compressed blocks beside today's narrow tables, engine-measured; compaction and
raw-fetch rates (issue #17, docs/storage.md).

For each of three shapes (10 channels each) — 1 Hz smooth, 1 Hz noisy 3-decimal, irregular timestamps
with two text channels — readings go in through ``ingest_samples``; the rollup tiers are brought up to
date; then, in the same run:

* the narrow table's size as the engine reports it (PostgreSQL ``pg_total_relation_size``, SQLite
  ``dbstat``, MariaDB ``information_schema.TABLES`` after ``ANALYZE TABLE``; tables plus indexes), and the
  tiers' size;
* the raw fetch of every reading from the narrow table through ``fetch_columns`` (binary COPY on
  PostgreSQL, the baseline);
* compaction of everything (``blocks.compact``, bounded steps), its rate, then the packing of the fine
  tiers (``rollups.pack``), its rate; or, with ``--together``, both as the compaction task does them
  (``rollups.compact_and_pack``: each run's tiers packed in its own transaction), one rate;
* the block tables' sizes (readings, packed tiers beside the coarse tiers' rows), and the raw fetch of
  every reading through ``blocks.read_readings``.

Beside them, the column codec candidates measured on the same values (bytes a reading, pure codec).

    .venv/bin/python bench/storage.py --database-url postgres://postgres@127.0.0.1:5432/bench_storage
    .venv/bin/python bench/storage.py                        # SQLite in a temporary directory
    .venv/bin/python bench/storage.py --per-channel 20000    # a quick run
    .venv/bin/python bench/storage.py --together             # compaction and packing as the task does them

The database of a PostgreSQL or MariaDB URL is dropped and created again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SECOND = 1_000_000
T0 = 1_704_067_200 * SECOND  # 2024-01-01T00:00:00Z
CHANNELS = 10
SHAPES = ("smooth 1 Hz", "noisy 3-decimal 1 Hz", "irregular + text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="", help="PostgreSQL or MariaDB URL; default SQLite")
    parser.add_argument("--per-channel", type=int, default=100_000, help="readings per channel and shape")
    parser.add_argument("--together", action="store_true", help="compact and pack as the compaction task does")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run(args)
        return
    env = dict(os.environ, DAQBROKER_DEBUG="false", DAQBROKER_SECRET_KEY="bench-" + "x" * 60)
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "client_agent"), env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        env["DAQBROKER_DATA_DIR"] = tmp
        argv = [sys.executable, __file__, "--child", "--per-channel", str(args.per_channel)]
        argv += ["--together"] if args.together else []
        subprocess.run(argv, env=env, cwd=REPO, check=True)


def shape_data(shape: str, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(timestamps, values) per channel; values are objects (strings) for the text channels."""
    out = []
    for c in range(CHANNELS):
        if shape == SHAPES[0]:
            ts = T0 + np.arange(n, dtype=np.int64) * SECOND
            values = np.round(20 + 5 * np.sin(2 * np.pi * np.arange(n) / 86400 + c), 3)
        elif shape == SHAPES[1]:
            ts = T0 + np.arange(n, dtype=np.int64) * SECOND
            values = np.round(20 + c + rng.normal(0, 0.5, n), 3)
        else:
            ts = T0 + np.cumsum(rng.integers(200_000, 1_800_000, n))
            if c < 2:
                states = np.array(["RUN", "IDLE", "FAULT E12", "CALIBRATING"], dtype=object)
                values = states[np.minimum(np.cumsum(rng.random(n) < 0.01) % 4, 3)]
            else:
                values = np.round(np.cumsum(rng.normal(0, 0.05, n)) + 100, 3)
        out.append((ts, values))
    return out


def run(args) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daqbroker_site.settings")
    from _common import recreate_database

    if os.environ.get("DATABASE_URL"):
        recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    import logging

    logging.disable(logging.WARNING)  # the bench's throwaway broker has no worker: its warnings are noise
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection

    from collection import codec
    from collection.services import SampleBatch, ingest_samples
    from collection.services.blocks import compact, read_readings
    from collection.services.fetch import F8, I8, fetch_columns
    from collection.services.rollups import compact_and_pack, pack, refresh_rollups
    from instruments.choices import ChannelKind
    from instruments.models import Channel, Instrument

    call_command("migrate", verbosity=0)
    owner = User.objects.create_user("bench")
    vendor = connection.vendor
    print(f"Storage per reading on {vendor}, {CHANNELS} channels x {args.per_channel:,} readings per shape")
    rng = np.random.default_rng(17)
    for number, shape in enumerate(SHAPES):
        truncate(connection)
        instrument = Instrument.objects.create(name=shape, slug=f"shape-{number}", owner=owner)
        data = shape_data(shape, args.per_channel, rng)
        channels = []
        for c, (_, values) in enumerate(data):
            kind = ChannelKind.TEXT if values.dtype == object else ChannelKind.NUMERIC
            channels.append(Channel.objects.create(instrument=instrument, name=f"c{c}", slug=f"c{c}", kind=kind))
        for channel, (ts, values) in zip(channels, data, strict=True):
            for i in range(0, len(ts), 200_000):
                part = slice(i, i + 200_000)
                ingest_samples(SampleBatch(np.full(len(ts[part]), channel.pk), ts[part], values[part]))
        while refresh_rollups().remaining:
            pass
        readings = CHANNELS * args.per_channel
        narrow = table_bytes(connection, ["collection_sample", "collection_textsample"])
        tiers = table_bytes(connection, ["collection_rollup"])

        started = time.perf_counter()
        numeric = [c for c in channels if c.kind == ChannelKind.NUMERIC]
        sql = "SELECT ts, value, quality FROM collection_sample WHERE channel_id = %s ORDER BY ts"
        fetched = sum(
            len(fetch_columns(sql, [c.pk], (("ts", I8), ("value", F8), ("quality", I8)))["ts"]) for c in numeric
        )
        narrow_rate = fetched / (time.perf_counter() - started)

        far = T0 + 10 * 365 * 86400 * SECOND
        started = time.perf_counter()
        moved = hours = 0
        while True:  # as collection.tasks.compact_blocks_task, a step after another
            step = (compact_and_pack if args.together else compact)(far, max_windows=200)
            moved += step.readings
            hours += step.packed_hours
            if not step.windows:
                break
        compact_seconds = time.perf_counter() - started
        compact_rate = moved / compact_seconds
        assert moved == readings, (moved, readings)
        started = time.perf_counter()
        while step := pack(far, max_windows=200):  # with --together, what is left (nothing here)
            hours += step
        pack_seconds = time.perf_counter() - started
        blocks = table_bytes(connection, ["collection_readingblock"])
        # The rows packing deleted leave free space the engine reuses for new rows (PostgreSQL's autovacuum,
        # InnoDB's free pages): a table at steady state does not keep it, so give it back before measuring.
        reclaim(connection, "collection_rollup")
        packed_tiers = table_bytes(connection, ["collection_rollup", "collection_rollupblock"])

        started = time.perf_counter()
        fetched_blocks = sum(len(read_readings(c.pk, T0, T0 + 10**15)["ts"]) for c in numeric)
        block_rate = fetched_blocks / (time.perf_counter() - started)
        assert fetched_blocks == fetched

        print(f"\n{shape}: {readings:,} readings")
        print(f"  narrow table     {narrow / readings:7.2f} B/reading")
        print(f"  rollup tiers     {tiers / readings:7.2f} B/reading as rows")
        print(f"  narrow + tiers   {(narrow + tiers) / readings:7.2f} B/reading (today, compaction off)")
        print(f"  blocks           {blocks / readings:7.2f} B/reading   ({narrow / blocks:.1f}x smaller than rows)")
        print(f"  packed tiers     {packed_tiers / readings:7.2f} B/reading (fine tiers packed, 1 h and 1 day as rows)")
        total = (blocks + packed_tiers) / readings
        print(
            f"  blocks + tiers   {total:7.2f} B/reading   ({(narrow + tiers) / (blocks + packed_tiers):.1f}x smaller)"
        )
        if args.together:
            rate = readings / (compact_seconds + pack_seconds)
            print(f"  compaction + tier packing (the task) {rate:12,.0f} readings/s")
        else:
            print(f"  compaction       {compact_rate:12,.0f} readings/s")
            covered = fetched / pack_seconds  # the numeric channels' readings whose tiers were packed
            print(f"  tier packing     {covered:12,.0f} readings/s ({hours / pack_seconds:,.0f} channel-hours/s)")
            both = readings / (compact_seconds + pack_seconds)  # one worker doing both, one after the other
            print(f"  both, one after the other {both:12,.0f} readings/s")
        print(
            f"  raw fetch        narrow {narrow_rate:12,.0f} readings/s, blocks {block_rate:12,.0f} readings/s "
            f"= {block_rate / narrow_rate:.2f}x"
        )
        print("  codec candidates (pure, bytes a reading, numeric channels):")
        numeric_data = [(ts, v) for ts, v in data if v.dtype != object]
        for name, encode in (
            ("timestamps delta-of-delta+zstd", lambda ts, v: codec.encode_timestamps(ts)),
            ("values raw f64+zstd", lambda ts, v: codec._frame(0, len(v), v.astype("<f8").tobytes())),
            ("values shuffle+zstd", lambda ts, v: codec.encode_values(v, codec.VALUE_SHUFFLE)),
            ("values shuffle+lz4", lambda ts, v: codec.encode_lz4_shuffled(v)),
            ("values xor+shuffle+zstd", lambda ts, v: codec.encode_values(v, codec.VALUE_XOR)),
            ("values decimal+zstd (chosen when exact)", lambda ts, v: codec.encode_values(v)),
        ):
            size = sum(
                len(encode(ts[i : i + 3600], v[i : i + 3600]))
                for ts, v in numeric_data
                for i in range(0, len(ts), 3600)
            )
            print(f"    {name:<42} {size / sum(len(ts) for ts, _ in numeric_data):6.2f}")


def truncate(connection) -> None:
    tables = [
        "collection_sample",
        "collection_textsample",
        "collection_readingblock",
        "collection_rollup",
        "collection_rollupblock",
        "collection_rollupbacklog",
        "collection_followupbacklog",
    ]
    with connection.cursor() as cursor:
        for table in tables:
            if connection.vendor == "sqlite":
                cursor.execute(f'DELETE FROM "{table}"')
            else:
                cursor.execute(f"TRUNCATE TABLE {connection.ops.quote_name(table)}")
        if connection.vendor == "sqlite":
            cursor.execute("VACUUM")


def reclaim(connection, table: str) -> None:
    """Give the space of deleted rows back to the file system, so the size measured is what is kept."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f'VACUUM FULL "{table}"')
        elif connection.vendor == "mysql":
            cursor.execute(f"OPTIMIZE TABLE `{table}`")
            cursor.fetchall()
        else:
            cursor.execute("VACUUM")


def table_bytes(connection, tables: list[str]) -> int:
    """Tables plus their indexes (and PostgreSQL's TOAST), as the engine counts them."""
    total = 0
    with connection.cursor() as cursor:
        for table in tables:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT pg_total_relation_size(%s)", [table])
            elif connection.vendor == "mysql":
                cursor.execute(f"ANALYZE TABLE `{table}`")
                cursor.fetchall()
                cursor.execute(
                    "SELECT data_length + index_length FROM information_schema.TABLES "
                    "WHERE table_schema = DATABASE() AND table_name = %s",
                    [table],
                )
            else:
                cursor.execute(
                    "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN "
                    "(SELECT name FROM sqlite_master WHERE tbl_name = %s)",
                    [table],
                )
            total += int(cursor.fetchone()[0] or 0)
    return total


if __name__ == "__main__":
    main()
