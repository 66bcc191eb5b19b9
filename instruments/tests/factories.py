"""Small factories for tests: each makes a valid, saved object and takes overrides."""

from __future__ import annotations

import itertools

from django.contrib.auth import get_user_model

from instruments.choices import ChannelKind, SourceKind
from instruments.models import Channel, DataSource, Instrument

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
