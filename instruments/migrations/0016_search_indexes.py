"""The channel picker's substring search served by an index: pg_trgm GIN indexes on PostgreSQL, FTS5
trigram tables kept by triggers on SQLite, nothing on MariaDB (``instruments.search``). Django cannot
declare these for one engine only, so they are not in the models' state and ``makemigrations`` ignores them."""

from django.db import migrations

from instruments import search


def install(apps, schema_editor):
    search.install(schema_editor)


def remove(apps, schema_editor):
    search.remove(schema_editor)


class Migration(migrations.Migration):
    dependencies = [("instruments", "0015_instrument_freshness")]

    operations = [migrations.RunPython(install, remove)]
