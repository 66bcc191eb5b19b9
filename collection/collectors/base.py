"""The small interface every collector implements, and the line-to-readings mapping they share."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from django.conf import settings

from collection.services.ingest import Rejection, SampleBatch
from daqbroker_agent.parsing import LineError, LineParser
from instruments.choices import ChannelKind
from instruments.models import Channel, DataSource


@dataclass
class Collected:
    """What one run read: readings, lines that did not parse, and the cursor to commit with them.

    Readings come in one or more batches: numeric readings in a float batch (``ingest_samples``' fast
    path), text readings and raw values still to be checked in an object batch.
    """

    batches: list[SampleBatch] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    cursor: dict = field(default_factory=dict)
    more: bool = False  # more input is waiting: collect again without waiting a full interval
    warnings: list[str] = field(default_factory=list)  # input lost before it could be read (files that vanished)
    lines_read: int = 0  # lines taken from the input (a run that read some and stored nothing is a warning)
    # Readings that look misdated (far from their file's modification time): the run is marked a warning.
    doubts: list[str] = field(default_factory=list)
    # Parts of the input that could not be read (a Modbus register refused or unanswered): quarantined
    # with their reason, and the run is marked a warning.
    faults: list[str] = field(default_factory=list)

    @property
    def readings(self) -> int:
        return sum(len(batch) for batch in self.batches)


class Collector(Protocol):
    def collect(self, source: DataSource, config: dict, channels: list[Channel]) -> Collected: ...


@dataclass(frozen=True)
class RawLine:
    text: str
    context: dict  # where the line came from, kept with any rejection (file and line number, ...)
    received_us: int | None = None


def channel_key(channel: Channel) -> str:
    """How a channel is found among its source's fields: its source field, or else its slug."""
    return channel.source_field or channel.slug


def is_text(channel: Channel) -> bool:
    return channel.kind == ChannelKind.TEXT


def parse_deadline() -> float:
    """When a collection run starting now must stop parsing (``time.monotonic()`` seconds)."""
    return time.monotonic() + settings.DAQBROKER_PARSE_BUDGET_SECONDS


def lines_to_readings(
    lines: Iterable[RawLine],
    parser: LineParser,
    channels: list[Channel],
    deadline: float | None = None,
    year: int | None = None,
) -> tuple[SampleBatch, list[Rejection]]:
    """Parse lines and pick each channel's field; unparseable lines become rejections with their context.

    Values are passed on raw (text); ``ingest_samples`` converts them per channel kind and rejects what
    does not fit, so a bad field rejects one reading, not the whole line. Past ``deadline`` (the run's
    parse budget, :func:`parse_deadline` when not given) the lines left are quarantined unparsed, with
    that reason: kept for a replay, never dropped, and the worker is free for other tasks. ``year``: the
    year of the file the lines come from, when their times carry none (``LineParser.parse``).
    """
    deadline = parse_deadline() if deadline is None else deadline
    lines = list(lines)
    wanted = [(c.id, channel_key(c)) for c in channels]
    ids: list[int] = []
    stamps: list[int] = []
    values: list[object] = []
    origin: list[int] = []  # the line each reading came from
    rejections: list[Rejection] = []
    for n, line in enumerate(lines):
        if n % 16 == 0 and time.monotonic() > deadline:
            reason = (
                f"line not parsed: the collection run's parse budget "
                f"(DAQBROKER_PARSE_BUDGET_SECONDS={settings.DAQBROKER_PARSE_BUDGET_SECONDS}) was spent"
            )
            rejections.extend(
                Rejection(reason=reason, raw_value=rest.text[:2000], context=rest.context) for rest in lines[n:]
            )
            break
        try:
            parsed = parser.parse(line.text, line.received_us, year)
        except LineError as exc:
            rejections.append(
                Rejection(reason=f"line not parsed: {exc}", raw_value=line.text[:2000], context=line.context)
            )
            continue
        for channel_id, key in wanted:
            value = parsed.fields.get(key)
            if value is None:
                rejections.append(
                    Rejection(
                        reason=f"field {key!r} is missing from the line",
                        channel_id=channel_id,
                        channel_ref=str(channel_id),
                        raw_value=line.text[:2000],
                        context=line.context,
                    )
                )
                continue
            ids.append(channel_id)
            stamps.append(parsed.ts_us)
            values.append(value)
            origin.append(n)
    batch = SampleBatch(
        np.array(ids, dtype=np.int64),
        np.array(stamps, dtype=np.int64),
        np.array(values, dtype=object),
        where=lambda i: lines[origin[i]].context,  # a reading ingest refuses keeps its line's context
    )
    return batch, rejections


def concat_batches(batches: list[SampleBatch], *, numeric: bool) -> SampleBatch:
    """One batch of ``batches`` (float values when ``numeric``, objects otherwise)."""
    batches = [b for b in batches if len(b)]
    dtype = np.float64 if numeric else object
    if len(batches) == 1 and batches[0].value.dtype == dtype:
        return batches[0]
    if not batches:
        return SampleBatch(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, dtype=dtype))
    return SampleBatch(
        np.concatenate([b.channel for b in batches]),
        np.concatenate([b.ts for b in batches]),
        np.concatenate([b.value.astype(dtype, copy=False) for b in batches]),
        where=_joined_where(batches),
    )


def _joined_where(batches: list[SampleBatch]) -> Callable[[int], dict] | None:
    """``where`` of batches laid end to end: each part answers for its own readings."""
    if all(b.where is None for b in batches):
        return None
    starts = np.cumsum([0] + [len(b) for b in batches[:-1]]).tolist()

    def where(i: int) -> dict:
        part = bisect.bisect_right(starts, i) - 1
        found = batches[part].where
        return found(i - starts[part]) if found is not None else {}

    return where
