"""Small factories for tests: each makes a valid, saved object and takes overrides."""

from __future__ import annotations

import itertools

from django.contrib.auth import get_user_model

from instruments.choices import ChannelKind, SourceKind
from instruments.models import Channel, DataSource, Instrument, RunColumn, RunList

_seq = itertools.count(1)


def make_user(username: str | None = None, **extra):
    username = username or f"user{next(_seq)}"
    password = extra.pop("password", "correct horse battery staple")
    return get_user_model().objects.create_user(username=username, password=password, **extra)


def make_instrument(owner=None, **extra) -> Instrument:
    n = next(_seq)
    extra.setdefault("name", f"Instrument {n}")
    extra.setdefault("slug", f"instrument-{n}")
    return Instrument.objects.create(owner=owner or make_user(), **extra)


def make_source(instrument=None, kind: str = SourceKind.FILE, config: dict | None = None, **extra) -> DataSource:
    if config is None:
        config = {"path": "/tmp", "pattern": "*.csv"} if kind == SourceKind.FILE else {}
    extra.setdefault("name", f"source {next(_seq)}")
    return DataSource.objects.create(instrument=instrument or make_instrument(), kind=kind, config=config, **extra)


def make_channel(instrument=None, kind: str = ChannelKind.NUMERIC, **extra) -> Channel:
    n = next(_seq)
    extra.setdefault("name", f"Channel {n}")
    extra.setdefault("slug", f"channel{n}")
    return Channel.objects.create(instrument=instrument or make_instrument(), kind=kind, **extra)


def make_run_list(owner=None, columns: list[dict] | None = None, instruments=(), **extra):
    """A run list with ``columns`` (dicts of RunColumn fields; default: energy [GeV], required)."""
    n = next(_seq)
    extra.setdefault("name", f"Run list {n}")
    extra.setdefault("slug", f"run-list-{n}")
    run_list = RunList.objects.create(owner=owner or make_user(), **extra)
    run_list.instruments.set(instruments)
    if columns is None:
        columns = [{"name": "energy", "kind": "number", "units": "GeV", "required": True}]
    for position, column in enumerate(columns):
        RunColumn.objects.create(run_list=run_list, position=position, **column)
    return run_list
