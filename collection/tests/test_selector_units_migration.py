"""Alarm rules and spike checks saved with an older spelling of units ("deg C") keep selecting the channels
whose units instruments 0008 rewrote to the canonical spelling ("degC"): collection 0012 rewrites them too."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from collection.alarms.models import AlarmRule, SpikeCheck
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db


def test_the_migration_rewrites_selector_units_and_keeps_what_it_cannot_read():
    instrument = make_instrument()
    channel = make_channel(instrument, slug="air", units="degC")
    spellings = {"a": "deg C", "b": "W m-2", "c": "C", "d": "", "e": "degC", "f": "°C"}
    for name, units in spellings.items():  # as an older release saved them (no clean())
        AlarmRule.objects.create(name=name, units=units, threshold=30)
        SpikeCheck.objects.create(name=name, units=units, threshold=5)
    assert AlarmRule.objects.get(name="a").selected_channels() == []  # the bug the migration mends

    migration = importlib.import_module("collection.migrations.0012_selector_units_canonical")
    migration.canonical_selector_units(apps, None)

    expected = {"a": "degC", "b": "W/m^2", "c": "C", "d": "", "e": "degC", "f": "degC"}
    assert dict(AlarmRule.objects.values_list("name", "units")) == expected
    assert dict(SpikeCheck.objects.values_list("name", "units")) == expected
    assert AlarmRule.objects.get(name="a").selected_channels() == [channel]
    assert SpikeCheck.objects.get(name="f").selected_channels() == [channel]
