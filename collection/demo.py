"""The demo: a simulated rooftop weather station, its registry entries and a week of history.

``seed_demo`` registers the station and writes its history through ``ingest_samples``; the
``demo_instrument`` command then behaves like the real logger, appending a CSV line every few seconds
(with the occasional missing-value sentinel and garbled line real loggers produce), and the file
collector run by the Celery worker picks the lines up like any other file source.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction

from collection.choices import Origin
from collection.services.ingest import SampleBatch, ingest_samples
from instruments.choices import ChannelKind, SourceKind
from instruments.models import Channel, DataSource, Instrument, LogbookEntry, Run, RunColumn, RunList

SLUG = "demo-weather"
FILE_NAME = "weather.csv"
SENTINEL = -9999.0


@dataclass(frozen=True)
class DemoChannel:
    slug: str
    name: str
    units: str
    valid_min: float | None
    valid_max: float | None
    kind: str = ChannelKind.NUMERIC


CHANNELS = [
    DemoChannel("air_temperature", "Air temperature", "degC", -40, 60),
    DemoChannel("relative_humidity", "Relative humidity", "%", 0, 100),
    DemoChannel("pressure", "Barometric pressure", "hPa", 850, 1080),
    DemoChannel("wind_speed", "Wind speed", "m/s", 0, 60),
    DemoChannel("wind_direction", "Wind direction", "deg", 0, 360),
    DemoChannel("solar_radiation", "Global solar radiation", "W/m^2", 0, 1400),
    DemoChannel("battery_voltage", "Logger battery", "V", 11, 14.5),
    DemoChannel("status", "Logger status", "", None, None, ChannelKind.TEXT),
]
COLUMNS = ["time", *[c.slug for c in CHANNELS]]


def demo_dir() -> Path:
    return Path(settings.DATA_DIR) / "demo"


def weather(t: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible readings at unix times ``t`` (seconds): daily cycles, weather systems, noise."""
    hour = (t % 86_400) / 3_600
    day_phase = 2 * np.pi * (hour - 9) / 24
    front = np.sin(2 * np.pi * t / (3.3 * 86_400))  # a weather system passing every few days
    sun = np.clip(np.sin(np.pi * (hour - 6) / 12), 0, None) * (0.75 + 0.25 * np.cos(2 * np.pi * t / 7_200))
    temperature = 13 + 7 * np.sin(day_phase) + 3 * front + rng.normal(0, 0.25, t.shape)
    return {
        "air_temperature": temperature,
        "relative_humidity": np.clip(68 - 22 * np.sin(day_phase) - 10 * front + rng.normal(0, 1.5, t.shape), 5, 100),
        "pressure": 1013 + 9 * front + rng.normal(0, 0.15, t.shape),
        "wind_speed": np.abs(3.5 + 2.5 * np.sin(day_phase) - 2 * front + rng.normal(0, 1.2, t.shape)),
        "wind_direction": (220 + 60 * front + rng.normal(0, 20, t.shape)) % 360,
        "solar_radiation": np.clip(950 * sun + rng.normal(0, 8, t.shape), 0, None),
        "battery_voltage": 12.4 + 1.2 * sun + rng.normal(0, 0.02, t.shape),
    }


def register(owner) -> tuple[Instrument, DataSource]:
    """The demo station, its file source and channels; idempotent."""
    instrument, _ = Instrument.objects.get_or_create(
        slug=SLUG,
        defaults={
            "name": "Rooftop weather station (demo)",
            "owner": owner,
            "description": "A simulated weather station logging a CSV line every few seconds.",
            "location": "Building 1 roof",
            "latitude": 38.7369,
            "longitude": -9.1427,
            "contact_email": owner.email or "",
        },
    )
    source, _ = DataSource.objects.get_or_create(
        instrument=instrument,
        name="Logger CSV files",
        defaults={
            "kind": SourceKind.FILE,
            "interval_seconds": 5,
            # Set by the seeding command: the demo's folder is a default file root, and an administrator
            # owner also keeps it collected if DAQBROKER_FILE_ROOTS is set to other folders.
            "target_set_by": owner,
            "config": {
                "path": str(demo_dir()),
                "pattern": "weather*.csv",
                "header_lines": 1,
                "columns": COLUMNS,
                "timestamp": {"columns": ["time"], "format": "iso", "timezone": "UTC"},
            },
        },
    )
    for spec in CHANNELS:
        Channel.objects.get_or_create(
            instrument=instrument,
            slug=spec.slug,
            defaults={
                "name": spec.name,
                "kind": spec.kind,
                "units": spec.units,
                "source": source,
                "source_field": spec.slug,
                "valid_min": spec.valid_min,
                "valid_max": spec.valid_max,
                "missing_values": [SENTINEL] if spec.kind == ChannelKind.NUMERIC else [],
                "expected_interval_seconds": 5,
            },
        )
    if not instrument.logbook.exists():
        LogbookEntry.objects.create(instrument=instrument, author=owner, text="Station installed and logging.")
    return instrument, source


