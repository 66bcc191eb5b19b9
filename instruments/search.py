"""Substring search over channels and instruments that an index serves (docs/performance.md#many-things).

The plot page's channel picker matches every word anywhere in a channel's name, slug or units, or in its
instrument's name or slug: a ``LIKE '%word%'`` that no B-tree index can serve, so at 100,000 channels each
keystroke read every channel. Each engine gets the index it has for that (made by migration
``instruments.0016_search_indexes``, which calls ``install``):

* **PostgreSQL**: ``pg_trgm`` GIN indexes on ``UPPER(column)``, the expression Django's ``icontains``
  compares, so the plain ORM lookups below use them (words of 3 characters or more). Without GIN's
  pending list (``fastupdate = off``): new channels go straight into the index (they are few), instead of a
  list every search would read through until a vacuum merged it (after a bulk load: 3 ms per index scan
  instead of 0.01 ms).
* **SQLite**: one FTS5 table with the ``trigram`` tokenizer (SQLite 3.34+), one row per channel holding its
  name, slug and units and its instrument's name and slug, kept in step by triggers on the channel table
  (insert, delete, update of those columns) and the instrument table (update of its name or slug; deleting
  an instrument deletes its channels). Ingest's updates of a channel's latest reading do not fire them. A
  trigram ``MATCH`` of a quoted word is a case-insensitive substring match (its case folding is Unicode's,
  ``LIKE``'s only ASCII's); words under 3 characters, which trigrams cannot match, use ``LIKE`` as before.
* **MariaDB**: no such index; the same query without one (correct, a scan).

Django rebuilds a SQLite table to alter it, which drops that table's triggers: ``instruments.tests.
test_search_index`` checks after all migrations that the triggers exist and the index agrees with the tables.
"""

from __future__ import annotations

from django.db import connections
from django.db.models import BooleanField, Q
from django.db.models.expressions import RawSQL

from instruments.models import Channel, Instrument

CHANNEL_TABLE = Channel._meta.db_table
INSTRUMENT_TABLE = Instrument._meta.db_table
# What the instruments' searches match (the home page's: name, place, description; the admin's and its
# autocomplete fields': these and the slug and contact).
INSTRUMENT_FIELDS = ("name", "slug", "description", "location", "contact_email")
# PostgreSQL: a trigram index on each column searched.
MATCHED = {CHANNEL_TABLE: ("name", "slug", "units"), INSTRUMENT_TABLE: INSTRUMENT_FIELDS}
# SQLite: the instruments' own FTS5 index, over the instrument table (external content: no copy of the text).
SQLITE_INSTRUMENT_INDEX = "instruments_instrument_search"
# SQLite: one FTS5 document per channel holding its own and its instrument's words, so that a search of
# several words is one MATCH of them all ("hPa" AND "north"), whichever of the two each word is in.
SQLITE_INDEX = "instruments_channel_search"
TRIGRAM = 3  # the shortest word a trigram index can match
_DOCUMENT = (
    "SELECT c.id, c.name, c.slug, c.units, i.name, i.slug FROM {channel} c "
    "JOIN {instrument} i ON i.id = c.instrument_id WHERE {where}"
)


def _document(where: str) -> str:
    return _DOCUMENT.format(channel=CHANNEL_TABLE, instrument=INSTRUMENT_TABLE, where=where)


