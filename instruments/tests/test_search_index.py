"""The channel picker's substring search through each engine's index (``instruments.search``): the same
channels as a plain substring test of each word on the channel's and its instrument's names, slugs and units,
after channels and instruments are made, renamed, moved and deleted (the SQLite index is kept by triggers)."""

from __future__ import annotations

import pytest
from django.db import connection

from instruments import search
from instruments.models import Channel, Instrument
from instruments.tests.factories import make_channel, make_instrument

pytestmark = pytest.mark.django_db

SEARCHES = [
    ["hPa"],
    ["HPA"],  # any case
    ["north", "hpa"],  # one word in the instrument, one in the channel
    ["ressu"],  # inside a word
    ["north-mast"],  # a slug
    ["deg", "x"],  # a word too short for trigrams beside a long one
    ["m/s"],
    ["%"],  # LIKE's wildcard, matched as itself
    ["_"],
    ['"quoted"'],  # FTS5's quote, matched as itself
    ["star*"],
    ["nothing-like-this"],
    ["north", "south"],
]


def reference(words: list[str]) -> set[int]:
    """The channels each word is a substring of (any case) in one of the five fields, checked in Python."""
    found = set()
    for channel in Channel.objects.select_related("instrument"):
        fields = [channel.name, channel.slug, channel.units, channel.instrument.name, channel.instrument.slug]
        if all(any(word.lower() in field.lower() for field in fields) for word in words):
            found.add(channel.pk)
    return found


def indexed(words: list[str]) -> set[int]:
    return set(Channel.objects.filter(search.channels_matching(words)).values_list("pk", flat=True))


def assert_every_search_agrees() -> None:
    for words in SEARCHES:
        assert indexed(words) == reference(words), words


@pytest.fixture
def site():
    north = make_instrument(name="North mast", slug="north-mast")
    south = make_instrument(name="South hut", slug="south-hut")
    make_channel(north, name="Pressure", slug="pressure", units="hPa")
    make_channel(north, name="Wind speed", slug="wind", units="m/s")
    make_channel(south, name="Air temperature", slug="air_t", units="degC")
    make_channel(south, name='The "quoted" star* channel', slug="odd", units="%")
    make_channel(south, name="Humidity 100% rel", slug="rh", units="")
    return north, south


def test_the_indexed_search_finds_what_a_substring_test_finds(site):
    assert reference(["north", "hpa"]) and reference(["%"]) and reference(['"quoted"'])  # the site has matches
    assert_every_search_agrees()


def test_the_search_follows_channels_made_renamed_moved_and_deleted(site):
    north, south = site
    added = make_channel(north, name="Barometer two", slug="baro2", units="hPa")
    assert added.pk in indexed(["north", "hpa"])
    Channel.objects.filter(pk=added.pk).update(name="Renamed", units="mbar")  # a bulk update, no save()
    assert added.pk not in indexed(["hpa"]) and added.pk in indexed(["renamed", "mbar"])
    added.refresh_from_db()
    added.instrument = south
    added.save()
    assert added.pk in indexed(["south", "renamed"]) and added.pk not in indexed(["north", "renamed"])
    added.delete()
    assert not indexed(["renamed"])
    assert_every_search_agrees()


def test_the_search_follows_an_instrument_renamed_and_deleted(site):
    north, south = site
    Instrument.objects.filter(pk=north.pk).update(name="East tower", slug="east-tower")
    assert indexed(["east", "hpa"]) == reference(["east", "hpa"]) != set()
    assert not indexed(["north"])
    south.delete()
    assert not indexed(["south"])
    assert_every_search_agrees()


def test_the_readings_own_updates_leave_the_index_alone(site):
    """Ingest updates a channel's latest reading: the index's triggers fire only on the searched columns."""
    if connection.vendor != "sqlite":
        pytest.skip("the index kept by triggers is SQLite's")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {search.SQLITE_INDEX}")
        (before,) = cursor.fetchone()
        cursor.execute(f"UPDATE {Channel._meta.db_table} SET last_ts = 1, last_value = 2.0")
        cursor.execute(f"SELECT count(*), max(rowid) FROM {search.SQLITE_INDEX}")
        after, _ = cursor.fetchone()
        cursor.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE %s", [search.SQLITE_INDEX + "%"]
        )
        triggers = [sql for (sql,) in cursor.fetchall()]
    assert after == before == Channel.objects.count()
    assert all("last_ts" not in sql for sql in triggers)


def test_every_migration_leaves_the_engines_index_in_place():
    """Django rebuilds a SQLite table to alter it, dropping its triggers: a later migration that alters the
    channel or instrument table must install the index again (``search.install`` is idempotent)."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            assert set(search.sqlite_triggers()) <= {name for (name,) in cursor.fetchall()}
            cursor.execute("SELECT name FROM sqlite_master WHERE name = %s", [search.SQLITE_INDEX])
            assert cursor.fetchone() is not None
        elif connection.vendor == "postgresql":
            cursor.execute("SELECT relname, reloptions FROM pg_class WHERE relname LIKE %s", ["%\\_trgm"])
            options = dict(cursor.fetchall())
            assert all(opts == ["fastupdate=off"] for opts in options.values()), options  # no pending list
            names = set(options)
            expected = {f"{table}_{column}_trgm" for table, columns in search.MATCHED.items() for column in columns}
            assert names == expected
        else:
            pytest.skip("MariaDB has no substring index: its search reads every channel")


# --- the instruments' own search (home page, admin, autocomplete fields) -------------------------------------

INSTRUMENT_SEARCHES = [
    (["mast"], ("name", "location", "description")),
    (["ROOF"], ("name", "location", "description")),
    (["north-mast"], ("name", "location", "description")),  # a slug: not among these fields
    (["north-mast"], search.INSTRUMENT_FIELDS),
    (["lab@example", "hut"], search.INSTRUMENT_FIELDS),
    (["by the sea"], ("name", "location", "description")),  # the home page's whole text, spaces and all
    (["50%"], search.INSTRUMENT_FIELDS),
    (["a"], ("name",)),
    (["zz", "hut"], search.INSTRUMENT_FIELDS),
]


def instrument_reference(words: list[str], fields: tuple[str, ...]) -> set[int]:
    return {
        instrument.pk
        for instrument in Instrument.objects.all()
        if all(any(word.lower() in getattr(instrument, field).lower() for field in fields) for word in words)
    }


def instruments_indexed(words: list[str], fields: tuple[str, ...]) -> set[int]:
    return set(Instrument.objects.filter(search.instruments_matching(words, fields)).values_list("pk", flat=True))


def test_the_instruments_search_finds_what_a_substring_test_finds_after_edits(site):
    north, south = site
    Instrument.objects.filter(pk=north.pk).update(location="On the roof", description="A mast by the sea, 50% rust")
    south.contact_email = "lab@example.org"
    south.save()
    make_instrument(name="Annex", slug="annex", location="roof")
    assert instrument_reference(["by the sea"], ("description",)) == {north.pk}
    for words, fields in INSTRUMENT_SEARCHES:
        assert instruments_indexed(words, fields) == instrument_reference(words, fields), (words, fields)
    south.delete()
    assert not instruments_indexed(["lab@example"], search.INSTRUMENT_FIELDS)


def test_the_instruments_search_refuses_a_field_it_does_not_index():
    with pytest.raises(ValueError, match="owner"):
        search.instruments_matching(["x"], ("name", "owner"))