RUN_LIST_SLUG = "demo-campaign"
DEMO_RUNS = [  # hours ago it started, hours it lasted, parameters, summary
    (30, 4, {"mast_height": 10.0, "anemometer": "cup", "heated": False}, "Baseline with the cup anemometer."),
    (20, 6, {"mast_height": 10.0, "anemometer": "sonic", "heated": False}, "Sonic anemometer side by side."),
    (8, 3, {"mast_height": 12.5, "anemometer": "sonic", "heated": True}, "Mast raised; heated sensor head."),
]


def register_runs(instrument: Instrument, owner) -> RunList:
    """A run list for the demo station with a few past runs, so a newcomer sees runs on the plot; idempotent."""
    run_list, created = RunList.objects.get_or_create(
        slug=RUN_LIST_SLUG,
        defaults={
            "name": "Anemometer comparison (demo)",
            "owner": owner,
            "description": "A made-up campaign: runs with different anemometers and mast heights.",
        },
    )
    if not created:
        return run_list
    run_list.instruments.add(instrument)
    for position, (name, kind, units, choices, required) in enumerate(
        [
            ("mast_height", "number", "m", [], True),
            ("anemometer", "choice", "", ["cup", "sonic"], True),
            ("heated", "boolean", "", [], False),
        ]
    ):
        RunColumn.objects.create(
            run_list=run_list, name=name, kind=kind, units=units, choices=choices, required=required, position=position
        )
    now = datetime.now(UTC).replace(microsecond=0)
    for number, (ago, hours, parameters, summary) in enumerate(DEMO_RUNS, start=1):
        start = now - timedelta(hours=ago)
        Run.objects.create(
            run_list=run_list,
            number=number,
            start=start,
            end=start + timedelta(hours=hours),
            parameters=parameters,
            summary=summary,
            started_by=owner.get_username(),
        )
    return run_list


def seed_history(instrument: Instrument, days: int = 7, step_seconds: int = 60, end: float | None = None) -> int:
    """Write ``days`` of minute readings ending now through ``ingest_samples``; returns readings stored."""
    end = time.time() if end is None else end
    t = np.arange(end - days * 86_400, end, step_seconds).astype(np.float64)
    t = np.floor(t / step_seconds) * step_seconds
    series = weather(t, np.random.default_rng(7))
    channels = dict(instrument.channels.values_list("slug", "id"))
    ts_us = (t * 1_000_000).astype(np.int64)
    stored = 0
    with transaction.atomic():
        for slug, values in series.items():
            batch = SampleBatch(np.full(len(t), channels[slug], dtype=np.int64), ts_us, values)
            stored += ingest_samples(batch, origin=Origin.DEMO).accepted
        status = np.array(["OK"] * len(t), dtype=object)
        batch = SampleBatch(np.full(len(t), channels["status"], dtype=np.int64), ts_us, status)
        stored += ingest_samples(batch, origin=Origin.DEMO).accepted
    return stored


def csv_line(t: float, rng: np.random.Generator) -> str:
    """One logger line at unix time ``t``; now and then a sentinel or a garbled line, as real loggers do."""
    if rng.random() < 0.002:
        return "ERR sensor bus timeout"
    values = {k: float(v[0]) for k, v in weather(np.array([t]), rng).items()}
    if rng.random() < 0.01:
        values["air_temperature"] = SENTINEL
    stamp = datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    status = "OK" if values["battery_voltage"] > 12.2 else "LOW BATTERY"
    fields = [stamp, *(f"{values[c.slug]:.3f}" for c in CHANNELS if c.kind == ChannelKind.NUMERIC), status]
    return ",".join(fields)


def run_simulator(interval: float, *, rotate_bytes: int = 5_000_000, iterations: int | None = None) -> None:
    """Append a line every ``interval`` seconds to the demo file, rotating it like logrotate would."""
    folder = demo_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    rng = np.random.default_rng()
    count = 0
    while iterations is None or count < iterations:
        if path.exists() and path.stat().st_size > rotate_bytes:
            path.rename(folder / f"{FILE_NAME}.{int(time.time())}")
        new = not path.exists()
        with path.open("a", encoding="utf-8") as handle:
            if new:
                handle.write(",".join(COLUMNS) + "\n")
            handle.write(csv_line(time.time(), rng) + "\n")
        count += 1
        time.sleep(max(0.0, interval - (time.time() % interval)) if interval >= 1 else interval)