def _sqlite_statements() -> list[str]:
    index = SQLITE_INDEX
    add = f"INSERT INTO {index} (rowid, name, slug, units, instrument_name, instrument_slug) "
    return [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {index} USING fts5(name, slug, units, instrument_name, "
        "instrument_slug, tokenize='trigram')",
        f"CREATE TRIGGER IF NOT EXISTS {index}_channel_insert AFTER INSERT ON {CHANNEL_TABLE} BEGIN "
        f"{add}{_document('c.id = new.id')}; END",
        f"CREATE TRIGGER IF NOT EXISTS {index}_channel_delete AFTER DELETE ON {CHANNEL_TABLE} BEGIN "
        f"DELETE FROM {index} WHERE rowid = old.id; END",
        f"CREATE TRIGGER IF NOT EXISTS {index}_channel_update AFTER UPDATE OF id, name, slug, units, instrument_id "
        f"ON {CHANNEL_TABLE} BEGIN DELETE FROM {index} WHERE rowid = old.id; {add}{_document('c.id = new.id')}; END",
        f"CREATE TRIGGER IF NOT EXISTS {index}_instrument_update AFTER UPDATE OF id, name, slug ON {INSTRUMENT_TABLE} "
        f"BEGIN DELETE FROM {index} WHERE rowid IN (SELECT id FROM {CHANNEL_TABLE} WHERE instrument_id = old.id); "
        f"{add}{_document('c.instrument_id = new.id')}; END",
        f"DELETE FROM {index}",
        f"{add}{_document('1')}",
        *_sqlite_instrument_statements(),
    ]


def _sqlite_instrument_statements() -> list[str]:
    index, table, cols = SQLITE_INSTRUMENT_INDEX, INSTRUMENT_TABLE, ", ".join(INSTRUMENT_FIELDS)
    new = ", ".join(f"new.{column}" for column in INSTRUMENT_FIELDS)
    old = ", ".join(f"old.{column}" for column in INSTRUMENT_FIELDS)
    delete = f"INSERT INTO {index} ({index}, rowid, {cols}) VALUES ('delete', old.id, {old});"
    insert = f"INSERT INTO {index} (rowid, {cols}) VALUES (new.id, {new});"
    return [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {index} USING fts5({cols}, content='{table}', content_rowid='id', "
        "tokenize='trigram')",
        f"CREATE TRIGGER IF NOT EXISTS {index}_insert AFTER INSERT ON {table} BEGIN {insert} END",
        f"CREATE TRIGGER IF NOT EXISTS {index}_delete AFTER DELETE ON {table} BEGIN {delete} END",
        f"CREATE TRIGGER IF NOT EXISTS {index}_update AFTER UPDATE OF id, {cols} ON {table} "
        f"BEGIN {delete} {insert} END",
        f"INSERT INTO {index} ({index}) VALUES ('rebuild')",
    ]


def sqlite_triggers() -> list[str]:
    """The triggers that keep the SQLite index in step (a check that they still exist names them)."""
    names = ("channel_insert", "channel_delete", "channel_update", "instrument_update")
    own = ("insert", "delete", "update")
    return [f"{SQLITE_INDEX}_{name}" for name in names] + [f"{SQLITE_INSTRUMENT_INDEX}_{name}" for name in own]


def _postgresql_statements() -> list[str]:
    statements = ["CREATE EXTENSION IF NOT EXISTS pg_trgm"]
    for table, columns in MATCHED.items():
        statements += [
            f"CREATE INDEX IF NOT EXISTS {table}_{column}_trgm ON {table} "
            f'USING gin ((UPPER("{column}"::text)) gin_trgm_ops) WITH (fastupdate = off)'
            for column in columns
        ]
    return statements


def install(schema_editor) -> None:
    """Create the engine's substring index (idempotent; fills the SQLite index from the tables)."""
    vendor = schema_editor.connection.vendor
    statements = {"sqlite": _sqlite_statements, "postgresql": _postgresql_statements}.get(vendor, list)()
    for statement in statements:
        schema_editor.execute(statement, params=None)


def remove(schema_editor) -> None:
    vendor = schema_editor.connection.vendor
    if vendor == "sqlite":
        for trigger in sqlite_triggers():
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {trigger}", params=None)
        schema_editor.execute(f"DROP TABLE IF EXISTS {SQLITE_INDEX}", params=None)
        schema_editor.execute(f"DROP TABLE IF EXISTS {SQLITE_INSTRUMENT_INDEX}", params=None)
    elif vendor == "postgresql":
        for table, columns in MATCHED.items():
            for column in columns:
                schema_editor.execute(f"DROP INDEX IF EXISTS {table}_{column}_trgm", params=None)


def _fts_phrase(word: str) -> str:
    """``word`` as one FTS5 phrase: with the trigram tokenizer, "matches this substring" (any character)."""
    return '"' + word.replace('"', '""') + '"'


def channels_matching(words: list[str], using: str = "default") -> Q:
    """The channels with each of ``words`` in their name, slug or units or in their instrument's name or slug.

    On SQLite the words of 3 characters or more are one FTS5 query; on PostgreSQL each is a ``pk IN (...)``
    whose subquery the trigram indexes serve (the channels matching, united with the channels of the
    instruments matching: an ``OR`` across the join would be a filter on every channel). Shorter words, and
    every word on MariaDB, are that filter: cheap once another word has narrowed the channels, a scan alone."""
    vendor = connections[using].vendor
    indexed = [word for word in words if len(word) >= TRIGRAM] if vendor in ("sqlite", "postgresql") else []
    condition = Q()
    if indexed and vendor == "sqlite":
        match = " AND ".join(_fts_phrase(word) for word in indexed)
        fts = f"SELECT rowid FROM {SQLITE_INDEX} WHERE {SQLITE_INDEX} MATCH %s"
        condition &= Q(pk__in=RawSQL(fts, [match]))  # noqa: S611 -- our own SQL, the words a parameter
    for word in indexed if vendor == "postgresql" else []:
        # One bitmap per word, ORed from the channel's three trigram indexes and its instrument_id index (fed
        # the matching instruments as an array), the words' bitmaps ANDed: the rows read are the matches.
        instruments = Instrument.objects.filter(Q(name__icontains=word) | Q(slug__icontains=word)).values("pk")
        sql, params = instruments.order_by().query.sql_with_params()
        of_instruments = RawSQL(  # noqa: S611 -- SQL compiled by the ORM from our own query, parameters apart
            f'"{CHANNEL_TABLE}"."instrument_id" = ANY(ARRAY({sql}))', params, output_field=BooleanField()
        )
        condition &= Q(name__icontains=word) | Q(slug__icontains=word) | Q(units__icontains=word) | Q(of_instruments)
    for word in (word for word in words if word not in indexed):
        condition &= (
            Q(name__icontains=word)
            | Q(slug__icontains=word)
            | Q(units__icontains=word)
            | Q(instrument__name__icontains=word)
            | Q(instrument__slug__icontains=word)
        )
    return condition


def instruments_matching(words: list[str], fields: tuple[str, ...], using: str = "default") -> Q:
    """The instruments with each of ``words`` in one of ``fields`` (some of INSTRUMENT_FIELDS), any case: the
    home page's search (its whole text as one word) and the admin's (each word). On SQLite the words of 3
    characters or more are one FTS5 query restricted to those columns; elsewhere, and for shorter words,
    ``icontains`` (on PostgreSQL the trigram indexes serve it)."""
    unknown = set(fields) - set(INSTRUMENT_FIELDS)
    if unknown:
        raise ValueError(f"not indexed for search: {sorted(unknown)}")
    indexed = [word for word in words if len(word) >= TRIGRAM] if connections[using].vendor == "sqlite" else []
    condition = Q()
    if indexed:
        columns = "{" + " ".join(fields) + "}"
        match = " AND ".join(f"{columns} : {_fts_phrase(word)}" for word in indexed)
        fts = f"SELECT rowid FROM {SQLITE_INSTRUMENT_INDEX} WHERE {SQLITE_INSTRUMENT_INDEX} MATCH %s"
        condition &= Q(pk__in=RawSQL(fts, [match]))  # noqa: S611 -- our own SQL, the words a parameter
    for word in (word for word in words if word not in indexed):
        any_field = Q()
        for field in fields:
            any_field |= Q(**{f"{field}__icontains": word})
        condition &= any_field
    return condition
